"""Image datasets available offline: Fashion-MNIST (IDX files) and scikit-learn's digits.

Fashion-MNIST is read from the four IDX files that Debian's ``dataset-fashion-mnist`` installs in
``/usr/share/datasets/fashion-mnist`` (METHODS.md §8); digits is the 8x8 set bundled with
scikit-learn, up-sampled to 28x28 so every fedhet CNN accepts it (used by unit tests).
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedhet.data.base import DatasetUnavailable, TensorData
from fedhet.data.catalog import IMAGE_DATASETS

__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGE_DATASETS",
    "default_fmnist_dir",
    "load_image_dataset",
    "read_idx",
]

log = logging.getLogger(__name__)

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

_FMNIST_FILES = {
    "train-images": ("train-images-idx3-ubyte", 60_000),
    "train-labels": ("train-labels-idx1-ubyte", 60_000),
    "test-images": ("t10k-images-idx3-ubyte", 10_000),
    "test-labels": ("t10k-labels-idx1-ubyte", 10_000),
}

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_INSTALL_HINT = (
    "Install Debian's package (`sudo apt-get install dataset-fashion-mnist`, which fills "
    f"{FMNIST_SYSTEM_DIR}) or set FEDHET_DATA_DIR / pass data_dir to a folder holding "
    "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] "
    "and t10k-labels-idx1-ubyte[.gz]."
)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzipped or not).

    Format (LeCun et al., "THE MNIST DATABASE", file-format section): a 4-byte magic number
    ``0x00 0x00 <type code> <number of dimensions>``, then one big-endian uint32 per dimension,
    then the data in row-major order.

    Parameters
    ----------
    path : str or pathlib.Path
        The file; a ``.gz`` suffix or the gzip magic bytes select decompression.

    Returns
    -------
    np.ndarray
        Array with the declared shape, in native byte order.

    Raises
    ------
    ValueError
        The file is truncated, has a bad magic number or an unknown type code; the message names
        the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupted gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} "
            "(expected 0x0000 + type code in {08,09,0B,0C,0D,0E} + number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} data bytes) "
            f"but the file holds {len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def default_fmnist_dir(data_dir: str | None = None) -> Path:
    """Return the Fashion-MNIST folder: ``data_dir``, else ``$FEDHET_DATA_DIR``, else Debian's.

    Parameters
    ----------
    data_dir : str, optional
        Explicit folder.

    Returns
    -------
    pathlib.Path
        The folder (not checked for existence).
    """
    return Path(data_dir or os.environ.get("FEDHET_DATA_DIR") or FMNIST_SYSTEM_DIR)


def load_image_dataset(name: str, data_dir: str | None = None) -> tuple[TensorData, TensorData]:
    """Load an image dataset as normalised ``(N, 1, 28, 28)`` tensors.

    Parsed tensors are cached in-process, so a second call is cheap. Callers must not modify the
    returned tensors in place (use :meth:`TensorData.subset`, which copies).

    Parameters
    ----------
    name : str
        One of :data:`IMAGE_DATASETS`.
    data_dir : str, optional
        Folder of the Fashion-MNIST IDX files (default: ``$FEDHET_DATA_DIR``, else
        ``/usr/share/datasets/fashion-mnist``). Ignored for ``digits``.

    Returns
    -------
    tuple of TensorData
        ``(train, test)``.

    Raises
    ------
    DatasetUnavailable
        Fashion-MNIST files are missing.
    ValueError
        Unknown name, or a malformed file (the message names it).
    """
    if name == "fashion-mnist":
        return _load_fmnist(str(default_fmnist_dir(data_dir).resolve()))
    if name == "digits":
        return _load_digits()
    raise ValueError(f"unknown image dataset {name!r}; choose one of {IMAGE_DATASETS}")


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DatasetUnavailable(f"Fashion-MNIST file {folder / stem}[.gz] not found. {_INSTALL_HINT}")


@functools.lru_cache(maxsize=2)
def _load_fmnist(folder: str) -> tuple[TensorData, TensorData]:
    root = Path(folder)
    if not root.is_dir():
        raise DatasetUnavailable(f"Fashion-MNIST folder {root} does not exist. {_INSTALL_HINT}")
    arrays: dict[str, np.ndarray] = {}
    for key, (stem, count) in _FMNIST_FILES.items():
        path = _find_idx(root, stem)
        arr = read_idx(path)
        want = (count, 28, 28) if key.endswith("images") else (count,)
        if arr.shape != want or arr.dtype != np.uint8:
            raise ValueError(
                f"{path}: expected uint8 array of shape {want}, got {arr.dtype} {arr.shape}"
            )
        if key.endswith("labels") and int(arr.max()) > 9:
            raise ValueError(f"{path}: label {int(arr.max())} outside 0..9")
        arrays[key] = arr
    log.info("loaded Fashion-MNIST from %s", root)
    splits = []
    for split in ("train", "test"):
        x = torch.from_numpy(arrays[f"{split}-images"]).float().div_(255.0)
        x = x.sub_(FMNIST_MEAN).div_(FMNIST_STD).unsqueeze(1)
        y = torch.from_numpy(arrays[f"{split}-labels"].astype(np.int64))
        splits.append(TensorData(x=x, y=y, num_classes=10, name=f"fashion-mnist/{split}"))
    return splits[0], splits[1]


#: Version of the processed-digits cache file (bump when the processing changes).
_DIGITS_CACHE = "digits-v1.npz"


def _digits_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedhet" / "datasets" / _DIGITS_CACHE


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[TensorData, TensorData]:
    """Digits, 28×28 and normalised; read from a small cache so scikit-learn (≈ 1 s of imports
    in every fresh ClientApp process) is needed only the first time on a host (issue 13)."""
    path = _digits_cache_path()
    try:
        with np.load(path) as cached:
            train, test = (
                TensorData(
                    x=torch.from_numpy(cached[f"{split}_x"]),
                    y=torch.from_numpy(cached[f"{split}_y"]),
                    num_classes=10,
                    name=f"digits/{split}",
                )
                for split in ("train", "test")
            )
        return train, test
    except (OSError, KeyError, ValueError):
        pass
    splits = _build_digits()
    try:
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as fh:
            arrays: dict[str, Any] = {}
            for part in splits:
                split = part.name.split("/")[1]
                arrays[f"{split}_x"], arrays[f"{split}_y"] = part.x.numpy(), part.y.numpy()
            np.savez(fh, **arrays)
        os.replace(fh.name, path)
    except OSError as exc:  # a read-only home only costs the imports next time
        log.debug("digits cache not written: %s", exc)
    return splits


def _build_digits() -> tuple[TensorData, TensorData]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    x = torch.from_numpy(images).unsqueeze(1)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    train_x = x[torch.from_numpy(idx_train)]
    mean, std = float(train_x.mean()), float(train_x.std())
    splits = []
    for split, idx in (("train", idx_train), ("test", idx_test)):
        xs = (x[torch.from_numpy(idx)] - mean) / std
        ys = torch.from_numpy(labels[idx])
        splits.append(TensorData(x=xs.contiguous(), y=ys, num_classes=10, name=f"digits/{split}"))
    return splits[0], splits[1]
