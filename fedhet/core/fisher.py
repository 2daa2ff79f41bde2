"""Fisher information, Taylor saliency, quadratic penalties and probe signatures (no Flower import).

Building blocks B5, B6 (and the probe of GENE-FL) of ``specs/METHODS.md``; GENE-FL, "Gene-Driven
Parameter-Efficient Dynamic Federated Learning", arXiv 2504.14628, reconstructed in METHODS.md §3.2.

* :func:`diag_fisher` — the empirical Fisher diagonal F_j = mean over M mini-batches of
  (∂CE/∂θ_j)² at the given weights, in eval mode; ``per_sample=True`` averages per-sample squared
  gradients computed with ``torch.func`` (``vmap`` over ``grad``) instead.
* :func:`normalise_fisher` — F̂ = F / mean(F over the scope), so penalty strengths are scale-free.
* :func:`taylor_saliency` and :func:`layer_scores` — s_j = mean over B batches of |θ_j·∂CE/∂θ_j|;
  the score of a layer is the mean of s_j over its parameters (importance per parameter).
* :func:`quad_penalty` — Σ_j mask_j·weight_j·(θ_j − ref_j)² (proximal, per-layer and Fisher forms).
* :func:`layer_tie_weights`, :func:`fisher_masks` — β_l and the top-q% Fisher mask of §3.2 client
  step 3.
* :func:`layer_of`, :func:`layer_keys`, :func:`layer_sizes` — what a "layer" is: a parameterised
  module with its norm layer (``units.<i>`` for models that declare units).
* :func:`aggregate_layer_scores` — the server's rule that merges client score vectors.
* :func:`probe_signature` — the identical probe every prober runs (§3.2 client step 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fedhet.core.masks import select_layers_by_budget, topk_threshold

Batches = Iterable[tuple[Tensor, Tensor]]
SKIPPED_BUFFERS = ("num_batches_tracked",)


# --- layers ------------------------------------------------------------------------------------
def layer_of(name: str) -> str:
    """The layer a state-dict entry belongs to.

    Models that declare ``units`` (``cnn_b``, ``resnet_s``) group by unit: ``units.3.1.weight`` →
    ``units.3`` (a conv with its BatchNorm). Other models group by the owning module:
    ``fc1.weight`` → ``fc1``.
    """
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "units" and parts[1].isdigit():
        return f"units.{parts[1]}"
    return ".".join(parts[:-1]) or name


def layer_keys(
    state: Mapping[str, Tensor | np.ndarray], params: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Layer → its state-dict keys, in state order, without ``num_batches_tracked``.

    Only layers with at least one parameter are returned (``params``: the parameter names; default:
    every key counts). Buffers (BN running statistics) follow their layer.
    """
    param_set = set(state if params is None else params)
    out: dict[str, list[str]] = {}
    for name in state:
        if name.endswith(SKIPPED_BUFFERS):
            continue
        out.setdefault(layer_of(name), []).append(name)
    return {layer: keys for layer, keys in out.items() if any(k in param_set for k in keys)}


def layer_sizes(state: Mapping[str, Tensor | np.ndarray], keys: Mapping[str, list[str]]) -> dict:
    """Layer → number of values that travel with it (parameters and float buffers)."""
    return {layer: int(sum(int(np.prod(state[k].shape)) for k in ks)) for layer, ks in keys.items()}


# --- Fisher and Taylor (B5) -----------------------------------------------------------------------
def _named(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    if names is None:
        return {k: p for k, p in params.items() if p.requires_grad}
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"not parameters of the model: {missing[:5]}")
    return {n: params[n] for n in names}


def _batch_grads(model: nn.Module, params: dict[str, nn.Parameter], x: Tensor, y: Tensor) -> list:
    loss = nn.functional.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, list(params.values()), allow_unused=True))


def diag_fisher(
    model: nn.Module,
    batches: Batches,
    names: Sequence[str] | None = None,
    *,
    per_sample: bool = False,
) -> dict[str, Tensor]:
    """Empirical Fisher diagonal at the model's current weights (METHODS.md B5).

    ``F_j = (1/M)·Σ_b (∂CE_b/∂θ_j)²`` over the M given mini-batches (CE of the true label, batch
    mean), computed in eval mode so BatchNorm uses its running statistics. With ``per_sample`` the
    squared gradient is taken per sample (``torch.func.vmap`` of ``torch.func.grad``) and averaged
    over all samples: the textbook empirical Fisher, costlier per batch.

    Parameters
    ----------
    model : nn.Module
        Evaluated at its current weights; its train/eval mode is restored afterwards.
    batches : iterable of (x, y)
        The M mini-batches.
    names : sequence of str, optional
        Parameters to compute F for (the scope, e.g. the learnGene layers); default all trainable.
    per_sample : bool
        Per-sample squared gradients via ``torch.func`` instead of squared batch gradients.

    Returns
    -------
    dict[str, Tensor]
        F per parameter name, same shapes, float32; all zeros when no batch was given.
    """
    params = _named(model, names)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        if per_sample:
            from torch.func import functional_call, grad, vmap

            frozen = {k: v.detach() for k, v in model.named_parameters() if k not in params} | {
                k: v.detach() for k, v in model.named_buffers()
            }
            live = {k: p.detach() for k, p in params.items()}

            def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
                out = functional_call(model, (p | frozen,), (x.unsqueeze(0),))
                return nn.functional.cross_entropy(out, y.unsqueeze(0))

            per = vmap(grad(loss_one), in_dims=(None, 0, 0))
            for x, y in batches:
                grads = per(live, x, y)
                for n in fisher:
                    fisher[n] += grads[n].pow(2).sum(0)
                count += int(y.shape[0])
        else:
            for x, y in batches:
                for n, g in zip(params, _batch_grads(model, params, x, y), strict=True):
                    if g is not None:
                        fisher[n] += g.detach().pow(2)
                count += 1
    finally:
        model.train(was_training)
    if count:
        for n in fisher:
            fisher[n] /= count
    return fisher


def normalise_fisher(fisher: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """F̂ = F / mean(F over every entry of the scope) (METHODS.md B5).

    The mean of F̂ over the scope is 1, so λ_F and μ are scale-free. An all-zero F stays zero.
    """
    total = sum(float(f.sum()) for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    mean = total / count if count else 0.0
    if not mean > 0 or not math.isfinite(mean):
        return {n: torch.zeros_like(f) for n, f in fisher.items()}
    return {n: f / mean for n, f in fisher.items()}


def taylor_saliency(
    model: nn.Module, batches: Batches, names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """First-order Taylor saliency ``s_j = (1/B)·Σ_b |θ_j·∂CE_b/∂θ_j|`` (METHODS.md B5).

    Evaluated at the current weights in eval mode over the B given batches.
    """
    params = _named(model, names)
    sal = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for x, y in batches:
            for n, g in zip(params, _batch_grads(model, params, x, y), strict=True):
                if g is not None:
                    sal[n] += (params[n].detach() * g.detach()).abs()
            count += 1
    finally:
        model.train(was_training)
    if count:
        for n in sal:
            sal[n] /= count
    return sal


def layer_scores(per_param: Mapping[str, Tensor], layers: Mapping[str, Sequence[str]]) -> list:
    """Mean of a per-parameter score over each layer's parameters, in the order of ``layers``.

    Keys of a layer that are not in ``per_param`` (buffers) are ignored; a layer with none scores 0.
    """
    out: list[float] = []
    for keys in layers.values():
        vals = [per_param[k].reshape(-1) for k in keys if k in per_param]
        out.append(float(torch.cat(vals).mean()) if vals else 0.0)
    return out


# --- penalties and masks (B3, B6) ---------------------------------------------------------------
def quad_penalty(
    theta: Mapping[str, Tensor],
    ref: Mapping[str, Tensor],
    weight: Mapping[str, Tensor | float] | float = 1.0,
    mask: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``Σ_j mask_j·weight_j·(θ_j − ref_j)²`` over the names of ``ref`` (METHODS.md B6).

    ``weight`` is a scalar, or per name a scalar or a tensor (e.g. F̂); ``mask`` per name (missing
    name = all ones). Differentiable in ``theta``.
    """
    total: Tensor | None = None
    for name, r in ref.items():
        diff2 = (theta[name] - r).pow(2)
        w = weight if isinstance(weight, int | float) else weight.get(name, 0.0)
        term = diff2 * w
        if mask is not None and name in mask:
            term = term * mask[name]
        s = term.sum()
        total = s if total is None else total + s
    if total is None:
        return torch.zeros(())
    return total


def fisher_masks(fisher_hat: Mapping[str, Tensor], q: float) -> dict[str, Tensor]:
    """m_j = 1 for the top-q fraction of F̂ over the whole scope (B3 ``topk_threshold``, ties kept)."""
    if not fisher_hat:
        return {}
    tau = topk_threshold(list(fisher_hat.values()), q)
    return {n: (f >= tau).to(f.dtype) for n, f in fisher_hat.items()}


def stable_fisher_weights(
    fisher_hat: Mapping[str, Tensor], lr: float, lambda_f: float
) -> dict[str, Tensor]:
    """F̂ capped at 1/(lr·λ_F), so plain SGD on (λ_F/2)·F̂_j(θ_j − Θ_j)² never overshoots Θ_j.

    The penalty's curvature is λ_F·F̂_j; one SGD step multiplies θ_j − Θ_j by 1 − lr·λ_F·F̂_j, which
    diverges once lr·λ_F·F̂_j > 2. F̂ is normalised to mean 1 but its top-q entries (exactly those
    the mask keeps) can exceed 100, so uncapped training diverged in our runs (our choice, not
    in METHODS.md; a no-op when lr·λ_F·max F̂ ≤ 1).
    """
    if not lambda_f > 0 or not lr > 0:
        return dict(fisher_hat)
    cap = 1.0 / (lr * lambda_f)
    return {n: f.clamp(max=cap) for n, f in fisher_hat.items()}


def layer_tie_weights(
    fisher_hat: Mapping[str, Tensor], layers: Mapping[str, Sequence[str]], mu: float
) -> dict[str, float]:
    """β_l = μ·mean_{j∈l} F̂_j / max_{l'} mean_{j∈l'} F̂_j (GENE-FL §3.2 client step 3).

    Layers whose keys are not in ``fisher_hat`` are left out; all β are 0 when F̂ is all zero.
    """
    means = {}
    for layer, keys in layers.items():
        vals = [fisher_hat[k].reshape(-1) for k in keys if k in fisher_hat]
        if vals:
            means[layer] = float(torch.cat(vals).mean())
    top = max(means.values(), default=0.0)
    if not top > 0:
        return dict.fromkeys(means, 0.0)
    return {layer: mu * m / top for layer, m in means.items()}


def learngene_penalty(
    theta: Mapping[str, Tensor],
    gene: Mapping[str, Tensor],
    layers: Mapping[str, Sequence[str]],
    betas: Mapping[str, float],
    fisher_hat: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    lambda_f: float,
) -> Tensor:
    """GENE-FL's tie to the received learnGene (METHODS.md §3.2 client step 3).

    ``Σ_{l∈𝓖} β_l‖θ_l − Θ_l‖² + (λ_F/2)·Σ_{j∈𝓖} m_j F̂_j (θ_j − Θ_j)²`` over the parameters named
    in ``fisher_hat`` (buffers never enter a penalty).
    """
    total = torch.zeros(())
    for layer, keys in layers.items():
        ref = {k: gene[k] for k in keys if k in fisher_hat}
        if ref and betas.get(layer, 0.0):
            total = total + betas[layer] * quad_penalty(theta, ref)
    if lambda_f:
        ref = {k: gene[k] for k in fisher_hat}
        total = total + 0.5 * lambda_f * quad_penalty(theta, ref, fisher_hat, masks)
    return total


# --- server: merging score vectors ---------------------------------------------------------------
def aggregate_layer_scores(
    vectors: Sequence[Sequence[float]],
    how: str = "mean",
    sizes: Sequence[int] | None = None,
    rho: float = 1.0,
) -> np.ndarray:
    """Merge the clients' per-layer score vectors (GENE-FL §3.2 server step 2).

    ``mean``: normalise each vector to sum 1, then average (a vector summing to 0 counts as
    uniform). ``vote``: each client picks its own layers with :func:`select_layers_by_budget`
    (``sizes``, ``rho``); a layer's score is its number of votes plus the ``mean`` score as a
    tie-break below one vote.
    """
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, L) array of score vectors, got shape {rows.shape}")
    sums = rows.sum(axis=1, keepdims=True)
    uniform = np.full_like(rows, 1.0 / rows.shape[1])
    normed = np.where(sums > 0, rows / np.where(sums > 0, sums, 1.0), uniform)
    mean = normed.mean(axis=0)
    if how == "mean":
        return mean
    if how == "vote":
        if sizes is None:
            raise ValueError("vote needs the layer sizes")
        names = [str(i) for i in range(rows.shape[1])]
        size_map = dict(zip(names, (int(s) for s in sizes), strict=True))
        votes = np.zeros(rows.shape[1])
        for row in normed:
            for name in select_layers_by_budget(dict(zip(names, row, strict=True)), size_map, rho):
                votes[int(name)] += 1
        return votes + mean / max(float(mean.max()), 1e-12) * 0.5
    raise ValueError(f"score aggregation must be 'mean' or 'vote', got {how!r}")


# --- the probe (GENE-FL §3.2 client step 2) ------------------------------------------------------
def probe_signature(
    model: nn.Module,
    reference: Mapping[str, Tensor],
    batches: Batches,
    lr: float,
    mode: str = "update",
    step_fn: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
    masks: Mapping[str, Tensor] | None = None,
) -> np.ndarray:
    """Train ``model`` with plain CE on ``batches`` and return its unit-norm signature.

    The caller builds the probe model identically for every prober: P in the learnGene layers,
    a run-wide seeded random initialisation elsewhere (§3.2 client step 2), so signatures compare.

    Parameters
    ----------
    model : nn.Module
        The probe model (consumed: it is trained in place).
    reference : dict[str, Tensor]
        P restricted to the learnGene **parameters**; their order is the signature's order.
    batches : iterable of (x, y)
        E_p mini-batches.
    lr : float
        SGD learning rate (fresh optimiser, no momentum).
    mode : {"update", "weights"}
        ``update``: s = (θ[𝓖] − P)/‖θ[𝓖] − P‖₂ (``genefl.cluster-on=update``); ``weights``:
        s = θ[𝓖]/‖θ[𝓖]‖₂.
    step_fn : callable, optional
        Loss of one batch (default cross-entropy of ``model(x)``).
    masks : dict[str, Tensor], optional
        Element learnGene: per parameter a flat boolean mask (or flat indices) of its learnGene
        entries; ``reference`` then holds those entries' values (1-D) and s covers them only.

    Returns
    -------
    numpy.ndarray
        float32 vector of Σ|reference| values (zeros if θ did not move in ``update`` mode).
        Signatures compare only when every prober used the same ``reference`` layout.
    """
    if mode not in ("update", "weights"):
        raise ValueError(f"probe mode must be 'update' or 'weights', got {mode!r}")
    params = dict(model.named_parameters())
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = step_fn(model, x, y) if step_fn else nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        parts = []
        for name, ref in reference.items():
            theta = params[name].detach().reshape(-1).float()
            if masks is not None and name in masks:
                theta = theta[masks[name]]
            parts.append(theta - ref.reshape(-1).float() if mode == "update" else theta)
        vec = torch.cat(parts) if parts else torch.zeros(0)
        norm = float(vec.norm())
        if norm > 0:
            vec = vec / norm
    return vec.numpy().astype(np.float32)


__all__ = [
    "aggregate_layer_scores",
    "diag_fisher",
    "fisher_masks",
    "layer_keys",
    "layer_of",
    "layer_scores",
    "layer_sizes",
    "layer_tie_weights",
    "learngene_penalty",
    "normalise_fisher",
    "probe_signature",
    "quad_penalty",
    "stable_fisher_weights",
    "taylor_saliency",
]
