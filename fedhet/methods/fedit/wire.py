"""FedIT wire format: per-task heads keyed by task name (arXiv 2305.05644; METHODS.md §4.2).

Both halves import this module. A FedIT device uploads its one shared LoRA adapter plus the heads
of the tasks it holds; a head's keys carry the task name (``….heads.<task>.<param>``, from
:class:`fedhet.models.text.TaskHeads`), and :data:`TASK_EXAMPLES` gives one example count per
uploaded head, in the heads' sorted task-name order. Naming tasks is FedIT's design (heads are
averaged per task name); it is the task identity FL-TAC does without.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

HEAD_KEY = re.compile(r"^(?P<prefix>.*\.heads\.)(?P<task>[^.]+)\.(?P<param>.+)$")
TASK_EXAMPLES = "task-examples"
"""Train-reply metric: local training examples per uploaded head (sorted by task name)."""


UNION_HEAD = "all-tasks"
"""Head name of ``fedit.head=shared``: one head over the union of the run's labels."""


def label_offsets(classes: Mapping[str, int]) -> dict[str, int]:
    """Offset of each task's labels in the union head: classes of the tasks before it by name."""
    offsets, total = {}, 0
    for task in sorted(classes):
        offsets[task] = total
        total += int(classes[task])
    return offsets


def head_task(key: str) -> tuple[str, str] | None:
    """``(task, param)`` of a per-task head key, ``None`` for other keys."""
    match = HEAD_KEY.match(key)
    return (match.group("task"), match.group("param")) if match else None


def head_tasks(keys: Iterable[str]) -> list[str]:
    """Sorted task names of the head keys among ``keys`` (array names)."""
    return sorted({p[0] for k in keys if (p := head_task(k))})


__all__ = ["HEAD_KEY", "TASK_EXAMPLES", "UNION_HEAD", "head_task", "head_tasks", "label_offsets"]
