"""FedIT server: FedAvg over one shared LoRA adapter, task heads averaged per task name.

FedIT (arXiv 2305.05644) as FL-TAC's baseline (arXiv 2404.15384, METHODS.md §4.2): every device
trains the same rank-r adapter (``fedit.rank`` = 16) on all its tasks; the server takes the
sample-weighted mean of the adapter (B2 ``plain``) and, per task name, the mean of the heads the
devices holding that task sent, weighted by their examples of it. Task names are knowledge FL-TAC
lacks, so FL-TAC wins over this baseline are conservative.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Message, MetricRecord

from fedhet.config import ConfigError
from fedhet.core.lora import lora_keys
from fedhet.methods.fedit.config import FedITConfig
from fedhet.server.strategy import FedhetStrategy, Node, Reply
from fedhet.server.validate import ArraySpec, ReplyError, spec_of, validate_arrays

log = logging.getLogger("fedhet.fedit")

HEAD_KEY = re.compile(r"^(?P<prefix>.*\.heads\.)(?P<task>[^.]+)\.(?P<param>.+)$")


def head_task(key: str) -> tuple[str, str] | None:
    """``(task, param)`` of a per-task head key, ``None`` for other keys."""
    match = HEAD_KEY.match(key)
    return (match.group("task"), match.group("param")) if match else None


def weighted_average(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Σ w_i x_i / Σ w_i (equal weights when all are 0)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    return np.tensordot(w / w.sum(), np.stack(arrays), axes=1).astype(arrays[0].dtype)


class FedITStrategy(FedhetStrategy):
    """FedIT (arXiv 2305.05644): one shared adapter, FedAvg; per-task-name heads."""

    name: ClassVar[str] = "fedit"

    mcfg: FedITConfig

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """Seeded LoRA init (B = 0) and one seeded C_max-way head per task of the dataset."""
        from fedhet.client.text import backbone_parameter_count, task_classes, text_lora_model
        from fedhet.core.lora import get_adapter_state

        mcfg: FedITConfig = self.mcfg  # type: ignore[assignment]
        try:
            classes = task_classes(self.shared.dataset, self.shared.seed)
        except (ConfigError, FileNotFoundError) as exc:
            raise ConfigError(
                f"FedIT server cannot read the tasks of dataset {self.shared.dataset!r}: {exc}"
            ) from None
        self.task_names: list[str] = list(classes)
        self.num_labels = mcfg.num_labels or max(classes.values())
        model = text_lora_model(
            self.shared.model,
            self.num_labels,
            mcfg.rank,
            mcfg.lora_alpha(),
            mcfg.dropout,
            mcfg.modules(),
            self.shared.seed,
            tuple(sorted(self.task_names)),
        )
        state = {k: v.numpy().copy() for k, v in get_adapter_state(model).items()}
        self.lora_spec: dict[str, ArraySpec] = spec_of(
            {k: state[k] for k in lora_keys({k: torch.from_numpy(v) for k, v in state.items()})}
        )
        first = sorted(self.task_names)[0]
        self.head_spec: dict[str, ArraySpec] = {}
        self.head_prefix = ""
        for key, value in state.items():
            parsed = head_task(key)
            if parsed and parsed[0] == first:
                self.head_spec[parsed[1]] = (tuple(value.shape), np.dtype(value.dtype))
                self.head_prefix = key[: key.index(f".heads.{first}.") + len(".heads.")]
        self.lora_params = int(sum(state[k].size for k in self.lora_spec))
        self.head_params = int(sum(int(np.prod(s)) for s, _ in self.head_spec.values()))
        self.backbone_params = backbone_parameter_count(model)
        return state

    def summary(self) -> None:
        super().summary()
        log.info(
            "  FedIT: rank %d, %d LoRA values, %d per task head, tasks %s, backbone %d",
            self.mcfg.rank,
            self.lora_params,
            self.head_params,  # type: ignore[attr-defined]
            self.task_names,
            self.backbone_params,
        )

    def reply_spec(
        self, node: Node, server_round: int, names: list[str]
    ) -> tuple[dict[str, ArraySpec], dict[str, int]]:
        """Checked before decoding: the adapter and a template-shaped head per named task."""
        spec = dict(self.lora_spec)
        for task in sorted({p[0] for k in names if (p := head_task(k))}):
            spec.update({f"{self.head_prefix}{task}.{p}": s for p, s in self.head_spec.items()})
        return spec, {}

    def validate_reply(
        self, node: Node, server_round: int, arrays: dict[str, np.ndarray], metrics: dict[str, Any]
    ) -> None:
        """The whole adapter plus at least one task head of the template's shapes."""
        heads = sorted({p[0] for k in arrays if (p := head_task(k))})
        if not heads:
            raise ReplyError("no task head uploaded")
        expected = dict(self.lora_spec)
        for task in heads:
            expected.update({f"{self.head_prefix}{task}.{p}": s for p, s in self.head_spec.items()})
        validate_arrays(arrays, expected, required=True)
        examples = list(metrics.get("task-examples", []))
        if len(examples) != len(heads) or any(
            not np.isfinite(float(n)) or float(n) < 0 for n in examples
        ):
            raise ReplyError(f"'task-examples' must give one count per head ({len(heads)})")

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Sample-weighted mean of the adapter; per task name, example-weighted mean of heads."""
        for key in self.lora_spec:
            self.global_arrays[key] = weighted_average(
                [r.arrays[key] for r in replies], [float(r.num_examples) for r in replies]
            )
        per_task: dict[str, list[tuple[dict[str, np.ndarray], float]]] = {}
        for r in replies:
            tasks = sorted({p[0] for k in r.arrays if (p := head_task(k))})
            for task, n in zip(tasks, r.metrics["task-examples"], strict=True):
                head = {p: r.arrays[f"{self.head_prefix}{task}.{p}"] for p in self.head_spec}
                # a head's weight never exceeds the reply's (capped) example count
                per_task.setdefault(task, []).append((head, min(float(n), float(r.num_examples))))
        for task, heads in per_task.items():
            if task not in self.task_names:
                self.task_names.append(task)
            for param in self.head_spec:
                self.global_arrays[f"{self.head_prefix}{task}.{param}"] = weighted_average(
                    [h[param] for h, _ in heads], [n for _, n in heads]
                )
        self.current.extras.update(
            {
                "trainable-params-per-device": self.lora_params
                + self.head_params * len(self.task_names),
                "lora-params": self.lora_params,
                "head-params-per-task": self.head_params,
                "uploaded-params": sum(
                    self.lora_params + self.head_params * len(r.metrics["task-examples"])
                    for r in replies
                ),
                "full-finetune-bytes-per-device": 4 * (self.backbone_params + self.head_params),
                "full-finetune-bytes-up": 4
                * (self.backbone_params + self.head_params)
                * len(replies),
            }
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Base accuracy plus per-task accuracy (simulation evaluator, as FL-TAC's)."""
        from fedhet.client.text import task_accuracy, task_accuracy_extras

        replies = list(replies)
        result = super().aggregate_evaluate(server_round, replies)
        metrics = [
            dict(r.content.metric_records.get("metrics", MetricRecord()))
            for r in replies
            if not r.has_error() and self._reply_node(r) is not None
        ]
        task_accuracy_extras(self.current.extras, task_accuracy(metrics, self.task_names))
        return result

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """No server-side test set: text tasks are evaluated on the devices."""
        return {}
