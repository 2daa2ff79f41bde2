"""federated_split / global_test on sklearn digits (METHODS.md §0, B11)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fedhet.data.federated as federated
from fedhet.data import class_histogram, federated_split, global_test, load_image_dataset


def _train_ids(split: federated.ClientSplit) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.train.x}


def test_split_is_disjoint_and_covers_train(tmp_path: Path) -> None:
    train, _ = load_image_dataset("digits")
    splits = [
        federated_split("digits", 4, pid, scheme="iid", local_test_size=50, cache_dir=tmp_path)
        for pid in range(4)
    ]
    assert sum(len(s.train) for s in splits) == len(train) == 1437
    assert [s.partition_id for s in splits] == [0, 1, 2, 3]
    total = np.sum([class_histogram(s.train.y.numpy(), 10) for s in splits], axis=0)
    np.testing.assert_array_equal(total, class_histogram(train.y.numpy(), 10))
    assert all(len(s.test) == 50 for s in splits)
    assert splits[0].train.name == "digits/train[0/4]"


def test_local_test_follows_training_proportions(tmp_path: Path) -> None:
    split = federated_split(
        "digits", 5, 2, scheme="pathological", k=2, local_test_size=60, cache_dir=tmp_path
    )
    train_hist = class_histogram(split.train.y.numpy(), 10)
    test_hist = class_histogram(split.test.y.numpy(), 10)
    assert np.count_nonzero(train_hist) == 2
    np.testing.assert_array_equal(np.flatnonzero(test_hist), np.flatnonzero(train_hist))
    assert test_hist.sum() == 60
    expected = 60 * train_hist / train_hist.sum()
    assert np.abs(test_hist - expected).max() <= 1


def test_cache_hit_returns_identical_indices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = {"scheme": "dirichlet", "alpha": 0.3, "seed": 4, "max_train": 100}
    first = federated_split("digits", 6, 1, cache_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def fail(*args: object, **kw: object) -> None:
        raise AssertionError("partition recomputed despite a cache file")

    monkeypatch.setattr(federated, "_compute_parts", fail)
    again = federated_split("digits", 6, 1, cache_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    assert again.train.x.equal(first.train.x) and again.train.y.equal(first.train.y)
    assert again.test.y.equal(first.test.y)
    assert len(first.train) <= 100


def test_arguments_change_the_split(tmp_path: Path) -> None:
    a = federated_split("digits", 3, 0, seed=0, cache_dir=tmp_path)
    b = federated_split("digits", 3, 0, seed=1, cache_dir=tmp_path)
    assert _train_ids(a) != _train_ids(b)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_corrupt_cache_is_recomputed(tmp_path: Path) -> None:
    first = federated_split("digits", 3, 0, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.npz")
    cache_file.write_bytes(b"not an npz")
    again = federated_split("digits", 3, 0, cache_dir=tmp_path)
    assert again.train.y.equal(first.train.y)


def test_balanced_dirichlet_uses_max_train_as_size(tmp_path: Path) -> None:
    sizes = [
        len(
            federated_split(
                "digits",
                4,
                pid,
                scheme="balanced-dirichlet",
                alpha=0.3,
                max_train=200,
                cache_dir=tmp_path,
            ).train
        )
        for pid in range(4)
    ]
    assert sizes == [200] * 4


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"partition_id 5 outside \[0, num_partitions=5\)"):
        federated_split("digits", 5, 5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        federated_split("mnist-3d", 5, 0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown partition scheme"):
        federated_split("digits", 5, 0, scheme="nope", cache_dir=tmp_path)


def test_global_test_and_full_local_test(tmp_path: Path) -> None:
    full = global_test("digits")
    assert len(full) == 360
    split = federated_split("digits", 2, 0, local_test_size=0, cache_dir=tmp_path)
    assert len(split.test) == 360
    assert global_test("digits").name == "digits/test"


def test_concurrent_writers_leave_one_valid_cache_file(tmp_path: Path) -> None:
    def split(pid: int) -> federated.ClientSplit:
        return federated_split("digits", 4, pid % 4, seed=9, cache_dir=tmp_path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(split, range(8)))
    assert [len(list(tmp_path.glob(p))) for p in ("*.npz", "*.tmp")] == [1, 0]
    for a, b in zip(results[:4], results[4:], strict=True):
        assert a.train.y.equal(b.train.y)


def test_group_correlated_from_the_run_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``partition='group-correlated'`` parses, and the device's split follows its fleet class:
    80 % of each home class lies on its home class's devices (METHODS.md §6.6, C2)."""
    from fedhet.client.runtime import _client_split, fleet_groups
    from fedhet.config import default_run_config
    from fedhet.methods import parse_run_config

    cfg = parse_run_config(default_run_config(method="fedavg", partition="group-correlated"))
    assert cfg.shared.partition == "group-correlated"
    monkeypatch.setattr(federated, "default_cache_dir", lambda: tmp_path)
    _client_split.cache_clear()
    n = 6
    groups = fleet_groups("three-tier", n)
    assert groups == ["strong", "strong", "medium", "medium", "weak", "weak"]
    hists = [
        class_histogram(
            _client_split(
                "digits", pid, n, None, "group-correlated", 0.5, 2, 0, 0, 50, "three-tier"
            ).train.y.numpy(),
            10,
        )
        for pid in range(n)
    ]
    _client_split.cache_clear()
    total = np.sum(hists, axis=0)
    homes = {"strong": (0, 1, 2), "medium": (3, 4, 5), "weak": (6, 7, 8, 9)}
    for group, classes in homes.items():
        held = np.sum([h for h, g in zip(hists, groups, strict=True) if g == group], axis=0)
        for c in classes:
            assert abs(held[c] / total[c] - 0.8) < 0.01, (group, c, held[c], total[c])
        other = [c for c in range(10) if c not in classes]
        for c in other:
            assert abs(held[c] / total[c] - 0.1) < 0.01
    with pytest.raises(ValueError, match="group-correlated"):
        federated_split("digits", 3, 0, scheme="group-correlated", cache_dir=tmp_path)
