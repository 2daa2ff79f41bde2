"""Partitioners (METHODS.md B11, §0 local test sets, §6.6 group-correlated split)."""

from __future__ import annotations

import numpy as np
import pytest

from fedhet.data.local import cap_per_client, local_test_indices
from fedhet.data.partition import (
    PARTITIONERS,
    balanced_dirichlet,
    class_histogram,
    dirichlet,
    dirichlet_shards,
    group_correlated,
    iid,
    partition,
    pathological,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2,000 samples, 200 per class, in shuffled order."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(NUM_CLASSES), 200))


def _check_disjoint_sorted(parts: list[np.ndarray], n: int) -> np.ndarray:
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "each part sorted, no duplicates"
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "parts are disjoint"
    assert joined.min(initial=0) >= 0 and joined.max(initial=0) < n
    return joined


def _mean_classes_per_client(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([len(np.unique(labels[p])) for p in parts]))


def _mean_top_share(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([class_histogram(labels[p], NUM_CLASSES).max() / len(p) for p in parts]))


def test_class_histogram_counts_and_range() -> None:
    np.testing.assert_array_equal(class_histogram(np.array([0, 2, 2, 3]), 5), [1, 0, 2, 1, 0])
    with pytest.raises(ValueError, match="outside"):
        class_histogram(np.array([0, 5]), 5)


def test_iid_covers_everything_with_equal_sizes(labels: np.ndarray) -> None:
    parts = iid(labels, 7, seed=0)
    joined = _check_disjoint_sorted(parts, len(labels))
    assert len(joined) == len(labels)
    assert sorted(len(p) for p in parts) == [285] * 2 + [286] * 5  # 2000 = 7 * 285 + 5
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid(labels, 7, seed=0), strict=True))
    assert not np.array_equal(parts[0], iid(labels, 7, seed=1)[0])


def test_dirichlet_covers_everything_and_reproduces(labels: np.ndarray) -> None:
    parts = dirichlet(labels, 10, alpha=0.5, seed=3, min_size=20)
    joined = _check_disjoint_sorted(parts, len(labels))
    assert len(joined) == len(labels)
    assert min(len(p) for p in parts) >= 20
    again = dirichlet(labels, 10, alpha=0.5, seed=3, min_size=20)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = dirichlet(labels, 10, alpha=0.5, seed=4, min_size=20)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_small_alpha_is_more_skewed(labels: np.ndarray) -> None:
    skewed = dirichlet(labels, 10, alpha=0.05, seed=0)
    spread = dirichlet(labels, 10, alpha=100.0, seed=0)
    assert _mean_classes_per_client(skewed, labels) < 5
    assert _mean_classes_per_client(spread, labels) == NUM_CLASSES
    assert _mean_top_share(spread, labels) < 0.2 < 0.5 < _mean_top_share(skewed, labels)


def test_dirichlet_impossible_min_size_raises(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        dirichlet(labels, 10, alpha=0.5, seed=0, min_size=500)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(labels, 10, alpha=0.0, seed=0)


def test_balanced_dirichlet_equal_counts(labels: np.ndarray) -> None:
    parts = balanced_dirichlet(labels, 8, alpha=0.3, n_per_client=150, seed=0)
    _check_disjoint_sorted(parts, len(labels))
    assert [len(p) for p in parts] == [150] * 8
    # Mean top-class share: E[max of Dir(0.3) over 10 classes] is about 0.45; IID gives ~0.1.
    assert _mean_top_share(parts, labels) > 0.35
    spread = balanced_dirichlet(labels, 8, alpha=100.0, n_per_client=150, seed=0)
    assert _mean_top_share(spread, labels) < 0.2


def test_balanced_dirichlet_uses_all_data_when_classes_run_out(labels: np.ndarray) -> None:
    # 10 x 200 = all 2,000 samples: the surplus redraw must fill every client exactly.
    parts = balanced_dirichlet(labels, 10, alpha=0.1, n_per_client=200, seed=5)
    joined = _check_disjoint_sorted(parts, len(labels))
    assert len(joined) == len(labels)
    assert [len(p) for p in parts] == [200] * 10
    with pytest.raises(ValueError, match="exceeds"):
        balanced_dirichlet(labels, 10, alpha=0.1, n_per_client=201, seed=5)


def test_dirichlet_shards_equal_sizes_and_skew(labels: np.ndarray) -> None:
    parts = dirichlet_shards(labels, 6, alpha=0.1, seed=0)
    _check_disjoint_sorted(parts, len(labels))
    assert [len(p) for p in parts] == [2000 // 6] * 6
    iid_like = dirichlet_shards(labels, 6, alpha=1000.0, seed=0)
    assert _mean_classes_per_client(parts, labels) < _mean_classes_per_client(iid_like, labels)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_exactly_k_classes(labels: np.ndarray, k: int) -> None:
    parts = pathological(labels, 20, k=k, seed=0)
    joined = _check_disjoint_sorted(parts, len(labels))
    assert len(joined) == len(labels), "20 * k >= 10 classes: every class has a holder"
    for p in parts:
        assert len(np.unique(labels[p])) == k


def test_pathological_shares_within_uniform_bounds(labels: np.ndarray) -> None:
    # 10 clients, k=2: every class has exactly 2 holders, so each gets s/(s+s') of 200 samples,
    # s, s' ~ U(0.4, 0.6): between 0.4/1.0 and 0.6/1.0 of the class.
    parts = pathological(labels, 10, k=2, seed=1)
    holders = np.zeros(NUM_CLASSES, dtype=int)
    for p in parts:
        hist = class_histogram(labels[p], NUM_CLASSES)
        held = hist > 0
        holders += held
        assert np.all((hist[held] >= 80) & (hist[held] <= 120))
    np.testing.assert_array_equal(holders, [2] * NUM_CLASSES)


def test_group_correlated_home_share() -> None:
    y = np.repeat(np.arange(NUM_CLASSES), 1000)
    group_of_client = [0] * 3 + [1] * 3 + [2] * 4
    homes = {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8, 9]}
    parts = group_correlated(y, group_of_client, homes, home_share=0.8, seed=0)
    joined = _check_disjoint_sorted(parts, len(y))
    assert len(joined) == len(y)
    for group, classes in homes.items():
        members = [i for i, g in enumerate(group_of_client) if g == group]
        held = np.concatenate([parts[i] for i in members])
        hist = class_histogram(y[held], NUM_CLASSES)
        for c in range(NUM_CLASSES):
            assert hist[c] == (800 if c in classes else 100)
    # within a group a class is split equally: 800 / 3 clients -> 267, 267, 266
    first_group = sorted(int((y[parts[i]] == 0).sum()) for i in range(3))
    assert first_group == [266, 267, 267]


def test_group_correlated_rejects_bad_homes() -> None:
    y = np.repeat(np.arange(4), 10)
    with pytest.raises(ValueError, match="no clients"):
        group_correlated(y, [0, 0], {1: [0]})
    with pytest.raises(ValueError, match="two home"):
        group_correlated(y, [0, 1], {0: [0], 1: [0]})


def test_cap_per_client_subsets(labels: np.ndarray) -> None:
    parts = iid(labels, 4, seed=0)
    capped = cap_per_client(parts, 100, seed=0)
    for full, cut in zip(parts, capped, strict=True):
        assert len(cut) == 100
        assert np.all(np.diff(cut) > 0)
        assert np.isin(cut, full).all()
    small = cap_per_client([np.array([5, 1, 3])], 100, seed=0)
    np.testing.assert_array_equal(small[0], [1, 3, 5])
    again = cap_per_client(parts, 100, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(capped, again, strict=True))


def test_local_test_matches_training_proportions() -> None:
    test_labels = np.repeat(np.arange(NUM_CLASSES), 100)
    train_labels = np.array([0] * 60 + [3] * 30 + [7] * 10)
    idx = local_test_indices(test_labels, train_labels, 50, NUM_CLASSES, seed=0)
    assert np.all(np.diff(idx) > 0)
    hist = class_histogram(test_labels[idx], NUM_CLASSES)
    expected = np.zeros(NUM_CLASSES, dtype=int)
    expected[[0, 3, 7]] = [30, 15, 5]
    np.testing.assert_array_equal(hist, expected)
    again = local_test_indices(test_labels, train_labels, 50, NUM_CLASSES, seed=0)
    np.testing.assert_array_equal(idx, again)


def test_local_test_redistributes_when_a_class_is_short() -> None:
    # class 0 has only 10 test samples but the client wants 40 of it: 30 go to class 1.
    test_labels = np.array([0] * 10 + [1] * 100)
    train_labels = np.array([0] * 80 + [1] * 20)
    idx = local_test_indices(test_labels, train_labels, 50, 2, seed=0)
    np.testing.assert_array_equal(class_histogram(test_labels[idx], 2), [10, 40])


@pytest.mark.parametrize("scheme", PARTITIONERS)
def test_partition_dispatch_matches_direct_call(labels: np.ndarray, scheme: str) -> None:
    groups = ["strong", "strong", "medium", "weak", "weak"]
    extra = {"groups": groups} if scheme == "group-correlated" else {}
    parts = partition(labels, 5, scheme, alpha=0.5, k=2, seed=2, **extra)  # type: ignore[arg-type]
    assert len(parts) == 5
    _check_disjoint_sorted(parts, len(labels))
    direct = {
        "iid": lambda: iid(labels, 5, 2),
        "dirichlet": lambda: dirichlet(labels, 5, 0.5, 2),
        "balanced-dirichlet": lambda: balanced_dirichlet(labels, 5, 0.5, 400, 2),
        "dirichlet-shards": lambda: dirichlet_shards(labels, 5, 0.5, 2),
        "pathological": lambda: pathological(labels, 5, 2, 2),
        # names sorted: medium 0, strong 1, weak 2; homes as METHODS.md §6.6
        "group-correlated": lambda: group_correlated(
            labels, [1, 1, 0, 2, 2], {1: [0, 1, 2], 0: [3, 4, 5], 2: [6, 7, 8, 9]}, 0.8, 2
        ),
    }[scheme]()
    assert all(np.array_equal(a, b) for a, b in zip(parts, direct, strict=True))


def test_partition_unknown_scheme_lists_choices(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="pathological"):
        partition(labels, 5, "shards-by-magic")
