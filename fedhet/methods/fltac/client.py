"""FL-TAC device: one rank-r LoRA adapter (plus head) per local task slot (arXiv 2404.15384).

For each slot s of task j (METHODS.md §4.2, client): load the received V[dev, s] into the single
peft adapter, create a fresh AdamW, run τ_i steps on task j's data with the backbone frozen and the
logits of classes task j lacks masked, and extract the slot (B8). All slots return in one
ArrayRecord as ``slot{s}/<canonical key>``; metrics carry ``num-examples`` (sum over the trained
slots) and per-slot ``slot-loss`` and ``slot-examples`` lists, in ascending slot order. A task
with zero local examples has no slot and sends nothing.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from flwr.app import Message, RecordDict
from peft import PeftModel

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
from fedhet.client.text import (
    TextSlot,
    device_slots,
    eval_batches,
    initial_adapter_state,
    node_model_source,
    sample_batches,
    slot_eval_metrics,
    task_classes,
    text_lora_model,
)
from fedhet.core.lora import evaluate_adapter, get_adapter_state, set_adapter_state, train_adapter
from fedhet.core.seeding import derive_seed
from fedhet.methods.fltac.config import FltacConfig
from fedhet.methods.fltac.plan import FltacKnobs
from fedhet.methods.fltac.strategy import INIT_PREFIX, split_slot_arrays

log = logging.getLogger("fedhet.fltac")


def _num_labels(ctx: ClientContext, mcfg: FltacConfig, slots: list[TextSlot]) -> int:
    if mcfg.num_labels:
        return mcfg.num_labels
    try:
        return max(task_classes(ctx.run.shared.dataset, ctx.run.shared.seed).values())
    except Exception:  # own CSV data and no run-wide task table
        return max((s.num_classes for s in slots), default=2)


def _model(ctx: ClientContext, mcfg: FltacConfig, slots: list[TextSlot]) -> PeftModel:
    num_labels = _num_labels(ctx, mcfg, slots)
    source = node_model_source(ctx, ctx.run.shared.model, num_labels, ctx.run.shared.seed)
    return text_lora_model(
        source,
        num_labels,
        mcfg.rank,
        mcfg.lora_alpha(),
        mcfg.dropout,
        mcfg.modules(),
        ctx.run.shared.seed,
    )


def _received_states(
    msg: Message, model: PeftModel, slots: list[TextSlot]
) -> dict[int, dict[str, torch.Tensor]]:
    """Slot index → state to start from: the slot's arrays, else ``init/``, else local v⁰."""
    arrays = arrays_of(msg)
    init = {k[len(INIT_PREFIX) :]: v for k, v in arrays.items() if k.startswith(INIT_PREFIX)}
    per_slot = split_slot_arrays({k: v for k, v in arrays.items() if not k.startswith(INIT_PREFIX)})
    out = {}
    for slot in slots:
        if slot.index in per_slot:
            out[slot.index] = numpy_to_state(per_slot[slot.index])
        elif init:
            out[slot.index] = numpy_to_state(init)
        else:
            log.warning("slot %d: no state received; starting from the local v⁰", slot.index)
            out[slot.index] = initial_adapter_state(model)
    return out


def slots_this_round(slots: list[TextSlot], share: float, server_round: int) -> list[TextSlot]:
    """At most max(1, ⌈share·n⌉) slots, rotating with the round (``fltac.scale-slots``)."""
    n = len(slots)
    if share >= 1.0 or n <= 1:
        return list(slots)
    m = max(1, math.ceil(share * n))
    start = ((server_round - 1) * m) % n
    chosen = {(start + i) % n for i in range(m)}
    return [s for i, s in enumerate(slots) if i in chosen]


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """Train every (scheduled) slot on its task; upload all of them in one ArrayRecord."""
    mcfg: FltacConfig = ctx.run.method  # type: ignore[assignment]
    shared = ctx.run.shared
    cfg = config_of(msg)
    server_round = int(cfg["server-round"])
    slots = device_slots(ctx, shared.model, mcfg.max_length)
    if not slots:
        return infeasible_reply("this device holds no text data")
    model = _model(ctx, mcfg, slots)
    states = _received_states(msg, model, slots)
    _, knobs = plan_of(msg, FltacKnobs)
    steps = knobs.steps
    lr = float(cfg.get("lr", mcfg.lr))
    chosen = slots_this_round(slots, knobs.slot_share, server_round)
    start = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    losses: list[float] = []
    examples: list[int] = []
    for slot in sorted(chosen, key=lambda s: s.index):
        set_adapter_state(model, states[slot.index])
        torch.manual_seed(
            derive_seed(shared.seed, ctx.device_id, server_round, slot.index, "dropout")
        )
        batches = sample_batches(
            slot.train,
            mcfg.batch_size,
            steps,
            derive_seed(shared.seed, ctx.device_id, server_round, slot.index, "batches"),
        )
        result = train_adapter(model, batches, lr=lr, num_classes_task=slot.num_classes)
        for key, value in state_to_numpy(get_adapter_state(model)).items():
            arrays[f"slot{slot.index}/{key}"] = value
        losses.append(float(result["train-loss"]))
        examples.append(slot.num_train)
    n = int(sum(examples))
    metrics = {
        "num-examples": n,
        "train-loss": float(np.dot(losses, examples) / n) if n else 0.0,
        "train-seconds": time.perf_counter() - start,
        "slot-loss": losses,
        "slot-examples": examples,
    }
    return reply_content(arrays, metrics)


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Evaluate each slot's adapter on its task's local test items (per-slot metric lists)."""
    mcfg: FltacConfig = ctx.run.method  # type: ignore[assignment]
    slots = device_slots(ctx, ctx.run.shared.model, mcfg.max_length)
    if not slots:
        return reply_content(None, slot_eval_metrics([]))
    model = _model(ctx, mcfg, slots)
    states = _received_states(msg, model, slots)
    results = []
    for slot in slots:
        set_adapter_state(model, states[slot.index])
        correct, total, loss = evaluate_adapter(
            model, eval_batches(slot.test, mcfg.eval_batch_size), slot.num_classes
        )
        results.append((slot, correct, total, loss))
    return reply_content(None, slot_eval_metrics(results))
