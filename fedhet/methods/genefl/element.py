"""GENE-FL learnGene at element granularity (``genefl.granularity=element``, METHODS.md §3.4).

GENE-FL: arXiv 2504.14628, reconstructed (METHODS.md §3). With ``element`` the learnGene 𝓖 is a
boolean mask over the model's **parameters** instead of a set of whole layers ("``element`` = B3
masks + B2 ``holders``", §3.4). Our choices where §3 is silent, used by the strategy and the
device alike (this module is neutral: NumPy and :mod:`fedhet.core` only, no Flower):

* **Maskable entries**: every parameter (``named_parameters`` order, each tensor row-major), norm
  weights included. BatchNorm running statistics have no Taylor score; in element mode they stay
  personal (they never travel after the warm-up), unlike layer mode where they go with a layer.
* **Selection** (server, once after round R_w): every device returns s_j (B5 Taylor saliency) for
  every parameter entry; each vector is normalised to sum 1 and the vectors are averaged
  (``genefl.score-agg=mean``) or each device votes for its own top ρ·d entries and the mean breaks
  ties below one vote (``vote``); the mask keeps exactly k = max(1, ⌊ρ·d⌋) entries with the
  largest merged score (:func:`fedhet.core.masks.topk_mask`: B3's τ, ties at τ in model order),
  d = number of parameter entries. So ρ bounds the gene-round upload by ρ·d values.
* **Wire** (B1): the mask travels once per device, the first time the device needs it (founders:
  with the clustering round's full model; newcomers: with the probe's P), as packed bits over the
  d entries (⌈d/8⌉ B) or as int32 indices when 4·k < ⌈d/8⌉ (:func:`encode_mask`). The device keeps
  it in ``context.state``; from then on learnGenes go both ways as "values only" (B1), one float32
  vector ``genefl-values`` of the k masked entries in model order (one array rather than one per
  tensor saves each array's record header, ~150 B), and the server resends the mask to a device
  whose gene reply did not arrive valid (it may have lost its state).
* **Aggregation**: all devices hold the same mask, so B2 ``holders`` over the masked coordinates is
  the sample-weighted mean of the values vectors; Θ* likewise. Unmasked entries never change on the
  server after the warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedhet.core.masks import topk_mask
from fedhet.methods.genefl import wire

#: Maskable parameters in model order: ``(name, shape)``.
Shapes = list[tuple[str, tuple[int, ...]]]


def param_shapes(state: Mapping[str, np.ndarray], params: Sequence[str]) -> Shapes:
    """The maskable tensors (the parameters, in ``params`` order) with their shapes."""
    return [(n, tuple(np.shape(state[n]))) for n in params]


def num_entries(shapes: Shapes) -> int:
    """d: entries of all maskable tensors."""
    return int(sum(int(np.prod(s)) for _, s in shapes))


def merge_scores(vectors: Sequence[np.ndarray], how: str, rho: float) -> np.ndarray:
    """Merged per-entry score of the devices' element-score vectors (float64, length d).

    ``mean``: each vector normalised to sum 1 (all-zero: uniform), then averaged. ``vote``: votes
    of each device's own top ρ·d entries plus 0.5·mean/max(mean), the layer rule of
    :func:`fedhet.core.fisher.aggregate_layer_scores` applied per entry.
    """
    rows = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in vectors])
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        raise ValueError(f"need a non-empty (n, d) array of element scores, got {rows.shape}")
    sums = rows.sum(axis=1, keepdims=True)
    normed = np.where(sums > 0, rows / np.where(sums > 0, sums, 1.0), 1.0 / rows.shape[1])
    mean = normed.mean(axis=0)
    if how == "mean":
        return mean
    if how == "vote":
        votes = np.zeros_like(mean)
        for row in normed:
            votes += topk_mask(torch.from_numpy(row), rho).numpy()
        return votes + 0.5 * mean / max(float(mean.max()), 1e-12)
    raise ValueError(f"score aggregation must be 'mean' or 'vote', got {how!r}")


def select_elements(vectors: Sequence[np.ndarray], how: str, rho: float) -> np.ndarray:
    """The learnGene element mask (flat ``bool``, length d): top k = max(1, ⌊ρ·d⌋) merged scores."""
    merged = merge_scores(vectors, how, rho)
    return topk_mask(torch.from_numpy(merged), rho).numpy()


def split_mask(flat: np.ndarray, shapes: Shapes) -> dict[str, np.ndarray]:
    """Per-tensor boolean masks of a flat mask over the maskable tensors."""
    flat = np.asarray(flat, dtype=bool).reshape(-1)
    if flat.size != num_entries(shapes):
        raise ValueError(f"mask of {flat.size} entries for {num_entries(shapes)} parameters")
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        out[name] = flat[start : start + n].reshape(shape)
        start += n
    return out


def flat_mask(masks: Mapping[str, np.ndarray], shapes: Shapes) -> np.ndarray:
    """Inverse of :func:`split_mask`."""
    return np.concatenate([np.asarray(masks[n], dtype=bool).reshape(-1) for n, _ in shapes])


def encode_mask(flat: np.ndarray) -> dict[str, np.ndarray]:
    """The mask's cheapest wire form (B1): packed bits (⌈d/8⌉ B) or int32 indices (4·k B)."""
    flat = np.asarray(flat, dtype=bool).reshape(-1)
    kept = int(flat.sum())
    if 4 * kept < (flat.size + 7) // 8:
        return {wire.MASK_INDEX: np.flatnonzero(flat).astype(np.int32)}
    return {wire.MASK: np.packbits(flat)}


def decode_mask(arrays: Mapping[str, np.ndarray], d: int) -> np.ndarray | None:
    """The flat mask carried by ``arrays`` (``None`` if none); ``ValueError`` if malformed."""
    if wire.MASK in arrays:
        packed = np.asarray(arrays[wire.MASK])
        if packed.dtype != np.uint8 or packed.size != (d + 7) // 8:
            raise ValueError(
                f"{wire.MASK}: {packed.size} {packed.dtype} B, expected {(d + 7) // 8}"
            )
        flat = np.unpackbits(packed.reshape(-1), count=d).astype(bool)
    elif wire.MASK_INDEX in arrays:
        idx = np.asarray(arrays[wire.MASK_INDEX]).astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= d):
            raise ValueError(f"{wire.MASK_INDEX}: index out of range [0, {d})")
        flat = np.zeros(d, dtype=bool)
        flat[idx] = True
    else:
        return None
    if not flat.any():
        raise ValueError("learnGene mask is empty")
    return flat


def without_mask(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` less the mask's wire arrays."""
    return {k: v for k, v in arrays.items() if k not in (wire.MASK, wire.MASK_INDEX)}


def gather(state: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict:
    """Values-only learnGene (B1): ``{genefl-values: the masked entries, model order}``."""
    parts = [np.asarray(state[n]).reshape(-1)[m.reshape(-1)] for n, m in masks.items() if m.any()]
    return {wire.VALUES: np.ascontiguousarray(np.concatenate(parts).astype(np.float32))}


def per_tensor(values: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict:
    """The values vector split per tensor with masked entries (1-D each, model order).

    Raises
    ------
    ValueError
        If ``genefl-values`` is missing or its length differs from the mask's count.
    """
    if wire.VALUES not in values:
        raise ValueError(f"learnGene values lack {wire.VALUES!r}")
    vec = np.asarray(values[wire.VALUES]).reshape(-1)
    counts = {n: int(m.sum()) for n, m in masks.items() if m.any()}
    if vec.size != sum(counts.values()):
        raise ValueError(f"{wire.VALUES}: {vec.size} values for a mask of {sum(counts.values())}")
    out, start = {}, 0
    for name, c in counts.items():
        out[name] = vec[start : start + c]
        start += c
    return out


def scatter(
    values: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Copies of ``base``'s masked tensors with the masked entries set from ``values``
    (``ValueError`` as :func:`per_tensor`)."""
    out: dict[str, np.ndarray] = {}
    for name, vals in per_tensor(values, masks).items():
        arr = np.array(base[name], copy=True)
        arr.reshape(-1)[masks[name].reshape(-1)] = vals.astype(arr.dtype, copy=False)
        out[name] = arr
    return out
