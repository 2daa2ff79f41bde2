"""TensorData batching, IDX parsing, Fashion-MNIST and digits loading (METHODS.md §8)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedhet.data.base import DatasetUnavailable, TensorData
from fedhet.data.images import (
    FMNIST_SYSTEM_DIR,
    load_image_dataset,
    read_idx,
)


def _toy(n: int) -> TensorData:
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    return TensorData(x=x, y=torch.arange(n) % 3, num_classes=3, name="toy")


def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08, gz: bool = True) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload, compresslevel=1) if gz else payload)


def _write_fake_fmnist(folder: Path, n_train: int = 60_000, n_test: int = 10_000) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def test_tensordata_subset_copies_rows() -> None:
    data = _toy(6)
    sub = data.subset(np.array([4, 1]))
    assert sub.x.flatten().tolist() == [4.0, 1.0]
    assert sub.y.tolist() == [1, 1]
    sub.x.zero_()
    assert data.x[4].item() == 4.0


def test_batches_counts_and_seeding() -> None:
    data = _toy(10)
    sizes = [len(y) for _, y in data.batches(4, shuffle=False)]
    assert sizes == [4, 4, 2]
    assert [len(y) for _, y in data.batches(4, shuffle=False, drop_last=True)] == [4, 4]
    plain = torch.cat([x for x, _ in data.batches(4, shuffle=False)]).flatten()
    assert plain.tolist() == list(range(10))
    a = torch.cat([x for x, _ in data.batches(3, shuffle=True, seed=7)]).flatten()
    b = torch.cat([x for x, _ in data.batches(3, shuffle=True, seed=7)]).flatten()
    c = torch.cat([x for x, _ in data.batches(3, shuffle=True, seed=8)]).flatten()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(10))


def test_sample_batches_exact_steps_and_epochs() -> None:
    data = _toy(10)
    batches = list(data.sample_batches(4, steps=7, seed=1))
    assert len(batches) == 7
    assert all(len(y) == 4 for _, y in batches)
    # 2 full batches per epoch (the 2 leftover rows are skipped): batches 0-1 are epoch 0.
    epoch0 = torch.cat([x for x, _ in batches[:2]]).flatten().tolist()
    assert len(set(epoch0)) == 8
    again = [x for x, _ in data.sample_batches(4, steps=7, seed=1)]
    assert all(torch.equal(p, q) for p, q in zip((x for x, _ in batches), again, strict=True))
    other = [x for x, _ in data.sample_batches(4, steps=7, seed=2)]
    assert not all(torch.equal(p, q) for p, q in zip((x for x, _ in batches), other, strict=True))
    assert list(data.sample_batches(4, steps=0, seed=1)) == []


def test_sample_batches_small_client_uses_all_rows() -> None:
    data = _toy(3)
    batches = list(data.sample_batches(32, steps=2, seed=0))
    assert [len(y) for _, y in batches] == [3, 3]


def test_read_idx_round_trip_gz_and_plain(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "b", arr, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), arr)
    wide = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    _write_idx(tmp_path / "c", wide, code=0x0C, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "c"), wide)


def test_read_idx_corrupted_files_name_the_file(tmp_path: Path) -> None:
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 20)
    with pytest.raises(ValueError, match=r"bad-magic.*magic"):
        read_idx(bad_magic)
    truncated = tmp_path / "truncated"
    arr = np.zeros((5, 28, 28), dtype=np.uint8)
    _write_idx(truncated, arr, gz=False)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"truncated.*declares shape"):
        read_idx(truncated)
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(ValueError, match=r"bad.gz.*gzip"):
        read_idx(bad_gz)


def test_fmnist_missing_folder_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match=r"FEDHET_DATA_DIR"):
        load_image_dataset("fashion-mnist", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetUnavailable, match=r"train-images-idx3-ubyte"):
        load_image_dataset("fashion-mnist", str(tmp_path))


def test_fmnist_from_env_dir_with_wrong_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_fake_fmnist(tmp_path, n_train=100, n_test=10)
    monkeypatch.setenv("FEDHET_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz.*60000"):
        load_image_dataset("fashion-mnist")


def test_fmnist_fake_files_normalised(tmp_path: Path) -> None:
    _write_fake_fmnist(tmp_path)
    train, test = load_image_dataset("fashion-mnist", str(tmp_path))
    assert train.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    # uniform bytes: mean 127.5/255 = 0.5 -> (0.5 - 0.2860) / 0.3530 = 0.606
    assert train.x.mean().item() == pytest.approx((0.5 - 0.2860) / 0.3530, abs=0.01)
    assert train.y[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    again, _ = load_image_dataset("fashion-mnist", str(tmp_path))
    assert again is train, "second load served from the in-process cache"


@pytest.mark.needs_fmnist
def test_real_fashion_mnist() -> None:
    if not Path(FMNIST_SYSTEM_DIR).is_dir():
        pytest.skip(
            f"{FMNIST_SYSTEM_DIR} missing: `sudo apt-get install dataset-fashion-mnist` "
            "(or `make install`)"
        )
    train, test = load_image_dataset("fashion-mnist", FMNIST_SYSTEM_DIR)
    assert train.x.shape == (60_000, 1, 28, 28) and train.x.dtype == torch.float32
    assert test.x.shape == (10_000, 1, 28, 28)
    assert train.y.dtype == torch.int64 and train.num_classes == 10
    assert abs(train.x.mean().item()) < 0.01
    assert train.x.std().item() == pytest.approx(1.0, abs=0.01)
    np.testing.assert_array_equal(np.bincount(train.y.numpy()), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test.y.numpy()), [1000] * 10)


def test_digits_shape_split_and_normalisation() -> None:
    train, test = load_image_dataset("digits")
    assert train.x.shape == (1437, 1, 28, 28) and test.x.shape == (360, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert abs(train.x.mean().item()) < 1e-4
    assert train.x.std().item() == pytest.approx(1.0, abs=1e-4)
    # stratified 80/20: every class has 35-37 test samples
    counts = np.bincount(test.y.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert load_image_dataset("digits")[0] is train


def test_unknown_dataset_raises() -> None:
    with pytest.raises(ValueError, match=r"digits"):
        load_image_dataset("cifar-10")
