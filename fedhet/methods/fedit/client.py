"""FedIT device: one shared LoRA adapter trained over all local tasks (arXiv 2305.05644).

The device loads the global adapter and the heads of its tasks, then runs n_i·τ steps with one
fresh AdamW, cycling over its n_i tasks batch by batch (FL-TAC's compute, METHODS.md §4.2; with
``fedit.step-budget=repository`` τ steps in all, as FL-TAC's code runs this baseline);
each batch goes through its task's head with the logits of classes the task lacks masked. It
uploads the adapter and its tasks' heads (keyed by task name) with ``task-examples`` per head.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
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
    reply_content,
    state_to_numpy,
)
from fedhet.core.lora import get_adapter_state, mask_logits, set_adapter_state
from fedhet.core.seeding import derive_seed
from fedhet.data.text_slots import TextSlot, sample_batches
from fedhet.methods.fedit.config import FedITConfig
from fedhet.methods.fedit.wire import TASK_EXAMPLES, UNION_HEAD, head_task, label_offsets
from fedhet.models.text import select_task_head


def _model(ctx: ClientContext, mcfg: FedITConfig, slots: list[TextSlot]) -> PeftModel:
    """One shared adapter with a head per task name (the run's tasks and the device's own), or
    with one head over the union of the run's labels (``fedit.head=shared``)."""
    classes = run_task_classes(ctx)
    if mcfg.head == "shared":
        return adapter_model(ctx, mcfg, sum(_union(ctx, slots).values()), (UNION_HEAD,))
    tasks = tuple(sorted(set(classes) | {s.task for s in slots}))
    return adapter_model(ctx, mcfg, head_outputs(mcfg, classes, slots), tasks)


def _union(ctx: ClientContext, slots: list[TextSlot]) -> dict[str, int]:
    """``{task: classes}`` of the union head: the run's task table (needed by every device)."""
    classes = run_task_classes(ctx)
    missing = sorted({s.task for s in slots} - set(classes))
    if not classes or missing:
        raise ValueError(
            "fedit.head='shared' needs the run's task table on every device "
            f"(tasks {missing or 'all'} unknown here)"
        )
    return classes


def _head_and_labels(
    ctx: ClientContext, mcfg: FedITConfig, slots: list[TextSlot]
) -> tuple[Callable[[TextSlot], str], Callable[[TextSlot], int], int]:
    """Which head scores a slot, the offset of its labels, and the logits kept (the rest masked).

    Per-task heads: the slot's task head, labels as they are, the task's classes. Shared head:
    the union head, labels offset by :func:`label_offsets`, every union label kept.
    """
    if mcfg.head == "shared":
        union = _union(ctx, slots)
        offsets = label_offsets(union)
        return (lambda _s: UNION_HEAD), (lambda s: offsets[s.task]), sum(union.values())
    return (lambda s: s.task), (lambda _s: 0), 0


def _load(msg: Message, model: PeftModel) -> None:
    """Received adapter and heads over v⁰ (heads the server did not send stay at v⁰)."""
    state = initial_adapter_state(model)
    received = numpy_to_state(arrays_of(msg))
    unknown = sorted(set(received) - set(state))
    if unknown:
        raise ValueError(f"received arrays this model does not have: {unknown[:3]}")
    state.update(received)
    set_adapter_state(model, state)


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """n_i·τ AdamW steps cycling over the local tasks; upload the adapter and local heads."""
    mcfg: FedITConfig = ctx.run.method  # type: ignore[assignment]
    shared = ctx.run.shared
    server_round = int(config_of(msg)["server-round"])
    slots = sorted(device_slots(ctx, mcfg), key=lambda s: s.task)
    if not slots:
        return infeasible_reply("this device holds no text data")
    model = _model(ctx, mcfg, slots)
    _load(msg, model)
    start = time.perf_counter()
    torch.manual_seed(derive_seed(shared.seed, ctx.device_id, server_round, "dropout"))
    streams = [
        iter(
            sample_batches(
                s.train,
                mcfg.batch_size,
                mcfg.steps,
                derive_seed(shared.seed, ctx.device_id, server_round, s.task, "batches"),
            )
        )
        for s in slots
    ]
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=mcfg.lr)
    model.train()
    head_of, offset_of, union_classes = _head_and_labels(ctx, mcfg, slots)
    loss_sum, seen = 0.0, 0
    # matched: τ rounds over all n_i tasks (n_i·τ steps); repository: τ steps in all, tasks in turn
    order = [k for _ in range(mcfg.steps) for k in range(len(slots))]
    if mcfg.step_budget == "repository":
        order = order[: mcfg.steps]
    for k in order:
        slot, batch = slots[k], next(streams[k])
        select_task_head(model, head_of(slot))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = mask_logits(out.logits, union_classes or slot.num_classes)
        loss = F.cross_entropy(logits, batch["labels"] + offset_of(slot))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_sum += float(loss.detach()) * len(batch["labels"])
        seen += len(batch["labels"])
    steps_run = len(order)
    own = {head_of(s) for s in slots}
    state = state_to_numpy(get_adapter_state(model))
    arrays = {k: v for k, v in state.items() if (p := head_task(k)) is None or p[0] in own}
    metrics = {
        "num-examples": int(sum(s.num_train for s in slots)),
        "train-loss": loss_sum / seen if seen else 0.0,
        "train-seconds": time.perf_counter() - start,
        "train-steps": steps_run,
        # sorted by task name, as the heads (the union head: every local example)
        TASK_EXAMPLES: [s.num_train for s in slots]
        if mcfg.head == "per-task"
        else [sum(s.num_train for s in slots)],
    }
    return reply_content(arrays, metrics)


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Evaluate the shared adapter with each local task's head on that task's test items.

    Replies tag each result with its task (:func:`fedhet.core.task_eval.task_tag`): FedIT names
    its tasks in every upload by design (heads keyed by task name), so the tags tell the server
    nothing new.
    """
    mcfg: FedITConfig = ctx.run.method  # type: ignore[assignment]
    slots = device_slots(ctx, mcfg)
    if not slots:
        return eval_reply([], with_tasks=True)
    model = _model(ctx, mcfg, slots)
    _load(msg, model)
    head_of, offset_of, union_classes = _head_and_labels(ctx, mcfg, slots)
    results = evaluate_slots(
        model,
        slots,
        mcfg.eval_batch_size,
        lambda slot: select_task_head(model, head_of(slot)),
        label_offset=offset_of,
        num_classes=union_classes,
    )
    return eval_reply(results, with_tasks=True)


__all__ = ["evaluate", "train"]
