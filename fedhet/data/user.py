"""A device's own labelled images, given by ``--node-config "data-path=..."``.

Three formats are accepted (see ``docs/data-format.md``): an ``.npz`` file with arrays ``x`` and
``y``; a ``.csv`` file with a ``label`` column and one column per pixel; a folder with one
sub-folder of images per class. All are returned as a normalised :class:`TensorData` of shape
``(N, C, image_size, image_size)``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedhet.data.base import TensorData
from fedhet.data.images import FMNIST_MEAN, FMNIST_STD

__all__ = ["COLOUR_MEAN", "COLOUR_STD", "IMAGE_SUFFIXES", "load_user_data"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
COLOUR_MEAN = 0.5
COLOUR_STD = 0.5


def load_user_data(
    path: str | Path, num_classes: int | None = None, image_size: int = 28
) -> TensorData:
    """Load a device's own data set.

    Pixel values are brought to [0, 1] (integers and floats above 1 are divided by 255),
    images are bilinearly resized to ``image_size`` x ``image_size`` when needed, then
    grayscale images are normalised with the Fashion-MNIST statistics (mean 0.2860, std 0.3530,
    METHODS.md §8) and colour images with mean 0.5, std 0.5 per channel, so that every device of
    a federation applies the same transform.

    Parameters
    ----------
    path : str or pathlib.Path
        An ``.npz`` file, a ``.csv`` file or an image folder ``<root>/<class_name>/*.png``.
    num_classes : int, optional
        Number of classes of the federation's task; labels must lie in ``[0, num_classes)``.
        Default: ``max(label) + 1`` (folder format: the number of class folders).
    image_size : int, default 28
        Side of the returned images.

    Returns
    -------
    TensorData
        float32 ``x`` of shape ``(N, C, image_size, image_size)``, int64 ``y``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unsupported format or malformed content; the message names the file and the problem.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data-path {p} does not exist")
    if p.is_dir():
        x, y, names = _read_folder(p)
        if num_classes is None:
            num_classes = len(names)
    elif p.suffix.lower() == ".npz":
        x, y = _read_npz(p)
    elif p.suffix.lower() == ".csv":
        x, y = _read_csv(p)
    else:
        raise ValueError(
            f"{p}: unsupported data format {p.suffix!r}; use an .npz file (arrays x, y), "
            "a .csv file (label + pixel columns) or a folder <root>/<class_name>/*.png"
        )
    if len(x) == 0:
        raise ValueError(f"{p}: contains no samples")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"{p}: label {int(y.min() if y.min() < 0 else y.max())} outside [0, {num_classes})"
        )
    tensor = _to_unit_range(p, x)
    if tensor.shape[-2:] != (image_size, image_size):
        log.info(
            "%s: resizing %s images to %dx%d",
            p,
            tuple(tensor.shape[-2:]),
            image_size,
            image_size,
        )
        tensor = F.interpolate(
            tensor, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    if tensor.shape[1] == 1:
        tensor = (tensor - FMNIST_MEAN) / FMNIST_STD
    else:
        tensor = (tensor - COLOUR_MEAN) / COLOUR_STD
    log.info("%s: %d samples, %d classes, shape %s", p, len(y), num_classes, tuple(tensor.shape))
    return TensorData(
        x=tensor.contiguous().float(),
        y=torch.from_numpy(y.astype(np.int64)),
        num_classes=num_classes,
        name=str(p),
    )


def _labels(path: Path, raw: np.ndarray) -> np.ndarray:
    y = np.asarray(raw)
    if y.ndim != 1:
        raise ValueError(f"{path}: labels must be 1-D, got shape {y.shape}")
    is_whole = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.mod(y, 1) == 0))
    )
    if y.size and not is_whole:
        raise ValueError(f"{path}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _images_nchw(path: Path, x: np.ndarray) -> np.ndarray:
    """Bring (N,H,W), (N,C,H,W) or channel-last (N,H,W,C) with C in {1,3,4} to (N,C,H,W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[3] in (1, 3, 4):
            return np.moveaxis(x, 3, 1)[:, :3]
    raise ValueError(
        f"{path}: x must have shape (N,H,W), (N,C,H,W) or (N,H,W,C) with C in {{1,3}}, "
        f"got {x.shape}"
    )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    with data:
        missing = [key for key in ("x", "y") if key not in data.files]
        if missing:
            raise ValueError(
                f"{path}: missing array(s) {missing}; found {sorted(data.files)} "
                "(expected x: images, y: labels)"
            )
        x, y = data["x"], _labels(path, data["y"])
    x = _images_nchw(path, x)
    if len(x) != len(y):
        raise ValueError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    return x, y


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty CSV file")
        header = [h.strip() for h in header]
        if "label" not in header:
            raise ValueError(f"{path}: no 'label' column in the header (got {header[:5]}...)")
        label_col = header.index("label")
        pixel_cols = [i for i in range(len(header)) if i != label_col]
        side = math.isqrt(len(pixel_cols))
        if side * side != len(pixel_cols) or side == 0:
            raise ValueError(
                f"{path}: {len(pixel_cols)} pixel columns do not form a square image "
                "(expected e.g. pixel0..pixel783 for 28x28)"
            )
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}, line {line_no}: {len(row)} values, header has {len(header)}"
                )
            try:
                rows.append([float(v) for v in row])
            except ValueError as exc:
                raise ValueError(f"{path}, line {line_no}: {exc}") from exc
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    y = _labels(path, table[:, label_col])
    x = table[:, pixel_cols].reshape(-1, 1, side, side)
    return x, y


def _read_image(path: Path) -> np.ndarray:
    """One image as float (H, W, C) in [0, 1], C = 1 (grayscale) or 3."""
    # Pillow is always present: matplotlib (a fedhet dependency) requires it since 3.3, so
    # matplotlib.image.imread is no fallback.
    from PIL import Image

    with Image.open(path) as img:
        mode = "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    return arr[:, :, None] if arr.ndim == 2 else arr


def _read_folder(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise ValueError(
            f"{root}: no class folders; expected <root>/<class_name>/*.png "
            "(one sub-folder per class)"
        )
    images: list[torch.Tensor] = []
    labels: list[int] = []
    sizes: set[tuple[int, int]] = set()
    for label, name in enumerate(names):
        files = sorted(
            f for f in (root / name).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ValueError(f"{root / name}: class folder holds no images {IMAGE_SUFFIXES}")
        for f in files:
            try:
                arr = _read_image(f)
            except (OSError, SyntaxError) as exc:
                raise ValueError(f"{f}: cannot read image ({exc})") from exc
            images.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))
            labels.append(label)
            sizes.add((arr.shape[0], arr.shape[1]))
    channels = max(img.shape[0] for img in images)
    height, width = max(sizes)
    batch = []
    for img in images:
        if img.shape[0] != channels:
            img = img.expand(channels, -1, -1)
        if tuple(img.shape[1:]) != (height, width):
            img = F.interpolate(
                img[None], size=(height, width), mode="bilinear", align_corners=False
            )[0]
        batch.append(img)
    log.info("%s: classes %s", root, dict(enumerate(names)))
    return torch.stack(batch).numpy(), np.asarray(labels, dtype=np.int64), names


def _to_unit_range(path: Path, x: np.ndarray) -> torch.Tensor:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{path}: pixel values must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: pixel values contain NaN or infinity")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{path}: pixel values must lie in [0, 1] or [0, 255], got [{lo}, {hi}]")
    if np.issubdtype(np.asarray(x).dtype, np.integer) or hi > 1.0:
        arr = arr / 255.0
    return torch.from_numpy(arr)
