"""Reply validation: a bad reply is dropped with a reason, never averaged in (DESIGN.md "Trust").

Two stages:

1. :func:`decode_arrays` checks a reply's Flower ``Array`` objects **before** anything is decoded:
   names against what the server expects from that node, the ``dtype``/``shape``/``stype``
   metadata, the ``.npy`` header inside the raw bytes (parsed with NumPy's bounded header reader,
   never ``np.load``), and the exact byte length those imply; the whole reply is bounded by what
   its plan allows and by a per-reply byte cap. Only then are the bytes viewed as an array
   (``np.frombuffer``, no pickle, no allocation sized by the sender).
2. :func:`validate_arrays` / :func:`validate_train_metrics` / :func:`validate_eval_metrics` check the
   decoded values: method-specific shapes, finite values, metric ranges.

How Flower 1.41 serialises an array (``flwr/app/message/array.py``): ``Array.from_numpy_ndarray``
stores ``dtype=str(a.dtype)``, ``shape=tuple(a.shape)``, ``stype="numpy.ndarray"`` and
``data = np.save(..., allow_pickle=False)`` bytes, i.e. an ``.npy`` file: 6-byte magic
``\\x93NUMPY``, 2 version bytes, a 2-byte (v1) or 4-byte (v2) little-endian header length, a Python
dict literal header (``descr``, ``fortran_order``, ``shape``) padded to 64 bytes, then the raw
C-order values.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from fedhet.core.predictions import PREDICTED_KEY

ArraySpec = tuple[tuple[int, ...], np.dtype]

#: Flower's ``stype`` for NumPy-serialised arrays.
NUMPY_STYPE = "numpy.ndarray"
#: Largest ``.npy`` header accepted (NumPy writes 128 bytes for ordinary arrays).
MAX_HEADER_BYTES = 1024
#: Bytes a reply may carry per array beyond its values (magic + header).
HEADER_ALLOWANCE = MAX_HEADER_BYTES + 16
#: Metric values (scalars and list items) a reply may carry in all.
MAX_METRIC_VALUES = 100_000
#: Largest magnitude of any reply metric (counts, losses, seconds).
MAX_METRIC_ABS = 1e15
#: Largest ``num-examples`` a device may report when it declared no training-set size.
MAX_EXAMPLES = 10**9


class ReplyError(ValueError):
    """Why a device's reply cannot be used."""


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, ArraySpec]:
    """Shape and dtype of every array (what a reply is expected to match)."""
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in arrays.items()}


def _max_elements(name: str, spec: ArraySpec, sizes: Mapping[str, int] | None) -> int | None:
    shape, _ = spec
    if sizes is not None and name in sizes:
        return int(sizes[name])
    if any(s < 0 for s in shape):
        return None
    return int(math.prod(shape))


def plan_byte_limit(
    expected: Mapping[str, ArraySpec],
    sizes: Mapping[str, int] | None = None,
    open_length_bytes: int = 0,
) -> int:
    """Largest array payload a reply matching ``expected`` can have, in bytes.

    Parameters
    ----------
    expected : Mapping[str, ArraySpec]
        Names, shapes (``-1`` = open length) and dtypes the server allows.
    sizes : Mapping[str, int], optional
        Exact element counts for open-length names.
    open_length_bytes : int
        Bytes allowed for an open-length array whose count ``sizes`` does not give.

    Returns
    -------
    int
        Σ over allowed arrays of (values bytes + header allowance).
    """
    total = 0
    for name, spec in expected.items():
        n = _max_elements(name, spec, sizes)
        values = open_length_bytes if n is None else n * np.dtype(spec[1]).itemsize
        total += values + HEADER_ALLOWANCE
    return total


def _shape_ok(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(shape) == len(want) and all(w in (-1, s) for w, s in zip(want, shape, strict=True))


def _read_npy_header(name: str, data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, values_offset)`` of an ``.npy`` blob; never reads values."""
    fp = io.BytesIO(data[: 12 + MAX_HEADER_BYTES])
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(
                fp, max_header_size=MAX_HEADER_BYTES
            )
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(
                fp, max_header_size=MAX_HEADER_BYTES
            )
        else:
            raise ReplyError(f"array {name!r}: unsupported .npy version {version}")
    except ReplyError:
        raise
    except Exception as exc:  # NumPy raises ValueError/EOFError/SyntaxError on bad headers
        raise ReplyError(f"array {name!r}: not a valid .npy blob ({type(exc).__name__})") from None
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype), fp.tell()


def decode_array(
    name: str, array: Any, spec: ArraySpec, max_elements: int | None = None
) -> np.ndarray:
    """Check one Flower ``Array`` against ``spec`` and decode it without trusting the sender.

    Raises
    ------
    ReplyError
        Wrong stype, dtype or shape (in the metadata or the ``.npy`` header), a header that does
        not parse, a byte length that does not match the declared shape, or non-finite values.
    """
    want_shape, want_dtype = spec
    want_dtype = np.dtype(want_dtype)
    if want_dtype.hasobject:
        raise ReplyError(f"array {name!r}: object arrays are never accepted")
    stype, dtype, shape, data = (
        getattr(array, a, None) for a in ("stype", "dtype", "shape", "data")
    )
    if stype != NUMPY_STYPE:
        raise ReplyError(f"array {name!r}: serialisation {str(stype)[:40]!r}, expected numpy")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ReplyError(f"array {name!r}: no raw bytes")
    if str(dtype) != want_dtype.str and str(dtype) != str(want_dtype):
        raise ReplyError(f"array {name!r}: dtype {str(dtype)[:40]}, expected {want_dtype}")
    try:
        meta_shape = tuple(int(s) for s in shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ReplyError(f"array {name!r}: malformed shape metadata") from None
    if not _shape_ok(meta_shape, want_shape):
        raise ReplyError(f"array {name!r}: shape {meta_shape[:8]}, expected {want_shape}")
    count = math.prod(meta_shape)
    if max_elements is not None and count != max_elements and -1 in want_shape:
        raise ReplyError(f"array {name!r}: {count} values, expected {max_elements}")
    data = bytes(data) if not isinstance(data, bytes) else data
    if len(data) == 0:
        raise ReplyError(f"array {name!r}: empty bytes")
    h_shape, fortran, h_dtype, offset = _read_npy_header(name, data)
    if h_dtype != want_dtype or h_dtype.hasobject:
        raise ReplyError(f"array {name!r}: .npy header dtype {h_dtype}, expected {want_dtype}")
    if h_shape != meta_shape:
        raise ReplyError(
            f"array {name!r}: .npy header shape {h_shape[:8]} != metadata {meta_shape}"
        )
    if fortran and len(h_shape) > 1:
        raise ReplyError(f"array {name!r}: Fortran-ordered data is not accepted")
    need = count * want_dtype.itemsize
    if len(data) - offset != need:
        raise ReplyError(
            f"array {name!r}: {len(data) - offset} value bytes, shape {h_shape} needs {need}"
        )
    values = np.frombuffer(data, dtype=want_dtype, count=count, offset=offset)
    out = values.reshape(h_shape).copy()
    if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
        raise ReplyError(f"array {name!r}: contains NaN or Inf")
    return out


def decode_arrays(
    record: Mapping[str, Any],
    expected: Mapping[str, ArraySpec],
    *,
    sizes: Mapping[str, int] | None = None,
    max_bytes: int = 0,
    open_length_bytes: int = 0,
) -> dict[str, np.ndarray]:
    """Check a reply's ``ArrayRecord`` against the node's expected spec, then decode it.

    Nothing is decoded before every name, dtype, shape and the total byte length have been
    checked against ``expected``: a reply can never be larger than its plan allows
    (:func:`plan_byte_limit`) nor than ``max_bytes``.

    Parameters
    ----------
    record : Mapping[str, flwr.app.Array]
        The reply's arrays (an ``ArrayRecord``).
    expected : Mapping[str, ArraySpec]
        Names the server allows from this node this round, with shape (``-1``: open length) and
        dtype. A reply may carry a subset; methods check completeness after decoding.
    sizes : Mapping[str, int], optional
        Exact element counts of open-length arrays.
    max_bytes : int
        Per-reply cap on the array bytes (0: only the plan's bound).
    open_length_bytes : int
        Plan bound for an open-length array without an entry in ``sizes``.

    Raises
    ------
    ReplyError
        Naming the first problem found.
    """
    names = list(record.keys())
    if len(names) > len(expected):
        raise ReplyError(f"{len(names)} arrays, this device's plan allows at most {len(expected)}")
    extra = sorted(str(n) for n in names if n not in expected)
    if extra:
        raise ReplyError(f"unexpected arrays {[e[:60] for e in extra[:5]]} (not in this plan)")
    limit = plan_byte_limit({n: expected[n] for n in names}, sizes, open_length_bytes)
    if max_bytes > 0:
        limit = min(limit, max_bytes)
    total = 0
    for name in names:
        data = getattr(record[name], "data", b"")
        total += len(data) if isinstance(data, bytes | bytearray | memoryview) else 0
    if total > limit:
        raise ReplyError(f"reply carries {total} array bytes; at most {limit} allowed")
    return {
        name: decode_array(
            name, record[name], expected[name], _max_elements(name, expected[name], sizes)
        )
        for name in names
    }


def validate_arrays(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, ArraySpec],
    *,
    required: bool = True,
    sizes: Mapping[str, int] | None = None,
) -> None:
    """Check names, shapes, dtypes and finiteness of a reply's decoded arrays.

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
        if not _shape_ok(tuple(arr.shape), shape):
            raise ReplyError(f"array {name!r}: shape {tuple(arr.shape)}, expected {shape}")
        if sizes is not None and name in sizes and arr.size != sizes[name]:
            raise ReplyError(f"array {name!r}: {arr.size} values, expected {sizes[name]}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ReplyError(f"array {name!r}: contains NaN or Inf")


def _finite_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ReplyError(f"metric {key!r} must be a number, got {type(value).__name__}")
    if isinstance(value, int | np.integer) and abs(int(value)) > MAX_METRIC_ABS:
        raise ReplyError(f"metric {key!r} = {value} is out of range (|x| <= {MAX_METRIC_ABS:g})")
    x = float(value)
    if not math.isfinite(x) or abs(x) > MAX_METRIC_ABS:
        raise ReplyError(f"metric {key!r} = {value!r} is not finite or out of range")
    return x


def check_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric value (scalar or list item) is a finite number of bounded size.

    Returns
    -------
    dict
        A plain copy of ``metrics``.

    Raises
    ------
    ReplyError
        On a non-number, a non-finite or huge value, or more than :data:`MAX_METRIC_VALUES`.
    """
    out: dict[str, Any] = {}
    count = 0
    for key, value in metrics.items():
        if isinstance(value, list | tuple):
            count += len(value)
            if count > MAX_METRIC_VALUES:
                raise ReplyError(f"reply carries more than {MAX_METRIC_VALUES} metric values")
            for v in value:
                _finite_number(str(key), v)
            out[str(key)] = list(value)
        else:
            count += 1
            _finite_number(str(key), value)
            out[str(key)] = value
    return out


def _count(metrics: Mapping[str, Any], key: str) -> int:
    n = metrics.get(key)
    if isinstance(n, float) and n.is_integer() and abs(n) <= MAX_METRIC_ABS:
        n = int(n)
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 0:
        raise ReplyError(f"metric {key!r} must be a non-negative int, got {n!r}")
    return int(n)


def validate_train_metrics(metrics: Mapping[str, Any], declared: int | None = None) -> int:
    """Check the metrics every train reply carries; return ``num-examples``, capped.

    ``num-examples`` is capped at ``declared`` (the training-set size the node declared when it
    registered; :data:`MAX_EXAMPLES` when it declared none), so one device cannot outweigh the
    federation by claiming a huge count (DESIGN.md "Trust").
    """
    check_metrics(metrics)
    n = _count(metrics, "num-examples")
    for key in ("train-loss", "train-seconds"):
        _finite_number(key, metrics.get(key))
    cap = MAX_EXAMPLES if declared is None else min(int(declared), MAX_EXAMPLES)
    return min(n, cap)


def validate_eval_metrics(
    metrics: Mapping[str, Any], declared: int | None = None
) -> tuple[int, int, float]:
    """``(correct, examples, loss_sum)`` of an evaluate reply, checked.

    ``examples`` must not exceed ``declared`` (the local test-set size the node declared, or
    :data:`MAX_EXAMPLES`), ``0 <= correct <= examples`` and the loss sum finite, so the
    federation's accuracy Σ correct / Σ examples stays in [0, 1] and one reply cannot dominate it.
    """
    check_metrics(metrics)
    c, n = _count(metrics, "eval-correct"), _count(metrics, "num-examples")
    loss = _finite_number("eval-loss", metrics.get("eval-loss"))
    cap = MAX_EXAMPLES if declared is None else int(declared)
    if n > cap:
        raise ReplyError(f"num-examples={n} exceeds the node's declared local test size {cap}")
    if c > n:
        raise ReplyError(f"eval-correct={c} exceeds num-examples={n}")
    if loss < 0:
        raise ReplyError(f"eval-loss={loss} is negative")
    if PREDICTED_KEY in metrics:
        _check_predicted(metrics[PREDICTED_KEY], n)
    return c, n, loss


def _check_predicted(counts: Any, examples: int) -> None:
    """``eval-predicted`` (optional) is a list of non-negative int counts summing to ``examples``."""
    if not isinstance(counts, list | tuple) or not counts:
        raise ReplyError(f"{PREDICTED_KEY} must be a non-empty list of counts, got {counts!r}")
    total = sum(_count({PREDICTED_KEY: v}, PREDICTED_KEY) for v in counts)
    if total != examples:
        raise ReplyError(f"{PREDICTED_KEY} sums to {total}, not num-examples={examples}")
