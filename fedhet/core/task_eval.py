"""Per-slot evaluation metrics of the multi-task adapter methods, and per-task accuracy from them.

FL-TAC (arXiv 2404.15384) and FedIT (arXiv 2305.05644) evaluate every local task ("slot") of a
device on its own local test items (METHODS.md §4.4). An evaluate reply carries, besides the sums
``num-examples``, ``eval-correct`` and ``eval-loss``, one value per slot in the lists
:data:`SLOT_INDEX`, :data:`SLOT_CORRECT` and :data:`SLOT_TOTAL`. These name no task.

A task tag per slot (:data:`SLOT_TASK`, :func:`task_tag` = CRC-32 of the task name) is added only
where the evaluator may know the task: always for FedIT, whose uploads are keyed by task name by
design, and for FL-TAC only in simulation with ``fltac.oracle-eval`` (issue 10 item 8: FL-TAC's
task identities never leave a device). :func:`task_accuracy` turns tagged replies into per-task
accuracy. Nothing here imports Flower; both halves of a method import this module.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

SLOT_INDEX = "eval-slot-index"
SLOT_CORRECT = "eval-slot-correct"
SLOT_TOTAL = "eval-slot-total"
SLOT_TASK = "eval-slot-task"
"""Evaluate-reply metric lists (one value per evaluated slot, in the same order)."""


def task_tag(name: str) -> int:
    """A stable integer id of a task name (CRC-32), for evaluation-side metrics only."""
    return int(zlib.crc32(name.encode("utf-8")))


def slot_eval_metrics(
    results: Sequence[tuple[int, str, int, int, float]], *, with_tasks: bool
) -> dict[str, Any]:
    """Evaluate-reply metrics from per-slot ``(slot index, task, correct, total, loss_sum)``.

    Parameters
    ----------
    results : sequence of tuple
        One entry per evaluated slot.
    with_tasks : bool
        Add :data:`SLOT_TASK` (:func:`task_tag` of each slot's task). Without it, no task name or
        tag is in the metrics.

    Returns
    -------
    dict
        ``num-examples``, ``eval-correct``, ``eval-loss`` (sums) and the per-slot lists.
    """
    metrics: dict[str, Any] = {
        "num-examples": int(sum(r[3] for r in results)),
        "eval-correct": int(sum(r[2] for r in results)),
        "eval-loss": float(sum(r[4] for r in results)),
        SLOT_INDEX: [int(r[0]) for r in results],
        SLOT_CORRECT: [int(r[2]) for r in results],
        SLOT_TOTAL: [int(r[3]) for r in results],
    }
    if with_tasks:
        metrics[SLOT_TASK] = [task_tag(r[1]) for r in results]
    return metrics


def task_accuracy(
    replies: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-task accuracy = Σ correct / Σ items over every slot of the task (METHODS.md §4.4).

    Parameters
    ----------
    replies : sequence of mapping
        Evaluate-reply metrics built by :func:`slot_eval_metrics` with ``with_tasks=True``;
        replies without task tags contribute nothing.
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
        tags = list(metrics.get(SLOT_TASK, []))
        correct = list(metrics.get(SLOT_CORRECT, []))
        total = list(metrics.get(SLOT_TOTAL, []))
        for tag, c, n in zip(tags, correct, total, strict=True):
            name = by_tag.get(int(tag), f"task-{int(tag)}")
            entry = out.setdefault(name, {"correct": 0, "total": 0, "slots": 0})
            entry["correct"] += int(c)
            entry["total"] += int(n)
            entry["slots"] += 1
    for entry in out.values():
        entry["accuracy"] = entry["correct"] / entry["total"] if entry["total"] else 0.0
    return dict(sorted(out.items()))


__all__ = [
    "SLOT_CORRECT",
    "SLOT_INDEX",
    "SLOT_TASK",
    "SLOT_TOTAL",
    "slot_eval_metrics",
    "task_accuracy",
    "task_tag",
]
