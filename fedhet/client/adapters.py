"""Device side shared by the LoRA adapter methods: FL-TAC (arXiv 2404.15384) and FedIT (2305.05644).

What a device needs before its method-specific loop: its local text tasks ("slots",
:mod:`fedhet.data.text_slots`) under the run and node configs, cached per node; the method's LoRA
model (:func:`fedhet.models.text.text_lora_model`) from a source this node can load offline; v⁰
from the model's initial named adapter; and a per-slot evaluation whose reply names tasks only
when the evaluator may know them (:mod:`fedhet.core.task_eval`).

In one process (simulation, benchmarks) the data and one LoRA model per configuration are cached;
devices swap their adapter states in and out of the model's active adapter, so every call must
load a complete state.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from flwr.app import RecordDict
from peft import PeftModel

from fedhet.client.runtime import ClientContext, reply_content
from fedhet.config import LoraAdapterSettings
from fedhet.core.lora import evaluate_adapter, get_adapter_state
from fedhet.core.task_eval import slot_eval_metrics
from fedhet.data.text import task_classes
from fedhet.data.text_slots import TextDataSpec, TextSlot, cached_slots, eval_batches
from fedhet.models.text import (
    INITIAL_ADAPTER,
    build_text_classifier,
    text_lora_model,
    text_tokenizer,
)

log = logging.getLogger("fedhet.client.adapters")

SlotResult = tuple[int, str, int, int, float]
"""``(slot index, task, correct, total, loss_sum)`` of one evaluated slot."""


def text_data_spec(ctx: ClientContext, max_length: int) -> TextDataSpec:
    """The :class:`~fedhet.data.text_slots.TextDataSpec` of this device under the run config."""
    shared = ctx.run.shared
    return TextDataSpec(
        dataset=shared.dataset,
        data_path=ctx.node.data_path,
        declared_tasks=tuple(ctx.node.task_list),
        partition_id=ctx.node.partition_id,
        num_partitions=ctx.node.num_partitions,
        device_id=ctx.device_id,
        alpha=shared.dirichlet_alpha,
        seed=shared.seed,
        max_train=shared.max_train_per_client,
        local_test_size=shared.local_test_size,
        model=shared.model,
        max_length=max_length,
    )


def device_slots(ctx: ClientContext, settings: LoraAdapterSettings) -> list[TextSlot]:
    """This device's slots, tokenised (disk cache per node, in-process cache on top).

    Parameters
    ----------
    ctx : ClientContext
    settings : LoraAdapterSettings
        The method's settings (``max_length``: token length of every item).

    Returns
    -------
    list of TextSlot
        In slot order; empty when the device holds no text data.
    """
    spec = text_data_spec(ctx, settings.max_length)
    cache_file = ctx.cache_dir() / f"text-data-{spec.digest()}.pt"
    return list(cached_slots(spec, str(cache_file), text_tokenizer))


def run_task_classes(ctx: ClientContext) -> dict[str, int]:
    """``{task: classes}`` of the run's text dataset; empty when the device cannot read it."""
    try:
        return task_classes(ctx.run.shared.dataset, ctx.run.shared.seed)
    except Exception:  # own CSV data and no run-wide task table on this device
        return {}


def head_outputs(
    settings: LoraAdapterSettings, classes: Mapping[str, int], slots: Sequence[TextSlot]
) -> int:
    """C_max: ``num-labels`` if set, else the most classes of any known task (at least 2)."""
    if settings.num_labels:
        return settings.num_labels
    return max([*classes.values(), *(s.num_classes for s in slots)], default=2)


def node_model_source(ctx: ClientContext, model: str, num_labels: int, seed: int) -> str:
    """Where this node loads ``model`` from: a per-node on-disk copy in deployment.

    ``minilm`` and local folders are already on disk and are used as they are. Otherwise (tiny
    BERT, a Hugging Face id) a non-simulated node saves the built classifier and tokenizer once
    under ``ctx.cache_dir()`` and later processes load that folder.
    """
    if ctx.simulated or model == "minilm" or os.path.isdir(model):
        return model
    key = hashlib.sha256(f"{model}|{num_labels}|{seed}".encode()).hexdigest()[:12]
    folder = ctx.cache_dir() / f"text-model-{key}"
    if not (folder / "config.json").is_file():
        net, tokenizer = build_text_classifier(model, num_labels, seed)
        net.save_pretrained(str(folder))  # type: ignore[operator]
        tokenizer.save_pretrained(str(folder))
        log.info("saved %s for this node in %s", model, folder)
    return str(folder)


def adapter_model(
    ctx: ClientContext,
    settings: LoraAdapterSettings,
    num_labels: int,
    head_tasks: Sequence[str] = (),
) -> PeftModel:
    """The method's LoRA model on this node (cached per process; load a full state before use)."""
    shared = ctx.run.shared
    source = node_model_source(ctx, shared.model, num_labels, shared.seed)
    return text_lora_model(source, settings, num_labels, shared.seed, head_tasks)


def initial_adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """v⁰: the state of the model's frozen initial adapter (a fresh copy)."""
    return get_adapter_state(model, INITIAL_ADAPTER)


def evaluate_slots(
    model: PeftModel,
    slots: Sequence[TextSlot],
    batch_size: int,
    prepare: Callable[[TextSlot], None],
    label_offset: Callable[[TextSlot], int] | None = None,
    num_classes: int = 0,
) -> list[SlotResult]:
    """Evaluate each slot on its local test items after ``prepare(slot)`` set the model up.

    ``prepare`` loads the slot's adapter (FL-TAC) or selects its task's head (FedIT); scores are
    on logits masked to the task's classes (:func:`fedhet.core.lora.evaluate_adapter`). A head
    over the union of several tasks' labels (FedIT ``head=shared``) passes the slot's
    ``label_offset`` into it and ``num_classes``, the union's size: nothing is masked then.
    """
    results = []
    for slot in slots:
        prepare(slot)
        offset = label_offset(slot) if label_offset is not None else 0
        batches = (
            {**b, "labels": b["labels"] + offset} for b in eval_batches(slot.test, batch_size)
        )
        correct, total, loss = evaluate_adapter(model, batches, num_classes or slot.num_classes)
        results.append((slot.index, slot.task, correct, total, loss))
    return results


def eval_reply(results: Sequence[SlotResult], *, with_tasks: bool) -> RecordDict:
    """The evaluate reply of per-slot results (task tags only when ``with_tasks``)."""
    return reply_content(None, slot_eval_metrics(results, with_tasks=with_tasks))


__all__ = [
    "SlotResult",
    "adapter_model",
    "device_slots",
    "eval_reply",
    "evaluate_slots",
    "head_outputs",
    "initial_adapter_state",
    "node_model_source",
    "run_task_classes",
    "text_data_spec",
]
