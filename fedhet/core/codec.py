"""Sparse array codec and byte accounting (METHODS.md B1).

A payload is a flat ``dict[str, np.ndarray]``. A tensor ``name`` travels as one of

* ``dense``: ``name`` itself;
* ``bitmask``: ``name::values`` (kept fp32 entries, row-major) + ``name::bitmask`` (packed uint8);
* ``index``: ``name::values`` + ``name::index`` (int32 flat indices).

Shapes are not sent: both sides know the model. :func:`encode_sparse` picks the cheapest encoding for
a tensor's density ρ: bitmask beats dense when ρ < 31/32, index beats bitmask when ρ < 1/32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

VALUES = "::values"
BITMASK = "::bitmask"
INDEX = "::index"
_SUFFIXES = (VALUES, BITMASK, INDEX)


def as_contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous copy-if-needed that keeps the shape (``np.ascontiguousarray`` makes 0-d
    arrays such as BN's ``num_batches_tracked`` 1-d, which a receiver's shape check rejects)."""
    arr = np.asarray(a)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def dense_bytes(n: int, itemsize: int = 4) -> int:
    """Bytes of ``n`` dense values."""
    return n * itemsize


def encoding_costs(numel: int, kept: int, itemsize: int = 4) -> dict[str, int]:
    """Payload bytes of each encoding for a tensor of ``numel`` entries with ``kept`` nonzeros."""
    return {
        "dense": numel * itemsize,
        "bitmask": kept * itemsize + (numel + 7) // 8,
        "index": kept * (itemsize + 4),
    }


def choose_encoding(numel: int, kept: int, itemsize: int = 4) -> str:
    """Cheapest encoding (ties go to the simpler one: dense, then bitmask)."""
    costs = encoding_costs(numel, kept, itemsize)
    return min(("dense", "bitmask", "index"), key=lambda k: costs[k])


def encode_sparse(
    name: str, values: np.ndarray, mask: np.ndarray, encoding: str | None = None
) -> dict[str, np.ndarray]:
    """Encode the entries of ``values`` where ``mask`` is true.

    Parameters
    ----------
    name : str
        Tensor name in the model's state dict.
    values : np.ndarray
        Full-shape tensor.
    mask : np.ndarray
        Boolean array of the same shape: which entries travel.
    encoding : str, optional
        Force ``dense``, ``bitmask`` or ``index``; default picks the cheapest.
    """
    if values.shape != mask.shape:
        raise ValueError(f"{name}: mask shape {mask.shape} != values shape {values.shape}")
    flat_mask = mask.reshape(-1).astype(bool)
    kept = int(flat_mask.sum())
    enc = encoding or choose_encoding(flat_mask.size, kept, values.dtype.itemsize)
    if enc == "dense":
        return {name: as_contiguous(np.where(mask, values, 0).astype(values.dtype))}
    kept_values = np.ascontiguousarray(values.reshape(-1)[flat_mask])
    if enc == "bitmask":
        return {name + VALUES: kept_values, name + BITMASK: np.packbits(flat_mask)}
    if enc == "index":
        idx = np.flatnonzero(flat_mask).astype(np.int32)
        return {name + VALUES: kept_values, name + INDEX: idx}
    raise ValueError(f"unknown encoding {enc!r}; use dense, bitmask or index")


def encode_values_only(name: str, values: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Kept entries only, for a receiver that already holds the mask (METHODS.md B1)."""
    return {name + VALUES: np.ascontiguousarray(values.reshape(-1)[mask.reshape(-1).astype(bool)])}


def base_name(key: str) -> str:
    """Tensor name of a payload key (``conv.weight::values`` → ``conv.weight``)."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def decode_payload(
    payload: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    base: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decode a payload into full-shape tensors and the mask of entries it carried.

    Parameters
    ----------
    payload : Mapping[str, np.ndarray]
        Encoded arrays (any mix of dense, bitmask and index tensors).
    shapes : Mapping[str, tuple[int, ...]]
        Full shape of every tensor the payload may carry.
    base : Mapping[str, np.ndarray], optional
        Scatter into a copy of these tensors; default scatters into zeros.
    masks : Mapping[str, np.ndarray], optional
        Masks already known to the receiver, needed for values-only tensors.

    Returns
    -------
    tuple[dict, dict]
        ``(tensors, carried)``: decoded tensors and boolean masks of the carried entries.

    Raises
    ------
    ValueError
        On an unknown tensor name, a values array whose length does not match its mask, or an
        index out of range.
    """
    names = {base_name(k) for k in payload}
    tensors: dict[str, np.ndarray] = {}
    carried: dict[str, np.ndarray] = {}
    for name in sorted(names):
        if name not in shapes:
            raise ValueError(f"payload tensor {name!r} is not part of the model")
        shape = tuple(shapes[name])
        numel = int(np.prod(shape)) if shape else 1
        if name in payload:
            arr = np.asarray(payload[name])
            if arr.shape != shape:
                raise ValueError(f"{name}: shape {arr.shape}, expected {shape}")
            tensors[name] = arr
            carried[name] = np.ones(shape, dtype=bool)
            continue
        values = np.asarray(payload.get(name + VALUES, np.zeros(0, np.float32)))
        if name + BITMASK in payload:
            packed = np.asarray(payload[name + BITMASK], dtype=np.uint8)
            if packed.size != (numel + 7) // 8:
                raise ValueError(f"{name}: bitmask of {packed.size} B, expected {(numel + 7) // 8}")
            flat = np.unpackbits(packed, count=numel).astype(bool)
        elif name + INDEX in payload:
            idx = np.asarray(payload[name + INDEX]).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= numel):
                raise ValueError(f"{name}: index out of range [0, {numel})")
            flat = np.zeros(numel, dtype=bool)
            flat[idx] = True
        elif masks is not None and name in masks:
            flat = np.asarray(masks[name]).reshape(-1).astype(bool)
        else:
            raise ValueError(f"{name}: values without a bitmask, index or known mask")
        if int(flat.sum()) != values.size:
            raise ValueError(
                f"{name}: {values.size} values for a mask of {int(flat.sum())} entries"
            )
        if base is not None and name in base:
            out = np.array(base[name], dtype=values.dtype, copy=True).reshape(-1)
        else:
            out = np.zeros(numel, dtype=values.dtype if values.size else np.float32)
        out[flat] = values
        tensors[name] = out.reshape(shape)
        carried[name] = flat.reshape(shape)
    return tensors, carried


def payload_bytes(payload: Mapping[str, np.ndarray]) -> int:
    """Sum of the array buffers of a payload (METHODS.md B1 ``payload_bytes``)."""
    return int(sum(np.asarray(a).nbytes for a in payload.values()))
