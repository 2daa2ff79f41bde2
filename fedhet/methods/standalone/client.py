"""Standalone device side: train the device's own architecture alone (METHODS.md §5.6).

The model F_k (architecture from the plan, created on first participation, seeded by run seed
and device-id) lives in ``context.state``; each round trains it ``standalone.epochs`` epochs
(default 2 = pFedAFM's 2E) with a fresh SGD optimiser and uploads nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from flwr.app import Message, RecordDict
from torch import nn

from fedhet.client.local_state import store_local, stored_local
from fedhet.client.runtime import (
    ClientContext,
    config_of,
    infeasible_reply,
    plan_of,
    reply_content,
)
from fedhet.client.training import evaluate_model, num_local_steps
from fedhet.core.seeding import derive_seed
from fedhet.methods.standalone import wire
from fedhet.methods.standalone.config import StandaloneConfig
from fedhet.methods.standalone.plan import StandaloneKnobs
from fedhet.models.afm import build_afm

log = logging.getLogger("fedhet.client")


def load_model(ctx: ClientContext, arch: str, num_classes: int) -> nn.Module:
    """The device's model from ``context.state``, or a new one seeded by (run seed, device-id)."""
    state = ctx.context.state
    torch.manual_seed(derive_seed(ctx.run.shared.seed, ctx.device_id, "standalone-local"))
    model = build_afm(arch, num_classes=num_classes)
    stored, tensors = stored_local(state, wire.STATE_KEY, wire.STATE_META)
    if stored == arch and tensors is not None:
        model.load_state_dict(tensors)
    elif stored is not None:
        log.warning(
            "device %s: plan architecture %s replaces stored %s", ctx.device_id, arch, stored
        )
    return model


def save_model(ctx: ClientContext, arch: str, model: nn.Module) -> None:
    """Store a copy of the model in ``context.state``."""
    store_local(ctx.context.state, wire.STATE_KEY, wire.STATE_META, arch, model.state_dict())


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """``epochs`` (or ``steps``) of SGD on the local model; upload nothing."""
    _, knobs = plan_of(msg, StandaloneKnobs)
    if knobs.arch is None:
        return infeasible_reply(knobs.infeasible or "no architecture fits this device")
    mcfg: StandaloneConfig = ctx.run.method_as(StandaloneConfig)
    split = ctx.data()
    server_round = int(config_of(msg)["server-round"])
    model = load_model(ctx, knobs.arch, split.train.num_classes)
    steps = num_local_steps(len(split.train), mcfg.batch_size, mcfg.epochs, mcfg.steps)
    seed = derive_seed(ctx.run.shared.seed, ctx.device_id, server_round, "standalone")
    opt = torch.optim.SGD(
        model.parameters(), lr=mcfg.lr, momentum=mcfg.momentum, weight_decay=mcfg.weight_decay
    )
    model.train()
    start = time.perf_counter()
    total, n = 0.0, 0
    for x, y in split.train.sample_batches(mcfg.batch_size, steps, seed=seed):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), mcfg.grad_clip)
        opt.step()
        total += float(loss.detach())
        n += 1
    save_model(ctx, knobs.arch, model)
    metrics: dict[str, Any] = {
        "train-loss": total / max(n, 1),
        "train-seconds": time.perf_counter() - start,
        "train-steps": float(n),
        "num-examples": len(split.train),
    }
    return reply_content({}, metrics)


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Accuracy of the device's own model on its local test set (correct / total)."""
    _, knobs = plan_of(msg, StandaloneKnobs)
    split = ctx.data()
    if knobs.arch is None:
        return reply_content(None, {"num-examples": 0, "eval-correct": 0, "eval-loss": 0.0})
    mcfg: StandaloneConfig = ctx.run.method_as(StandaloneConfig)
    model = load_model(ctx, knobs.arch, split.test.num_classes)
    correct, total, loss = evaluate_model(model, split.test, batch_size=mcfg.eval_batch_size)
    return reply_content(None, {"num-examples": total, "eval-correct": correct, "eval-loss": loss})
