"""pFedAFM device side (arXiv 2404.17847, §3.2–3.3; METHODS.md §5.2 "Client").

On every train message the device rebuilds its mixture from what it keeps in ``context.state``
(ω_k, α_k; created on first participation with the plan's architecture and α = ``alpha-init``),
loads the received G, runs the two stages of :func:`~fedhet.methods.pfedafm.mixture.train_round`,
stores ω_k and α_k back and uploads θ_k only. Optimisers are fresh each round, so no optimiser
state exists to keep or leak. Evaluation tests the mixture h_k(R) on the local test set (the
personalised accuracy) and logs the G-only path h_k(G(x)) and α's mean beside it.

Imports only neutral modules (its config, plan, wire and mixture, fedhet.client, fedhet.core,
fedhet.models); never the strategy or fedhet.server.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from flwr.app import Message, RecordDict

from fedhet.client.local_state import store_local, stored_local
from fedhet.client.runtime import (
    ClientContext,
    arrays_of,
    config_of,
    infeasible_reply,
    numpy_to_state,
    plan_of,
    reply_content,
    state_to_numpy,
)
from fedhet.client.training import num_local_steps
from fedhet.core.seeding import derive_seed
from fedhet.methods.pfedafm import wire
from fedhet.methods.pfedafm.config import PfedafmConfig
from fedhet.methods.pfedafm.mixture import (
    FeatureMixture,
    StageSettings,
    evaluate_mixture,
    train_round,
)
from fedhet.methods.pfedafm.plan import PfedafmKnobs
from fedhet.models.afm import build_afm, build_extractor

log = logging.getLogger("fedhet.client")


def build_g(model: str, arrays: dict[str, np.ndarray] | None = None) -> torch.nn.Module:
    """G: the feature extractor of the run's ``model`` (default CNN-5), loaded from ``arrays``.

    Raises
    ------
    ValueError
        If the received tensors are not exactly G's (names or shapes).
    """
    g = build_extractor(model)
    if arrays is not None:
        expected = {k: tuple(v.shape) for k, v in g.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in arrays.items()}
        if got != expected:
            diff = sorted(set(expected) ^ set(got)) or [
                k for k in expected if expected[k] != got[k]
            ]
            raise ValueError(f"received arrays are not G's extractor of {model!r}: {diff[:5]}")
        g.load_state_dict(numpy_to_state(arrays))
    return g


def _settings(mcfg: PfedafmConfig) -> StageSettings:
    return StageSettings(
        lr=mcfg.lr,
        lr_alpha=mcfg.lr_alpha,
        momentum=mcfg.momentum,
        weight_decay=mcfg.weight_decay,
        grad_clip=mcfg.grad_clip,
        train_alpha=mcfg.train_alpha,
        stage2=mcfg.stage2,
    )


def load_mixture(
    ctx: ClientContext, arch: str, g: torch.nn.Module, num_classes: int
) -> FeatureMixture:
    """The device's mixture: ω_k and α_k from ``context.state``, or new on first participation.

    A new local model is seeded by (run seed, device-id); α starts at ``pfedafm.alpha-init``.
    """
    mcfg: PfedafmConfig = ctx.run.method_as(PfedafmConfig)
    state = ctx.context.state
    stored_arch, saved = stored_local(state, wire.STATE_KEY, wire.STATE_META)
    torch.manual_seed(derive_seed(ctx.run.shared.seed, ctx.device_id, "pfedafm-local"))
    local = build_afm(arch, num_classes=num_classes)
    mix = FeatureMixture(
        local.extractor,
        local.header,
        g,
        alpha_init=mcfg.alpha_init,
        projection=mcfg.projection,
    )
    if stored_arch is not None and stored_arch != arch:
        log.warning(
            "device %s: plan architecture %s differs from the stored %s; starting a new local model",
            ctx.device_id,
            arch,
            stored_arch,
        )
    elif saved is not None:
        own = {k: v for k, v in mix.state_dict().items() if not k.startswith("g.")}
        if set(saved) != set(own):
            raise ValueError(
                f"device {ctx.device_id}: stored pFedAFM state does not match {arch} "
                f"(differs in {sorted(set(saved) ^ set(own))[:5]})"
            )
        mix.load_state_dict(saved, strict=False)
    return mix


def save_mixture(ctx: ClientContext, arch: str, mix: FeatureMixture) -> None:
    """Store ω_k, α_k (and a projection) in ``context.state``: a copy, never uploaded."""
    own = {k: v for k, v in mix.state_dict().items() if not k.startswith("g.")}
    store_local(ctx.context.state, wire.STATE_KEY, wire.STATE_META, arch, own)


def _steps(n: int, mcfg: PfedafmConfig) -> int:
    return num_local_steps(n, mcfg.batch_size, mcfg.epochs, mcfg.steps)


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """Two-stage local round (METHODS.md §5.2 steps 1–5); upload θ_k, G's tensors only."""
    _, knobs = plan_of(msg, PfedafmKnobs)
    if knobs.arch is None:
        return infeasible_reply(knobs.infeasible or "no architecture fits this device")
    mcfg: PfedafmConfig = ctx.run.method_as(PfedafmConfig)
    split = ctx.data()
    server_round = int(config_of(msg)["server-round"])
    g = build_g(ctx.run.shared.model, arrays_of(msg))
    mix = load_mixture(ctx, knobs.arch, g, split.train.num_classes)
    steps = _steps(len(split.train), mcfg)
    seed = ctx.run.shared.seed
    batches = [
        split.train.sample_batches(
            mcfg.batch_size, steps, seed=derive_seed(seed, ctx.device_id, server_round, stage)
        )
        for stage in ("pfedafm-stage1", "pfedafm-stage2")
    ]
    metrics: dict[str, Any] = train_round(mix, batches[0], batches[1], _settings(mcfg))
    save_mixture(ctx, knobs.arch, mix)
    alpha_mean, hist = mix.alpha_stats(wire.ALPHA_BINS)
    metrics[wire.ALPHA_MEAN] = alpha_mean
    metrics[wire.ALPHA_HIST] = hist
    metrics["num-examples"] = len(split.train)
    return reply_content(state_to_numpy(mix.g.state_dict()), metrics)


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Personalised accuracy (mixture) and G-only accuracy on the local test set."""
    _, knobs = plan_of(msg, PfedafmKnobs)
    split = ctx.data()
    if knobs.arch is None:
        return reply_content(None, {"num-examples": 0, "eval-correct": 0, "eval-loss": 0.0})
    mcfg: PfedafmConfig = ctx.run.method_as(PfedafmConfig)
    g = build_g(ctx.run.shared.model, arrays_of(msg))
    mix = load_mixture(ctx, knobs.arch, g, split.test.num_classes)
    res = evaluate_mixture(mix, split.test.x, split.test.y, mcfg.eval_batch_size)
    alpha_mean, _ = mix.alpha_stats(wire.ALPHA_BINS)
    return reply_content(
        None,
        {
            "num-examples": res.total,
            "eval-correct": res.correct,
            "eval-loss": res.loss,
            wire.EVAL_G_CORRECT: res.g_correct,
            wire.EVAL_G_LOSS: res.g_loss,
            wire.EVAL_ALPHA_MEAN: alpha_mean,
        },
    )
