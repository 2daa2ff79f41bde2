"""Reply validation: a bad reply is dropped with a reason, never averaged in (DESIGN.md step 5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

ArraySpec = tuple[tuple[int, ...], np.dtype]


class ReplyError(ValueError):
    """Why a device's reply cannot be used."""


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, ArraySpec]:
    """Shape and dtype of every array (what a reply is expected to match)."""
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in arrays.items()}


def validate_arrays(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, ArraySpec],
    *,
    required: bool = True,
    sizes: Mapping[str, int] | None = None,
) -> None:
    """Check names, shapes, dtypes and finiteness of a reply's arrays.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        What the device sent.
    expected : Mapping[str, ArraySpec]
        Allowed names with their shape and dtype. A shape entry of -1 accepts any length there
        (for values arrays whose length only the mask fixes).
    required : bool
        Every expected name must be present (dense uploads) or only a subset (partial uploads).
    sizes : Mapping[str, int], optional
        Exact element counts for names whose length is -1 in ``expected``.

    Raises
    ------
    ReplyError
        Naming the first problem found.
    """
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ReplyError(f"unexpected arrays {extra[:5]} (not in this device's plan)")
    if required:
        missing = sorted(set(expected) - set(arrays))
        if missing:
            raise ReplyError(f"missing arrays {missing[:5]}")
    for name, arr in arrays.items():
        shape, dtype = expected[name]
        if np.dtype(arr.dtype) != dtype:
            raise ReplyError(f"array {name!r}: dtype {arr.dtype}, expected {dtype}")
        if len(shape) != arr.ndim or any(
            s not in (-1, a) for s, a in zip(shape, arr.shape, strict=True)
        ):
            raise ReplyError(f"array {name!r}: shape {tuple(arr.shape)}, expected {shape}")
        if sizes is not None and name in sizes and arr.size != sizes[name]:
            raise ReplyError(f"array {name!r}: {arr.size} values, expected {sizes[name]}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ReplyError(f"array {name!r}: contains NaN or Inf")


def validate_train_metrics(metrics: Mapping[str, Any]) -> int:
    """Check the metrics every train reply carries; return ``num-examples``."""
    n = metrics.get("num-examples")
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 0:
        raise ReplyError(f"metric 'num-examples' must be a non-negative int, got {n!r}")
    for key in ("train-loss", "train-seconds"):
        value = metrics.get(key)
        if not isinstance(value, int | float) or not math.isfinite(float(value)):
            raise ReplyError(f"metric {key!r} must be a finite number, got {value!r}")
    return int(n)
