"""FL-TAC device: one rank-r LoRA adapter (plus head) per local task slot (arXiv 2404.15384).

For each slot s of task j (METHODS.md §4.2, client): load the received V[dev, s] into the single
peft adapter, create a fresh AdamW, run τ_i steps on task j's data with the backbone frozen and the
logits of classes task j lacks masked, and extract the slot (B8). All slots return in one
ArrayRecord as ``slot{s}/<canonical key>``; metrics carry ``num-examples`` (sum over the trained
slots) and per-slot ``slot-loss`` and ``slot-examples`` lists, in ascending slot order. A task
with zero local examples has no slot and sends nothing. Evaluate replies carry per-slot results
and, only in simulation with ``fltac.oracle-eval``, each slot's task tag; the task names never
leave a deployed device.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from flwr.app import Message, RecordDict
from peft import PeftModel

from fedhet.client.adapters import (
    adapter_model,
    device_slots,
    eval_reply,
    evaluate_slots,
    head_outputs,
    initial_adapter_state,
    run_task_classes,
)
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
from fedhet.core.lora import get_adapter_state, set_adapter_state, train_adapter
from fedhet.core.seeding import derive_seed
from fedhet.data.text_slots import TextSlot, sample_batches
from fedhet.methods.fltac.config import FltacConfig
from fedhet.methods.fltac.plan import FltacKnobs
from fedhet.methods.fltac.wire import slot_key, split_init_arrays, split_slot_arrays

log = logging.getLogger("fedhet.fltac")


def _model(ctx: ClientContext, mcfg: FltacConfig, slots: list[TextSlot]) -> PeftModel:
    """One C_max-way LoRA model; slots are swapped into its active adapter."""
    return adapter_model(ctx, mcfg, head_outputs(mcfg, run_task_classes(ctx), slots))


def _received_states(
    msg: Message, model: PeftModel, slots: list[TextSlot]
) -> dict[int, dict[str, torch.Tensor]]:
    """Slot index → state to start from: the slot's arrays, else ``init/``, else local v⁰."""
    init, rest = split_init_arrays(arrays_of(msg))
    per_slot = split_slot_arrays(rest)
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


def task_tags_allowed(ctx: ClientContext, mcfg: FltacConfig) -> bool:
    """Whether evaluate replies may tag slots with their task: simulation + ``oracle-eval`` only.

    Outside simulation a task identity never leaves the device (issue 10 item 8), whatever the
    run config says.
    """
    if not mcfg.oracle_eval:
        return False
    if not ctx.simulated:
        log.warning("fltac.oracle-eval is for simulation only; this device sends no task tags")
        return False
    return True


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
    slots = device_slots(ctx, mcfg)
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
            arrays[slot_key(slot.index, key)] = value
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
    """Evaluate each slot's adapter on its task's local test items (per-slot metric lists).

    The reply names no task unless :func:`task_tags_allowed` (simulation + ``fltac.oracle-eval``).
    """
    mcfg: FltacConfig = ctx.run.method  # type: ignore[assignment]
    with_tasks = task_tags_allowed(ctx, mcfg)
    slots = device_slots(ctx, mcfg)
    if not slots:
        return eval_reply([], with_tasks=with_tasks)
    model = _model(ctx, mcfg, slots)
    states = _received_states(msg, model, slots)
    results = evaluate_slots(
        model,
        slots,
        mcfg.eval_batch_size,
        lambda slot: set_adapter_state(model, states[slot.index]),
    )
    return eval_reply(results, with_tasks=with_tasks)
