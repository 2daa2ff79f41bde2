"""Shared server side of the LoRA adapter methods: FL-TAC (arXiv 2404.15384) and FedIT (2305.05644).

Both fine-tune a frozen text classifier with LoRA (METHODS.md §4): the server builds the same
seeded model as the devices to get v⁰ (from the model's frozen initial named adapter) and the
parameter counts the paper's Table 2 reports, evaluates nothing itself (text tasks are scored on
the devices), and reads per-task accuracy from evaluate replies only where the method may know
tasks (:meth:`AdapterStrategy.reads_task_tags`). Task tags a node is not allowed to send are never
read and never written to ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord
from peft import PeftModel

from fedhet.config import ConfigError, LoraAdapterSettings
from fedhet.core.lora import get_adapter_state
from fedhet.core.task_eval import SLOT_TASK, task_accuracy
from fedhet.data.text import task_classes
from fedhet.models.text import INITIAL_ADAPTER, backbone_parameter_count, text_lora_model
from fedhet.server.strategy import FedhetStrategy, Node

log = logging.getLogger("fedhet.adapters")


def task_accuracy_extras(extras: dict[str, Any], per_task: dict[str, dict[str, float]]) -> None:
    """Put :func:`fedhet.core.task_eval.task_accuracy` results and their mean into ``extras``.

    Adds ``task-accuracy`` and ``task-eval-items`` (per task name) and ``mean-task-accuracy``
    (unweighted mean over tasks, METHODS.md §4.4); nothing when there are no tagged results.
    """
    if not per_task:
        return
    extras["task-accuracy"] = {name: e["accuracy"] for name, e in per_task.items()}
    extras["task-eval-items"] = {name: int(e["total"]) for name, e in per_task.items()}
    extras["mean-task-accuracy"] = float(np.mean([e["accuracy"] for e in per_task.values()]))
    log.info("per-task accuracy %s", {k: round(e["accuracy"], 4) for k, e in per_task.items()})


class AdapterStrategy(FedhetStrategy):
    """Base of the LoRA adapter methods: seeded model and v⁰, counts, task-aware evaluation.

    Subclasses implement ``initial_arrays`` with :meth:`dataset_task_classes` and
    :meth:`build_adapter_model`, and say with :meth:`reads_task_tags` whose task tags they read.
    """

    mcfg: LoraAdapterSettings
    task_names: list[str]
    backbone_params: int = 0
    head_params: int = 0

    # ------------------------------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------------------------------
    def dataset_task_classes(self) -> dict[str, int]:
        """``{task: classes}`` of the run's text dataset (the names a server may know).

        Raises
        ------
        ConfigError
            If the dataset is not a text dataset or its package is not installed on the server.
        """
        try:
            return task_classes(self.shared.dataset, self.shared.seed)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None

    def build_adapter_model(
        self, num_labels: int, head_tasks: Sequence[str] = ()
    ) -> tuple[PeftModel, dict[str, np.ndarray]]:
        """The run's LoRA model as the devices build it, and v⁰ from its initial adapter.

        Also sets :attr:`backbone_params` (frozen parameters, never sent).
        """
        model = text_lora_model(
            self.shared.model, self.mcfg, num_labels, self.shared.seed, tuple(head_tasks)
        )
        v0 = {k: v.numpy().copy() for k, v in get_adapter_state(model, INITIAL_ADAPTER).items()}
        self.backbone_params = backbone_parameter_count(model)
        return model, v0

    def full_finetune_extras(self, n_devices: int) -> dict[str, int]:
        """Bytes full fine-tuning (backbone + one head, fp32) would send, per device and round."""
        per_device = 4 * (self.backbone_params + self.head_params)
        return {
            "full-finetune-bytes-per-device": per_device,
            "full-finetune-bytes-up": per_device * n_devices,
        }

    # ------------------------------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------------------------------
    def reads_task_tags(self, node: Node) -> bool:
        """Whether task tags in ``node``'s evaluate replies may be read (default: never)."""
        return False

    def evaluate_tasks(self, server_round: int, tagged: list[tuple[Node, dict[str, Any]]]) -> None:
        """Per-task accuracy of the replies whose task tags may be read, into the round's extras."""
        task_accuracy_extras(
            self.current.extras, task_accuracy([m for _, m in tagged], self.task_names)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Base accuracy; then :meth:`evaluate_tasks` on the replies of nodes that may tag tasks.

        A task tag from a node that may not send one is dropped from the round's node entries
        (so it never reaches ``metrics.jsonl``) and never read.
        """
        replies = list(replies)
        result = super().aggregate_evaluate(server_round, replies)
        tagged = []
        for reply in replies:
            node = self._reply_node(reply)
            if node is None or reply.has_error():
                continue
            if "eval-accuracy" not in self.current.nodes.get(node.node_id, {}):
                continue  # dropped by the base checks: never read
            if not self.reads_task_tags(node):
                self.current.node(node).pop(SLOT_TASK, None)
                continue
            tagged.append((node, dict(reply.content.metric_records.get("metrics", MetricRecord()))))
        if tagged:
            self.evaluate_tasks(server_round, tagged)
        return result

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """No server-side test set: text tasks are evaluated on the devices."""
        return {}


__all__ = ["AdapterStrategy", "task_accuracy_extras"]
