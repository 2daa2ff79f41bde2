"""Aggregation rules (METHODS.md B2).

Every rule takes the current global tensors ``base`` and, per contributing device, its tensors, a
weight and (for masked rules) the mask of coordinates it holds. Tensors are NumPy arrays keyed by
state-dict name. ``num_batches_tracked`` counters are never averaged: they keep the base value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SKIP_SUFFIXES = ("num_batches_tracked",)


@dataclass
class Contribution:
    """One device's upload, as absolute tensors (uploads of differences are converted first).

    ``masks`` maps tensor name → boolean holder mask (same shape) or ``True`` for the whole tensor;
    a tensor missing from ``tensors`` is not held.
    """

    tensors: Mapping[str, np.ndarray]
    weight: float = 1.0
    masks: Mapping[str, np.ndarray | bool] = field(default_factory=dict)

    def holder_mask(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean mask of the coordinates of ``name`` this device holds."""
        if name not in self.tensors:
            return np.zeros(shape, dtype=bool)
        m = self.masks.get(name, True)
        if isinstance(m, bool | np.bool_):
            return np.full(shape, bool(m))
        return np.asarray(m, dtype=bool)


def _skip(name: str) -> bool:
    return name.endswith(SKIP_SUFFIXES)


class WeightedSum:
    """Running Σ_i w_i x_i and Σ_i w_i, fed one contribution at a time (``plain`` rule, B2).

    The streaming form of :func:`weighted_mean`: the server adds each device's tensors as its reply
    is read and can release them at once, so aggregating N replies holds one float64 accumulator
    per tensor (twice the float32 model) instead of N models. Contributions added in the order
    :func:`weighted_mean` would see them give bit-identical results (the same float64 operations
    per coordinate).

    Parameters
    ----------
    base : Mapping[str, np.ndarray]
        The current global tensors: names, shapes and output dtypes; ``num_batches_tracked``
        counters keep their base value.
    """

    def __init__(self, base: Mapping[str, np.ndarray]) -> None:
        self.base = base
        self.total = 0.0
        self.count = 0
        self._acc: dict[str, np.ndarray] = {}

    def check(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError unless ``tensors`` holds every base tensor with its shape.

        Called by :meth:`add` before anything is added, so a bad contribution changes nothing.
        """
        for name, ref in self.base.items():
            if _skip(name):
                continue
            if name not in tensors:
                raise ValueError(f"plain aggregation: contribution lacks tensor {name!r}")
            if np.shape(tensors[name]) != np.shape(ref):
                raise ValueError(
                    f"plain aggregation: tensor {name!r} has shape {np.shape(tensors[name])}, "
                    f"expected {np.shape(ref)}"
                )

    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        """Add ``weight`` · ``tensors`` (checked first: see :meth:`check`).

        Raises
        ------
        ValueError
            If a tensor is missing or has the wrong shape, or ``weight`` is negative or not finite.
        """
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"plain aggregation: invalid weight {weight!r}")
        self.check(tensors)
        for name, ref in self.base.items():
            if _skip(name):
                continue
            acc = self._acc.get(name)
            if acc is None:
                acc = self._acc[name] = np.zeros(np.shape(ref), dtype=np.float64)
            acc += weight * np.asarray(tensors[name], dtype=np.float64)
        self.total += float(weight)
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        """Σ w_i x_i / Σ w_i per tensor, in the base dtypes.

        Raises
        ------
        ValueError
            If nothing was added or the weights sum to zero.
        """
        if not self.count:
            raise ValueError("weighted_mean needs at least one contribution")
        if self.total <= 0:
            raise ValueError("weighted_mean: contribution weights sum to zero")
        out: dict[str, np.ndarray] = {}
        for name, ref in self.base.items():
            if _skip(name):
                out[name] = np.array(ref, copy=True)
            else:
                out[name] = (self._acc[name] / self.total).astype(np.asarray(ref).dtype)
        return out


def weighted_mean(
    contribs: Sequence[Contribution], base: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``plain``: x ← Σ_i w_i x_i / Σ_i w_i; every contributor must hold every tensor.

    The one weighted average of fedhet: FedAvg's sample-weighted mean, FedIT's adapter and head
    means and FL-TAC's cluster means all call it (through :class:`WeightedSum`, which the server
    also feeds reply by reply). Zero weights follow one rule: a contribution of weight 0 adds
    nothing, and a total weight of 0 is an error, never a silent switch to equal weights. Callers
    leave out contributions without examples and decide what happens when none is left (the
    strategies keep the previous global value).

    Raises
    ------
    ValueError
        If there is no contribution, the weights sum to zero, or a contributor lacks a tensor.
    """
    if not contribs:
        raise ValueError("weighted_mean needs at least one contribution")
    acc = WeightedSum(base)
    for i, c in enumerate(contribs):
        try:
            acc.add(c.tensors, c.weight)
        except ValueError as exc:
            raise ValueError(f"{exc} (contribution {i})") from None
    return acc.result()


class MaskedSum:
    """Running numerator Σ_{i: j∈H_i} w_i u_ij and holder weight Σ_{i: j∈H_i} w_i per coordinate.

    The streaming form of :func:`masked_mean` (B2 ``holders`` / ``zero-fill``): contributions are
    added one at a time and can be released at once; the state is two float64 arrays per tensor.
    Contributions added in :func:`masked_mean`'s order give bit-identical results.

    Parameters
    ----------
    base : Mapping[str, np.ndarray]
        The current global tensors x (updates are u_i = x_i − x).
    """

    def __init__(self, base: Mapping[str, np.ndarray]) -> None:
        self.base = base
        self.total = 0.0
        self.count = 0
        self._num: dict[str, np.ndarray] = {}
        self._den: dict[str, np.ndarray] = {}

    def check(self, c: Contribution) -> None:
        """Raise ValueError if ``c`` cannot be added (see :meth:`add`)."""
        if not np.isfinite(c.weight) or c.weight < 0:
            raise ValueError(f"masked aggregation: invalid weight {c.weight!r}")
        for name, t in c.tensors.items():  # names the base lacks are ignored, as ever
            if name in self.base and np.shape(t) != np.shape(self.base[name]):
                raise ValueError(
                    f"masked aggregation: tensor {name!r} has shape {np.shape(t)}, "
                    f"expected {np.shape(self.base[name])}"
                )

    def add(self, c: Contribution) -> None:
        """Add one contribution (checked first: nothing is added if it is unusable).

        Raises
        ------
        ValueError
            If a base tensor has the wrong shape, or the weight is negative or not finite.
        """
        self.check(c)
        for name, ref in self.base.items():
            if _skip(name) or name not in c.tensors:
                continue
            x = np.asarray(ref)
            if name not in self._num:
                self._num[name] = np.zeros(x.shape, dtype=np.float64)
                self._den[name] = np.zeros(x.shape, dtype=np.float64)
            held = c.holder_mask(name, x.shape)
            upd = np.asarray(c.tensors[name], dtype=np.float64) - x
            self._num[name] += np.where(held, c.weight * upd, 0.0)
            self._den[name] += np.where(held, c.weight, 0.0)
        self.total += float(c.weight)
        self.count += 1

    def result(self, *, mode: str = "holders", server_lr: float = 1.0) -> dict[str, np.ndarray]:
        """x + η_g · step per tensor, in the base dtypes (see :func:`masked_mean`)."""
        if mode not in ("holders", "zero-fill"):
            raise ValueError(f"unknown masked_mean mode {mode!r}; use holders or zero-fill")
        out: dict[str, np.ndarray] = {}
        for name, ref in self.base.items():
            x = np.asarray(ref)
            if _skip(name) or not self.count:
                out[name] = np.array(x, copy=True)
                continue
            num = self._num.get(name, np.zeros(x.shape, dtype=np.float64))
            den = self._den.get(name, np.zeros(x.shape, dtype=np.float64))
            if mode == "holders":
                step = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
            else:
                step = num / self.total if self.total > 0 else np.zeros_like(num)
            out[name] = (x + server_lr * step).astype(x.dtype)
        return out


def masked_mean(
    contribs: Sequence[Contribution],
    base: Mapping[str, np.ndarray],
    *,
    mode: str = "holders",
    server_lr: float = 1.0,
) -> dict[str, np.ndarray]:
    """Masked averaging of updates u_i = x_i − x (METHODS.md B2), through :class:`MaskedSum`.

    ``holders``: x_j ← x_j + η_g · Σ_{i: j∈H_i} w_i u_ij / Σ_{i: j∈H_i} w_i; coordinates nobody holds
    stay unchanged (FIARSE, HeteroFL, FedRolex).

    ``zero-fill``: x_j ← x_j + η_g · Σ_{i: j∈H_i} w_i u_ij / Σ_{i∈S} w_i; a device that did not train
    a coordinate counts as a zero update (CoCoFL: w_l ← w_l + (1/|S|) Σ_{i∈S_l}(w_{l,i} − w_l)).
    """
    if mode not in ("holders", "zero-fill"):
        raise ValueError(f"unknown masked_mean mode {mode!r}; use holders or zero-fill")
    acc = MaskedSum(base)
    for c in contribs:
        acc.add(c)
    return acc.result(mode=mode, server_lr=server_lr)
