"""GENE-FL device side (reconstructed; arXiv 2504.14628, METHODS.md §3.2 "Client").

The device keeps its full personal model θ_i in ``context.state`` (it survives across rounds, as
a SuperNode's context does). Per message phase (:mod:`fedhet.methods.genefl.wire`):

* ``warmup`` — FedAvg local SGD on the received full model; in round R_w also the per-layer Taylor
  scores at the received model (B5), as a metric list in the model's layer order;
* ``clustering`` (founders) — store the received full model as θ_i, run the probe, return s;
* ``probe`` (newcomers) — the same probe from the received P, return s; nothing is stored;
* ``newcomer-init`` — θ_i = Θ_k* in 𝓖 + fresh seeded random layers elsewhere (§3.2 step 4);
* ``gene`` — write Θ_k into θ_i's 𝓖 layers, F̂ over 𝓖 (B5), top-q mask, β_l, train all layers on
  CE + Σβ_l‖θ_l − Θ_l‖² + (λ_F/2)Σ m_j F̂_j(θ_j − Θ_j)², upload θ_i[𝓖] (parameters + BN statistics).

With ``genefl.granularity=element`` (:mod:`fedhet.methods.genefl.element`) the warm-up's last round
returns a Taylor score per parameter entry (array ``genefl-element-scores``); the learnGene is the
mask the server sends once (kept in ``context.state``); every sum over 𝓖 above (F̂ and its mean,
the top-q mask, β_l, both penalties, the probe signature) runs over the masked entries only, and
the device uploads the masked values only.

Imports only neutral modules (its config/plan/wire, fedhet.core, fedhet.client, models, data).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict
from torch import nn

from fedhet.client.runtime import (
    ClientContext,
    arrays_of,
    config_of,
    numpy_to_state,
    plan_of,
    reply_content,
    state_to_numpy,
)
from fedhet.client.training import evaluate_model, num_local_steps, train_sgd
from fedhet.core.codec import as_contiguous
from fedhet.core.fisher import (
    diag_fisher,
    fisher_masks,
    layer_keys,
    layer_of,
    layer_scores,
    layer_tie_weights,
    learngene_penalty,
    normalise_fisher,
    probe_signature,
    stable_fisher_weights,
    taylor_saliency,
)
from fedhet.core.seeding import derive_seed
from fedhet.methods.genefl import element, wire
from fedhet.methods.genefl.config import GeneflConfig
from fedhet.methods.genefl.plan import GeneflKnobs
from fedhet.models import build_model

log = logging.getLogger("fedhet.genefl")


# --- helpers -------------------------------------------------------------------------------------
def _mcfg(ctx: ClientContext) -> GeneflConfig:
    mcfg = ctx.run.method
    assert isinstance(mcfg, GeneflConfig)
    return mcfg


def _lr(ctx: ClientContext) -> float:
    return _mcfg(ctx).lr or ctx.run.shared.lr


def _steps(ctx: ClientContext, msg: Message, n_train: int) -> int:
    _, knobs = plan_of(msg, GeneflKnobs)
    if knobs.steps > 0:
        return knobs.steps
    shared = ctx.run.shared
    return num_local_steps(n_train, shared.batch_size, shared.local_epochs, shared.local_steps)


def _batches(ctx: ClientContext, data: Any, steps: int, server_round: int, purpose: str) -> Any:
    seed = derive_seed(ctx.run.shared.seed, ctx.device_id, server_round, "genefl", purpose)
    return data.sample_batches(ctx.run.shared.batch_size, steps, seed=seed)


def _seeded_model(ctx: ClientContext, num_classes: int, *seed_parts: object) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*seed_parts))
        return build_model(ctx.run.shared.model, num_classes=num_classes)


def gene_keys(model: nn.Module, layers: list[str]) -> tuple[list[str], list[str]]:
    """``(keys, parameter keys)`` of the learnGene layers, in state-dict order."""
    params = dict(model.named_parameters())
    per_layer = layer_keys(model.state_dict(), params)
    unknown = [layer for layer in layers if layer not in per_layer]
    if unknown:
        raise ValueError(f"learnGene layers {unknown} are not layers of this model")
    chosen = set(layers)
    keys = [k for layer, ks in per_layer.items() if layer in chosen for k in ks]
    return keys, [k for k in keys if k in params]


def _element(ctx: ClientContext) -> bool:
    return _mcfg(ctx).granularity == "element"


def element_masks(
    ctx: ClientContext, model: nn.Module, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The learnGene element mask: from ``arrays`` if it travels there (then kept in
    ``context.state``), else the kept one; ``ValueError`` when the device holds none."""
    state = model.state_dict()
    shapes = element.param_shapes(state, [n for n, _ in model.named_parameters()])
    d = element.num_entries(shapes)
    flat = element.decode_mask(arrays, d)
    if flat is not None:
        ctx.context.state[wire.STATE_MASK] = ArrayRecord(
            array_dict={wire.MASK: Array(np.packbits(flat))}
        )
    else:
        rec = ctx.context.state.array_records.get(wire.STATE_MASK)
        if rec is None:
            raise ValueError("no learnGene mask: not in the message and not kept on this device")
        flat = element.decode_mask({wire.MASK: rec[wire.MASK].numpy()}, d)
        assert flat is not None
    return element.split_mask(flat, shapes)


def element_scope(
    masks: dict[str, np.ndarray], gene: dict[str, np.ndarray]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, list[str]]]:
    """Element mode's 𝓖: ``(flat indices per parameter, Θ_k's values per parameter, layer →
    parameters)``, over the parameters with masked entries, model order."""
    sel = {n: torch.from_numpy(np.flatnonzero(m)) for n, m in masks.items() if m.any()}
    ref = {n: torch.from_numpy(v.copy()) for n, v in element.per_tensor(gene, masks).items()}
    per_layer: dict[str, list[str]] = {}
    for n in sel:
        per_layer.setdefault(layer_of(n), []).append(n)
    return sel, ref, per_layer


def masked_view(
    params: dict[str, torch.Tensor], sel: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The masked entries of each parameter as 1-D tensors (differentiable gathers)."""
    return {n: params[n].reshape(-1)[i] for n, i in sel.items()}


def _load_personal(ctx: ClientContext) -> dict[str, np.ndarray] | None:
    rec = ctx.context.state.array_records.get(wire.STATE_PERSONAL)
    return None if rec is None else {k: v.numpy() for k, v in rec.items()}


def _store_personal(ctx: ClientContext, state: dict[str, np.ndarray]) -> None:
    ctx.context.state[wire.STATE_PERSONAL] = ArrayRecord(
        array_dict={k: Array(as_contiguous(v)) for k, v in state.items()}
    )


def _ack(n: int, seconds: float = 0.0, loss: float = 0.0) -> dict[str, Any]:
    return {"num-examples": n, "train-loss": loss, "train-seconds": seconds}


# --- phases --------------------------------------------------------------------------------------
def _warmup(msg: Message, ctx: ClientContext, cfg: dict[str, Any]) -> RecordDict:
    split = ctx.data()
    server_round = int(cfg["server-round"])
    model = build_model(ctx.run.shared.model, num_classes=split.train.num_classes)
    model.load_state_dict(numpy_to_state(arrays_of(msg)))
    extra: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    if int(cfg.get(wire.SCORES_WANTED, 0)):
        # sensitivity at the received model (§3.2 server step 2), before local training
        params = dict(model.named_parameters())
        batches = _batches(
            ctx, split.train, _mcfg(ctx).sensitivity_batches, server_round, "sensitivity"
        )
        saliency = taylor_saliency(model, batches)
        if _element(ctx):  # a score per parameter entry, model order
            flat = torch.cat([saliency[n].reshape(-1) for n in params]).float().numpy()
            scores[wire.ELEMENT_SCORES] = flat
        else:
            extra[wire.SCORES] = layer_scores(saliency, layer_keys(model.state_dict(), params))
    steps = _steps(ctx, msg, len(split.train))
    metrics = train_sgd(
        model, _batches(ctx, split.train, steps, server_round, "train"), lr=_lr(ctx)
    )
    metrics.update(extra, **{"num-examples": len(split.train)})
    return reply_content({**state_to_numpy(model.state_dict()), **scores}, metrics)


def run_probe(
    ctx: ClientContext,
    reference: dict[str, np.ndarray],
    layers: list[str],
    steps: int,
    rnd: int,
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, float, float]:
    """The identical probe of §3.2 client step 2: ``(signature, mean CE, seconds)``.

    Model = P in the learnGene layers + run-wide seeded random layers elsewhere; E_p plain-CE SGD
    steps on this device's data; s = normalised update (or weights, ``genefl.cluster-on``).
    Element mode (``masks`` given, ``reference`` = P's values): P in the masked entries, the seeded
    random values in every other entry; s over the masked entries.
    """
    split = ctx.data()
    start = time.perf_counter()
    model = _seeded_model(ctx, split.train.num_classes, *wire.probe_seed_parts(ctx.run.shared.seed))
    sel: dict[str, torch.Tensor] | None = None
    if masks is not None:
        base = state_to_numpy(model.state_dict())
        model.load_state_dict(numpy_to_state(element.scatter(reference, masks, base)), strict=False)
        sel = {n: torch.from_numpy(m.reshape(-1)) for n, m in masks.items() if m.any()}
        vals = element.per_tensor(reference, masks)
        ref = {n: torch.from_numpy(v.copy()) for n, v in vals.items()}
    else:
        keys, param_keys = gene_keys(model, layers)
        missing = [k for k in keys if k not in reference]
        if missing:
            raise ValueError(f"probe reference lacks learnGene arrays {missing[:3]}")
        model.load_state_dict(numpy_to_state({k: reference[k] for k in keys}), strict=False)
        ref = {k: torch.from_numpy(np.array(reference[k], copy=True)) for k in param_keys}
    losses: list[float] = []

    def ce(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(m(x), y)
        losses.append(float(loss.detach()))
        return loss

    batches = _batches(ctx, split.train, steps, rnd, "probe")
    sig = probe_signature(model, ref, batches, _lr(ctx), _mcfg(ctx).cluster_on, ce, sel)
    return sig, float(np.mean(losses)) if losses else 0.0, time.perf_counter() - start


def _probe_steps(ctx: ClientContext, msg: Message, cfg: dict[str, Any]) -> int:
    """E_p: ``genefl.probe-steps``, else the fleet-wide E (never the device's scaled steps, so
    every prober runs the identical probe, §3.7)."""
    e_p = int(cfg.get(wire.PROBE_STEPS, 0))
    if e_p > 0:
        return e_p
    shared = ctx.run.shared
    n = len(ctx.data().train)
    return num_local_steps(n, shared.batch_size, shared.local_epochs, shared.local_steps)


def _clustering(msg: Message, ctx: ClientContext, cfg: dict[str, Any], store: bool) -> RecordDict:
    arrays = arrays_of(msg)
    layers = wire.decode_layers(cfg[wire.LAYERS])
    masks = None
    if _element(ctx):
        num_classes = ctx.data().train.num_classes
        masks = element_masks(
            ctx, build_model(ctx.run.shared.model, num_classes=num_classes), arrays
        )
        arrays = element.without_mask(arrays)
    if store:  # founders keep Θ^{R_w} as their personal model θ_i
        _store_personal(ctx, arrays)
        if masks is not None:  # P = Θ^{R_w} under the mask
            arrays = element.gather(arrays, masks)
    steps = _probe_steps(ctx, msg, cfg)
    sig, loss, seconds = run_probe(ctx, arrays, layers, steps, int(cfg["server-round"]), masks)
    n = len(ctx.data().train)
    return reply_content({wire.SIGNATURE: sig}, _ack(n, seconds, loss))


def newcomer_state(
    ctx: ClientContext,
    gene: dict[str, np.ndarray],
    num_classes: int,
    masks: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """θ_i of a newcomer: Θ_k* in the learnGene layers (element mode: in the masked entries of
    ``masks``, ``gene`` holding values only), fresh seeded random values elsewhere."""
    model = _seeded_model(
        ctx, num_classes, *wire.newcomer_seed_parts(ctx.run.shared.seed, ctx.device_id)
    )
    if masks is not None:
        gene = element.scatter(gene, masks, state_to_numpy(model.state_dict()))
    model.load_state_dict(numpy_to_state(gene), strict=False)
    return state_to_numpy(model.state_dict())


def _init(msg: Message, ctx: ClientContext) -> RecordDict:
    split = ctx.data()
    gene, masks = arrays_of(msg), None
    if _element(ctx):
        model = build_model(ctx.run.shared.model, num_classes=split.train.num_classes)
        masks = element_masks(ctx, model, gene)
        gene = element.without_mask(gene)
    _store_personal(ctx, newcomer_state(ctx, gene, split.train.num_classes, masks))
    return reply_content(None, _ack(len(split.train)))


def _fisher(
    ctx: ClientContext,
    model: nn.Module,
    param_keys: list[str],
    server_round: int,
    select: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """F̂ over the learnGene parameters, recomputed every ``genefl.fisher-every`` gene rounds.

    ``select`` (element mode): per parameter the flat indices of its masked entries; F is then
    restricted to them (1-D per parameter) before F̂ = F / mean over the masked entries.
    """
    mcfg = _mcfg(ctx)
    state = ctx.context.state
    meta = state.config_records.get(wire.STATE_FISHER + ".meta")
    count = int(str(meta["gene-rounds"])) if meta is not None else 0
    cached = state.array_records.get(wire.STATE_FISHER)
    from flwr.app import ConfigRecord

    state[wire.STATE_FISHER + ".meta"] = ConfigRecord({"gene-rounds": count + 1})
    if cached is not None and count % mcfg.fisher_every != 0 and set(cached) == set(param_keys):
        hit = {k: torch.from_numpy(v.numpy().copy()) for k, v in cached.items()}
        sizes = {k: (select[k].numel() if select else model.get_parameter(k).numel()) for k in hit}
        if all(hit[k].numel() == sizes[k] for k in hit):
            return hit, 0.0
    start = time.perf_counter()
    batches = _batches(ctx, ctx.data().train, mcfg.fisher_batches, server_round, "fisher")
    raw = diag_fisher(model, batches, param_keys, per_sample=mcfg.fisher_mode == "per-sample")
    if select is not None:
        raw = {k: raw[k].reshape(-1)[select[k]] for k in param_keys}
    fisher_hat = normalise_fisher(raw)
    seconds = time.perf_counter() - start
    state[wire.STATE_FISHER] = ArrayRecord(
        array_dict={k: Array(as_contiguous(v.numpy())) for k, v in fisher_hat.items()}
    )
    return fisher_hat, seconds


def _gene(msg: Message, ctx: ClientContext, cfg: dict[str, Any]) -> RecordDict:
    mcfg = _mcfg(ctx)
    split = ctx.data()
    server_round = int(cfg["server-round"])
    layers = wire.decode_layers(cfg[wire.LAYERS])
    gene = arrays_of(msg)
    model = build_model(ctx.run.shared.model, num_classes=split.train.num_classes)
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    sel: dict[str, torch.Tensor] | None = None
    emasks: dict[str, np.ndarray] | None = None
    if _element(ctx):
        emasks = element_masks(ctx, model, gene)
        gene = element.without_mask(gene)
    personal = _load_personal(ctx)
    if personal is None:
        log.warning("device %s: no personal model in state; newcomer init", ctx.device_id)
        personal = newcomer_state(ctx, gene, split.train.num_classes, emasks)
    if emasks is not None:  # 𝓖 = the masked entries: every sum over 𝓖 runs over them (1-D views)
        keys = [wire.VALUES]
        if sorted(gene) != keys:
            raise ValueError(f"received learnGene arrays {sorted(gene)[:3]}, expected {keys}")
        model.load_state_dict(
            numpy_to_state({**personal, **element.scatter(gene, emasks, personal)})
        )
        sel, ref, per_layer = element_scope(emasks, gene)
        param_keys = list(sel)
    else:
        keys, param_keys = gene_keys(model, layers)
        if sorted(gene) != sorted(keys):
            raise ValueError(f"received learnGene arrays {sorted(gene)[:3]}… ≠ layers {layers}")
        model.load_state_dict(numpy_to_state({**personal, **gene}))
        ref = {k: torch.from_numpy(np.array(gene[k], copy=True)) for k in param_keys}
        per_layer = {
            layer: ks
            for layer, ks in layer_keys(model.state_dict()).items()
            if layer in set(layers)
        }
    fisher_hat, fisher_s = _fisher(ctx, model, param_keys, server_round, sel)
    masks = fisher_masks(fisher_hat, mcfg.q)
    lr = _lr(ctx)
    tie = stable_fisher_weights(fisher_hat, lr, mcfg.lambda_f)
    betas = layer_tie_weights(fisher_hat, per_layer, mcfg.mu)

    def theta() -> dict[str, torch.Tensor]:
        """θ over 𝓖: the parameters, or (element mode) their masked entries (differentiable)."""
        return params if sel is None else masked_view(params, sel)

    steps = _steps(ctx, msg, len(split.train))
    opt = torch.optim.SGD(model.parameters(), lr=lr)  # fresh optimiser every call (§0)
    model.train()
    start = time.perf_counter()
    total, n_steps = 0.0, 0
    for x, y in _batches(ctx, split.train, steps, server_round, "train"):
        opt.zero_grad(set_to_none=True)
        ce = nn.functional.cross_entropy(model(x), y)
        loss = ce + learngene_penalty(theta(), ref, per_layer, betas, tie, masks, mcfg.lambda_f)
        loss.backward()
        opt.step()
        total += float(ce.detach())
        n_steps += 1
    state = state_to_numpy(model.state_dict())
    _store_personal(ctx, state)
    metrics = _ack(len(split.train), time.perf_counter() - start, total / max(n_steps, 1))
    metrics[wire.FISHER_SECONDS] = fisher_s
    if emasks is not None:
        return reply_content(element.gather(state, emasks), metrics)
    return reply_content({k: state[k] for k in keys}, metrics)


# --- handlers ------------------------------------------------------------------------------------
def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """Dispatch on ``genefl-phase`` (see the module docstring)."""
    cfg = config_of(msg)
    phase = str(cfg.get(wire.PHASE, wire.WARMUP))
    if phase == wire.WARMUP:
        return _warmup(msg, ctx, cfg)
    if phase == wire.CLUSTERING:
        return _clustering(msg, ctx, cfg, store=True)
    if phase == wire.PROBE:
        return _clustering(msg, ctx, cfg, store=False)
    if phase == wire.INIT:
        return _init(msg, ctx)
    if phase == wire.GENE:
        return _gene(msg, ctx, cfg)
    raise ValueError(f"unknown {wire.PHASE} {phase!r}; known: {', '.join(wire.PHASES)}")


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Accuracy of the personal model θ_i (``genefl-personal``) or of the received full model."""
    cfg = config_of(msg)
    split = ctx.data()
    if int(cfg.get(wire.PERSONAL, 0)):
        state = _load_personal(ctx)
        if state is None:
            return reply_content(
                None,
                {"num-examples": 0, "eval-correct": 0, "eval-loss": 0.0, wire.HAS_PERSONAL: 0},
            )
    else:
        state = arrays_of(msg)
    model = build_model(ctx.run.shared.model, num_classes=split.test.num_classes)
    model.load_state_dict(numpy_to_state(state))
    correct, total, loss = evaluate_model(model, split.test)
    return reply_content(
        None,
        {"num-examples": total, "eval-correct": correct, "eval-loss": loss, wire.HAS_PERSONAL: 1},
    )
