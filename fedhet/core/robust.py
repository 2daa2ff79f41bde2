"""Robust aggregation helpers (DESIGN.md "Trust"; issue 10 item 3). No Flower imports.

* :func:`cap_examples`: a device's reported sample count, capped at what it declared;
* :func:`update_norm` / :func:`norm_outliers`: drop an update whose L2 norm is more than
  ``factor`` × the (lower) median of the round's update norms;
* :func:`trimmed_mean` / :func:`coordinate_median`: coordinate-wise robust rules over state dicts
  (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
  arXiv:1803.01498, §3 (median, eq. 4) and §4 (trimmed mean, eq. 5));
* :func:`finite_or_rollback`: keep the previous global model when an aggregate is not finite.

Contributions are :class:`fedhet.core.aggregate.Contribution` objects (absolute tensors, a weight
and optional holder masks), so the robust rules plug in where ``weighted_mean`` / ``masked_mean``
are used. **Weights**: the coordinate-wise rules are unweighted (as in arXiv:1803.01498): a
device's ``weight`` (sample count) is ignored, so a device cannot buy influence by claiming many
samples; only contributions with ``weight > 0`` take part. Holder masks are honoured: a
coordinate's statistic is taken over the devices that hold it; coordinates nobody holds keep their
base value. ``num_batches_tracked`` counters keep their base value, as in the mean rules.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from fedhet.core.aggregate import SKIP_SUFFIXES, Contribution

#: Default ``outlier-factor``: an update more than 10x the round's median norm is dropped.
DEFAULT_OUTLIER_FACTOR = 10.0
#: Default share trimmed at each end by ``trimmed-mean``.
DEFAULT_TRIM_FRACTION = 0.2
#: Norms below this count as "no update" when taking the median.
_TINY = 1e-12


def cap_examples(reported: int, declared: int | None, ceiling: int = 10**9) -> int:
    """``min(reported, declared, ceiling)``, never negative.

    Parameters
    ----------
    reported : int
        ``num-examples`` in a train reply.
    declared : int or None
        The training-set size the device declared when it registered (``None``: unknown).
    ceiling : int
        Absolute cap when nothing was declared.
    """
    cap = ceiling if declared is None else min(int(declared), ceiling)
    return max(0, min(int(reported), cap))


def _floating(name: str, ref: np.ndarray) -> bool:
    return not name.endswith(SKIP_SUFFIXES) and np.issubdtype(np.asarray(ref).dtype, np.floating)


def update_norm(contrib: Contribution, base: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``contrib - base`` over the floating tensors (and coordinates) it holds.

    Returns ``inf`` if the update is not finite (it overflows or holds NaN/Inf).
    """
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for name, ref in base.items():
            if name not in contrib.tensors or not _floating(name, ref):
                continue
            x = np.asarray(ref, dtype=np.float64)
            diff = np.asarray(contrib.tensors[name], dtype=np.float64) - x
            held = contrib.holder_mask(name, x.shape)
            total += float(np.sum(np.square(np.where(held, diff, 0.0))))
    return math.sqrt(total) if math.isfinite(total) else math.inf


def norm_outliers(
    norms: Mapping[Hashable, float], factor: float = DEFAULT_OUTLIER_FACTOR
) -> dict[Hashable, str]:
    """Keys whose update norm is far outside the round's others, with the reason.

    The reference is the *lower* median of the finite norms (for two updates: the smaller one),
    so a single huge update cannot raise the reference it is compared with. An update is an
    outlier when its norm is not finite or exceeds ``factor`` × that median. ``factor <= 0``
    disables the norm test (non-finite norms are still reported). When the median is ~0 (most
    devices sent no change) only non-finite norms are reported.

    Examples
    --------
    >>> norm_outliers({"a": 1.0, "b": 2.0, "c": 50.0}, factor=10)
    {'c': 'update norm 50 > 10 x median 2'}
    """
    out: dict[Hashable, str] = {}
    finite = sorted(v for v in norms.values() if math.isfinite(v))
    for key, v in norms.items():
        if not math.isfinite(v):
            out[key] = "update norm is not finite"
    if factor <= 0 or not finite:
        return out
    median = finite[(len(finite) - 1) // 2]
    if median <= _TINY:
        return out
    for key, v in norms.items():
        if math.isfinite(v) and v > factor * median:
            out[key] = f"update norm {v:.3g} > {factor:g} x median {median:.3g}"
    return out


def _stack(
    contribs: Sequence[Contribution], name: str, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, held)``: (n, *shape) float64 values with NaN where not held, and hold counts."""
    values = np.full((len(contribs), *x.shape), np.nan, dtype=np.float64)
    for i, c in enumerate(contribs):
        if name in c.tensors:
            held = c.holder_mask(name, x.shape)
            values[i] = np.where(held, np.asarray(c.tensors[name], dtype=np.float64), np.nan)
    return values, np.sum(~np.isnan(values), axis=0)


def _trimmed(
    contribs: Sequence[Contribution],
    base: Mapping[str, np.ndarray],
    trim_of: object,
    server_lr: float,
) -> dict[str, np.ndarray]:
    active = [c for c in contribs if c.weight > 0]
    out: dict[str, np.ndarray] = {}
    for name, ref in base.items():
        x = np.asarray(ref)
        if not _floating(name, x) or not active:
            out[name] = np.array(x, copy=True)
            continue
        values, h = _stack(active, name, x)
        ordered = np.sort(values, axis=0)  # NaN (not held) sort last
        k = trim_of(h)  # type: ignore[operator]
        pos = np.arange(len(active)).reshape((-1,) + (1,) * x.ndim)
        keep = (pos >= k) & (pos < h - k)
        count = keep.sum(axis=0)
        total = np.where(keep, np.nan_to_num(ordered), 0.0).sum(axis=0)
        stat = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        xf = x.astype(np.float64)
        new = np.where(count > 0, xf + server_lr * (stat - xf), xf)
        out[name] = new.astype(x.dtype)
    return out


def trimmed_mean(
    contribs: Sequence[Contribution],
    base: Mapping[str, np.ndarray],
    *,
    trim: float = DEFAULT_TRIM_FRACTION,
    server_lr: float = 1.0,
) -> dict[str, np.ndarray]:
    """Coordinate-wise β-trimmed mean (arXiv:1803.01498 §4, eq. 5), unweighted.

    For each coordinate held by ``h`` devices, the ``k = floor(trim·h)`` largest and smallest values
    are removed and the rest averaged; ``k`` is lowered so that at least one value remains. Then
    ``x ← x + server_lr · (trimmed − x)``.

    Parameters
    ----------
    contribs : Sequence[Contribution]
        Absolute tensors per device; weights are ignored except that weight 0 excludes.
    base : Mapping[str, np.ndarray]
        The current global tensors.
    trim : float
        β in [0, 0.5): share removed at each end.
    server_lr : float
        η_g.
    """
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")

    def k_of(h: np.ndarray) -> np.ndarray:
        return np.minimum(np.floor(trim * h), np.maximum((h - 1) // 2, 0))

    return _trimmed(contribs, base, k_of, server_lr)


def coordinate_median(
    contribs: Sequence[Contribution], base: Mapping[str, np.ndarray], *, server_lr: float = 1.0
) -> dict[str, np.ndarray]:
    """Coordinate-wise median (arXiv:1803.01498 §3, eq. 4), unweighted.

    With an even number of holders the two middle values are averaged. Then
    ``x ← x + server_lr · (median − x)``.
    """
    return _trimmed(contribs, base, lambda h: np.maximum((h - 1) // 2, 0), server_lr)


def robust_aggregate(
    rule: str,
    contribs: Sequence[Contribution],
    base: Mapping[str, np.ndarray],
    *,
    trim: float = DEFAULT_TRIM_FRACTION,
    server_lr: float = 1.0,
) -> dict[str, np.ndarray]:
    """Dispatch ``aggregation = trimmed-mean | median`` (``mean`` is the method's own rule)."""
    if rule == "trimmed-mean":
        return trimmed_mean(contribs, base, trim=trim, server_lr=server_lr)
    if rule == "median":
        return coordinate_median(contribs, base, server_lr=server_lr)
    raise ValueError(f"unknown robust aggregation rule {rule!r}; use trimmed-mean or median")


def non_finite(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of floating tensors holding NaN or Inf."""
    return [
        k
        for k, v in arrays.items()
        if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()
    ]


def finite_or_rollback(
    new: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``(state, bad)``: ``new`` if every floating tensor is finite, else ``previous`` (copied).

    ``bad`` names the non-finite tensors (empty when ``new`` is kept); the caller logs it.
    """
    bad = non_finite(new)
    if bad:
        return {k: np.array(v, copy=True) for k, v in previous.items()}, bad
    return dict(new), []
