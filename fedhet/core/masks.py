"""Magnitude thresholds, layer budgets and FIARSE's surrogate-gradient mask.

Building blocks B3 and B4 of ``specs/METHODS.md`` and the device side of FIARSE (§7; "FIARSE:
Model-Heterogeneous Federated Learning via Importance-Aware Submodel Extraction", NeurIPS 2024,
arXiv 2407.19389). Pure PyTorch; no Flower import.

A submodel of size γ is the set of coordinates whose magnitude reaches a threshold τ. The server
computes τ once per device and round (:func:`magnitude_thresholds`); the device recomputes the mask
``1[|x| >= τ]`` at every forward pass (:func:`apply_submodel_parametrization`) and trains through
the biased surrogate gradient of :class:`SurrogateMask`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fedhet.core.sgd import SGD

logger = logging.getLogger(__name__)

SURROGATES: tuple[str, ...] = ("biased", "ste")
SCOPES: tuple[str, ...] = ("global", "groups")

_BUFFER_SUFFIXES: tuple[str, ...] = ("running_mean", "running_var", "num_batches_tracked")


def _flat_scores(scores: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(scores, Tensor):
        return scores.detach().reshape(-1)
    parts = [s.detach().reshape(-1) for s in scores]
    if not parts:
        raise ValueError("topk_threshold needs at least one score tensor")
    return torch.cat(parts)


def _keep_count(gamma: float, d: int) -> int:
    # round() absorbs binary error such as 0.29 * 100 = 28.999999999999996 before flooring.
    return max(1, math.floor(round(gamma * d, 9)))


def topk_threshold(scores: Tensor | Sequence[Tensor], gamma: float) -> float:
    """Threshold that keeps the ``γ`` fraction of largest scores.

    k = max(1, ⌊γ·d⌋) and τ = the k-th largest score (METHODS.md B3). The mask is ``score >= τ``,
    so ties at τ are all kept and the realised density can exceed γ. ``γ >= 1`` gives τ = 0.

    Parameters
    ----------
    scores : Tensor or sequence of Tensor
        Scores (for FIARSE, magnitudes ``|x|``); several tensors are pooled into one ranking.
    gamma : float
        Fraction to keep, ``γ > 0``.

    Returns
    -------
    float
        The threshold τ.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if gamma >= 1:
        return 0.0
    flat = _flat_scores(scores)
    d = flat.numel()
    if d == 0:
        raise ValueError("topk_threshold got no scores")
    k = _keep_count(gamma, d)
    # k-th largest = (d - k + 1)-th smallest.
    return float(torch.kthvalue(flat, d - k + 1).values.item())


def topk_mask(scores: Tensor | Sequence[Tensor], gamma: float) -> Tensor:
    """Boolean flat mask of exactly k = max(1, ⌊γ·d⌋) entries with the largest scores.

    τ is :func:`topk_threshold`'s k-th largest score (METHODS.md B3); every score above τ is kept
    and ties at τ are kept in flat (model) order until k entries are kept, so the count never
    exceeds the budget even when many scores tie (e.g. at zero). ``γ >= 1`` keeps everything.
    Several tensors are pooled into one ranking, concatenated in the given order.

    Returns
    -------
    Tensor
        ``bool`` vector of the d pooled entries.
    """
    flat = _flat_scores(scores)
    d = flat.numel()
    if d == 0:
        raise ValueError("topk_mask got no scores")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("topk_mask got non-finite scores")
    if gamma >= 1:
        return torch.ones(d, dtype=torch.bool)
    k = _keep_count(gamma, d)
    tau = topk_threshold(flat, gamma)
    above = flat > tau
    ties = torch.nonzero(flat == tau).reshape(-1)[: k - int(above.sum())]
    mask = above.clone()
    mask[ties] = True
    return mask


def _default_groups(maskable: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in maskable:
        groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    return groups


def effective_gamma(gamma: float, d_masked: int, d_dense: int) -> float:
    """Keep fraction of the maskable tensors so that the whole model keeps ``γ``.

    γ' = (γ·d − d_dense) / d_masked with d = d_masked + d_dense, clipped to (0, 1] (METHODS.md
    §7.2 step 2, our choice: every parameter counts towards the budget). When the dense tensors
    alone exceed the budget, γ' is the smallest positive value, so each threshold keeps one entry.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if d_masked <= 0:
        raise ValueError("no maskable parameters")
    raw = (gamma * (d_masked + d_dense) - d_dense) / d_masked
    if raw <= 0:
        logger.warning(
            "budget gamma=%.4g is below the dense share %.4g; keeping one entry per threshold",
            gamma,
            d_dense / (d_masked + d_dense),
        )
        return 1.0 / (d_masked + 1)
    return min(1.0, raw)


def magnitude_thresholds(
    state: dict[str, Tensor],
    gamma: float,
    maskable: Sequence[str],
    scope: str = "global",
    groups: dict[str, list[str]] | None = None,
    dense: Sequence[str] = (),
) -> dict[str, float]:
    """FIARSE thresholds τ on parameter magnitudes for a submodel of size ``γ``.

    Maskable tensors are ranked by ``|x|`` (METHODS.md B3; FIARSE, arXiv 2407.19389, §3) at the
    rate γ' of :func:`effective_gamma`, so the kept maskable entries plus the dense tensors make up
    γ of all parameters (METHODS.md §7.2 step 2).

    Parameters
    ----------
    state : dict[str, Tensor]
        The global model's state dict.
    gamma : float
        Submodel size as a fraction of all parameters in ``maskable`` and ``dense``.
    maskable : sequence of str
        Tensors that may be thresholded (conv/linear weights and biases; never norm layers).
    scope : {"global", "groups"}
        ``global``: one τ over all maskable tensors; ``groups``: one τ per group, each group
        keeping the fraction γ' of its own entries.
    groups : dict[str, list[str]], optional
        Group name -> tensor names, for ``scope="groups"``; must partition ``maskable``. Default:
        one group per module (``conv2.weight`` and ``conv2.bias`` form group ``conv2``).
    dense : sequence of str
        Tensors sent whole (τ = 0). They count towards the budget. Tensors of ``state`` in neither
        list (buffers) are ignored.

    Returns
    -------
    dict[str, float]
        τ for every maskable and dense tensor.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    maskable = list(maskable)
    dense = list(dense)
    if not maskable:
        raise ValueError("magnitude_thresholds needs at least one maskable tensor")
    overlap = set(maskable) & set(dense)
    if overlap:
        raise ValueError(f"tensors both maskable and dense: {sorted(overlap)}")
    missing = [n for n in (*maskable, *dense) if n not in state]
    if missing:
        raise KeyError(f"tensors not in state: {missing}")

    d_masked = sum(state[n].numel() for n in maskable)
    d_dense = sum(state[n].numel() for n in dense)
    gamma_eff = effective_gamma(gamma, d_masked, d_dense)
    logger.debug("gamma=%.4g -> gamma'=%.6g over %d maskable entries", gamma, gamma_eff, d_masked)

    thresholds: dict[str, float] = {}
    if scope == "global":
        tau = topk_threshold([state[n].abs() for n in maskable], gamma_eff)
        thresholds.update(dict.fromkeys(maskable, tau))
    else:
        groups = _default_groups(maskable) if groups is None else groups
        members = [n for names in groups.values() for n in names]
        if sorted(members) != sorted(maskable):
            raise ValueError(
                "groups must partition the maskable tensors: "
                f"groups hold {sorted(members)}, maskable are {sorted(maskable)}"
            )
        for names in groups.values():
            tau = topk_threshold([state[n].abs() for n in names], gamma_eff)
            thresholds.update(dict.fromkeys(names, tau))
    thresholds.update(dict.fromkeys(dense, 0.0))
    return thresholds


def masks_from_thresholds(
    state: dict[str, Tensor], thresholds: dict[str, float]
) -> dict[str, Tensor]:
    """Boolean masks ``1[|x| >= τ]`` for every tensor named in ``thresholds``.

    Ties at τ are kept (METHODS.md B3, §7.4); τ = 0 keeps every entry, zeros included.
    """
    return {name: state[name].detach().abs() >= tau for name, tau in thresholds.items()}


def _counts_as_parameter(name: str, tensor: Tensor) -> bool:
    return tensor.is_floating_point() and not name.endswith(_BUFFER_SUFFIXES)


def realised_density(masks: dict[str, Tensor], state: dict[str, Tensor]) -> float:
    """Fraction of the model's parameters a device holds.

    Kept entries over all floating-point tensors of ``state`` (norm statistics excluded); a tensor
    of ``state`` without a mask counts as held whole. Ties at τ can make this exceed γ, which is
    why METHODS.md §7.4 asks for it to be logged.
    """
    kept = 0
    total = 0
    for name, tensor in state.items():
        if not _counts_as_parameter(name, tensor):
            continue
        total += tensor.numel()
        kept += int(masks[name].sum().item()) if name in masks else tensor.numel()
    if total == 0:
        raise ValueError("state has no parameters")
    return kept / total


class SurrogateMask(torch.autograd.Function):
    """x ⊙ 1[|x| >= τ] with FIARSE's threshold-controlled biased gradient.

    Forward: x̃ = x ⊙ m, m = 1[|x| >= τ]. Backward (METHODS.md B4; FIARSE, arXiv 2407.19389,
    §3.2): ∂L/∂x = ∂L/∂x̃ ⊙ m ⊙ (1 + 2τ|x|/(|x| + τ)²), the chain rule through x ⊙ s(x) with the
    smooth surrogate s(x) = (|x| − τ)/(|x| + τ) standing in for m's derivative and m for its value.
    The factor is 1.5 at |x| = τ, tends to 1 for large |x|, is exactly 1 for τ = 0; masked-out
    entries get zero gradient. ``surrogate="ste"`` uses factor 1 (straight-through ablation).

    Call as ``SurrogateMask.apply(x, tau, surrogate)``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, tau: float, surrogate: str = "biased") -> Tensor:
        """x ⊙ 1[|x| >= τ]; saves x and the mask for :meth:`backward`."""
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        mask = x.abs() >= tau
        ctx.save_for_backward(x, mask)
        ctx.tau = float(tau)
        ctx.surrogate = surrogate
        return x * mask

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, None, None]:
        """∂L/∂x̃ ⊙ m, times 1 + 2τ|x|/(|x| + τ)² for the biased surrogate (METHODS.md B4)."""
        (grad,) = grad_outputs
        x, mask = ctx.saved_tensors
        grad_x = grad * mask
        tau: float = ctx.tau
        if ctx.surrogate == "biased" and tau > 0:
            ax = x.abs()
            grad_x = grad_x * (1 + 2 * tau * ax / (ax + tau) ** 2)
        return grad_x, None, None


def masked_weight(x: Tensor, tau: float, surrogate: str = "biased") -> Tensor:
    """Apply :class:`SurrogateMask` to ``x`` with threshold ``tau`` (METHODS.md B4)."""
    out = SurrogateMask.apply(x, tau, surrogate)
    assert isinstance(out, Tensor)
    return out


def select_layers_by_budget(
    scores: dict[str, float], sizes: dict[str, int], rho: float
) -> list[str]:
    """Greedy layer selection under a size budget (METHODS.md B3).

    Layers are visited by descending score (equal scores in the order of ``scores``); a layer is
    added when the running total stays ≤ ρ·Σ sizes, otherwise skipped and the visit continues.

    Parameters
    ----------
    scores : dict[str, float]
        Layer -> importance score.
    sizes : dict[str, int]
        Layer -> parameter count; must have the same keys as ``scores``.
    rho : float
        Budget as a fraction of the total size.

    Returns
    -------
    list[str]
        Selected layers in visiting order (descending score).
    """
    if set(scores) != set(sizes):
        raise ValueError("scores and sizes must name the same layers")
    budget = rho * sum(sizes.values())
    order = sorted(scores, key=lambda name: -scores[name])
    chosen: list[str] = []
    total = 0
    for name in order:
        if total + sizes[name] <= budget * (1 + 1e-12):
            chosen.append(name)
            total += sizes[name]
    return chosen


class _MagnitudeMask(nn.Module):
    """Parametrization running a tensor through :func:`masked_weight` at every forward."""

    def __init__(self, tau: float, surrogate: str) -> None:
        super().__init__()
        self.tau = tau
        self.surrogate = surrogate

    def forward(self, x: Tensor) -> Tensor:
        return masked_weight(x, self.tau, self.surrogate)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, attr = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), attr


def apply_submodel_parametrization(
    model: nn.Module, thresholds: dict[str, float], surrogate: str = "biased"
) -> None:
    """Make every thresholded parameter pass through :func:`masked_weight` at every forward.

    Uses ``torch.nn.utils.parametrize``; the trainable tensor is the unmasked one. Tensors with
    τ = 0 are left plain: the mask keeps everything and the factor is exactly 1 (METHODS.md B4), so
    the result is identical and the forward cheaper.
    """
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    for name, tau in thresholds.items():
        if tau <= 0:
            continue
        module, attr = _owner(model, name)
        if parametrize.is_parametrized(module, attr):
            raise ValueError(f"{name} is already parametrized")
        parametrize.register_parametrization(module, attr, _MagnitudeMask(tau, surrogate))


def remove_submodel_parametrization(model: nn.Module) -> None:
    """Undo :func:`apply_submodel_parametrization`: plain parameters holding the unmasked values."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for attr in list(module.parametrizations.keys()):  # type: ignore[union-attr, operator]
            if any(isinstance(p, _MagnitudeMask) for p in module.parametrizations[attr]):  # type: ignore[index]
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)


def train_submodel(
    model: nn.Module,
    thresholds: dict[str, float],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    lr: float,
    surrogate: str = "biased",
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """FIARSE local training: one SGD step per batch on f(x ⊙ m(x)) (METHODS.md §7.2 step 4).

    The model should hold the received submodel (entries outside the mask set to 0, as the device
    scatters kept values into zeros). The mask ``1[|x| >= τ]`` is recomputed at every forward, so
    a weight that falls below τ stops receiving gradient for the rest of the round and a weight
    outside the mask never enters. A fresh SGD optimiser (no momentum, no weight decay) is used.

    Parameters
    ----------
    model : nn.Module
        Model to train in place.
    thresholds : dict[str, float]
        τ per tensor, as from :func:`magnitude_thresholds` (dense tensors τ = 0).
    batches : iterable of (inputs, labels)
        One SGD step per batch, cross-entropy loss.
    lr : float
        Learning rate.
    surrogate : {"biased", "ste"}
        Gradient of the mask (METHODS.md B4).

    Returns
    -------
    state : dict[str, Tensor]
        Plain state dict after training (unmasked values; detached clones).
    metrics : dict[str, float]
        ``train-loss`` (sample-weighted mean over steps) and ``train-seconds``.
    """
    start = time.perf_counter()
    apply_submodel_parametrization(model, thresholds, surrogate)
    loss_sum = 0.0
    n_samples = 0
    try:
        model.train()
        optimizer = SGD(model.parameters(), lr=lr)  # no torch.optim: see fedhet.core.sgd
        for inputs, labels in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.item()) * labels.shape[0]
            n_samples += int(labels.shape[0])
    finally:
        remove_submodel_parametrization(model)
    if n_samples == 0:
        raise ValueError("train_submodel got no batches")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {
        "train-loss": loss_sum / n_samples,
        "train-seconds": time.perf_counter() - start,
    }


def cnn_s_mask_spec() -> tuple[list[str], list[str], dict[str, list[str]]]:
    """FIARSE mask layout of ``cnn_s``: ``(maskable, dense, groups)``.

    METHODS.md §7.4 last row (our choice for small CNNs): first conv and classifier dense, one τ
    per other layer (conv2, fc1), i.e. ``fiarse.dense=first,last`` with ``fiarse.scope=groups``.
    """
    maskable = ["conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"]
    dense = ["conv1.weight", "conv1.bias", "fc2.weight", "fc2.bias"]
    groups = {"conv2": ["conv2.weight", "conv2.bias"], "fc1": ["fc1.weight", "fc1.bias"]}
    return maskable, dense, groups


def submodel_mask_spec(
    model: nn.Module, dense_first_last: bool = True
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """FIARSE mask layout of any conv/linear model: ``(maskable, dense, groups)``.

    Maskable: weights and biases of ``nn.Conv*d`` and ``nn.Linear`` modules (METHODS.md §7.2);
    never norm layers, whose parameters are dense. With ``dense_first_last`` the first and last
    conv/linear layers are dense too (METHODS.md §7.4 last row, ``fiarse.dense=first,last``).
    Groups: one per maskable module. Buffers (running statistics) are in neither list. For
    ``cnn_s`` this equals :func:`cnn_s_mask_spec`.
    """
    layers = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
    ]
    if not layers:
        raise ValueError("model has no conv or linear layers to mask")
    dense_layers = {layers[0][0], layers[-1][0]} if dense_first_last else set()
    maskable: list[str] = []
    groups: dict[str, list[str]] = {}
    for name, mod in layers:
        if name in dense_layers:
            continue
        names = [f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False)]
        maskable.extend(names)
        groups[name] = names
    dense = [n for n, _ in model.named_parameters() if n not in set(maskable)]
    if not maskable:
        raise ValueError("every layer is dense; nothing to mask")
    return maskable, dense, groups


__all__ = [
    "SCOPES",
    "SURROGATES",
    "SurrogateMask",
    "apply_submodel_parametrization",
    "cnn_s_mask_spec",
    "effective_gamma",
    "magnitude_thresholds",
    "masked_weight",
    "masks_from_thresholds",
    "realised_density",
    "remove_submodel_parametrization",
    "select_layers_by_budget",
    "submodel_mask_spec",
    "topk_mask",
    "topk_threshold",
    "train_submodel",
]
