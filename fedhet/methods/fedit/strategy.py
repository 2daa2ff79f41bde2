"""FedIT server: FedAvg over one shared LoRA adapter, task heads averaged per task name.

FedIT (arXiv 2305.05644) as FL-TAC's baseline (arXiv 2404.15384, METHODS.md §4.2): every device
trains the same rank-r adapter (``fedit.rank`` = 16) on all its tasks; the server takes the
sample-weighted mean of the adapter (B2 ``plain``) and, per task name, the mean of the heads the
devices holding that task sent, weighted by their examples of it. With ``fedit.head=shared``
there is one head over the union of the run's labels, averaged over every device like the
adapter, and no model is told an item's task.

Task identity is part of FedIT's design, not a leak: uploads name each head's task
(:mod:`fedhet.methods.fedit.wire`), so the per-task tags of evaluate replies
(:mod:`fedhet.core.task_eval`) tell the server nothing it is not sent anyway, and the per-task
evaluator runs in every run. It is knowledge FL-TAC lacks, so FL-TAC wins over this baseline are
conservative. Checkpoints hold only the global adapter and heads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fedhet.config import ConfigError
from fedhet.core.aggregate import Contribution, weighted_mean
from fedhet.core.lora import lora_keys
from fedhet.methods.fedit.config import FedITConfig
from fedhet.methods.fedit.plan import FedITKnobs
from fedhet.methods.fedit.wire import TASK_EXAMPLES, UNION_HEAD, head_task, head_tasks
from fedhet.server.adapters import AdapterStrategy
from fedhet.server.strategy import Node, Reply
from fedhet.server.validate import ArraySpec, ReplyError, spec_of, validate_arrays

log = logging.getLogger("fedhet.fedit")


def example_weighted_mean(
    states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Σ w_i x_i / Σ w_i per tensor (:func:`fedhet.core.aggregate.weighted_mean`, B2 ``plain``).

    Equal weights when the weights sum to 0; keys and dtypes are those of ``states[0]``.
    """
    if sum(weights) <= 0:
        weights = [1.0] * len(states)
    contribs = [Contribution(s, float(w)) for s, w in zip(states, weights, strict=True)]
    return weighted_mean(contribs, states[0])


class FedITStrategy(AdapterStrategy):
    """FedIT (arXiv 2305.05644): one shared adapter, FedAvg; per-task-name heads."""

    name: ClassVar[str] = "fedit"
    knobs_model = FedITKnobs

    mcfg: FedITConfig

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """Seeded LoRA init (B = 0) and one seeded C_max-way head per task of the dataset."""
        mcfg: FedITConfig = self.mcfg  # type: ignore[assignment]
        try:
            classes = self.dataset_task_classes()
        except ConfigError as exc:
            raise ConfigError(
                f"FedIT server cannot read the tasks of dataset {self.shared.dataset!r}: {exc}"
            ) from None
        if mcfg.head == "shared":  # one head over the union of the run's labels
            self.task_names = [UNION_HEAD]
            self.num_labels = sum(classes.values())
        else:
            self.task_names = list(classes)
            self.num_labels = mcfg.num_labels or max(classes.values())
        _, state = self.build_adapter_model(self.num_labels, tuple(sorted(self.task_names)))
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
        return state

    def summary(self) -> None:
        """Log the settings and the parameter counts."""
        super().summary()
        log.info(
            "  FedIT: rank %d, %d LoRA values, %d per task head, tasks %s, backbone %d",
            self.mcfg.rank,
            self.lora_params,
            self.head_params,
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
        heads = head_tasks(arrays)
        if not heads:
            raise ReplyError("no task head uploaded")
        shared = self.mcfg.head == "shared"
        if shared != (heads == [UNION_HEAD]):
            raise ReplyError(f"heads {heads} do not fit fedit.head={self.mcfg.head!r}")
        expected = dict(self.lora_spec)
        for task in heads:
            expected.update({f"{self.head_prefix}{task}.{p}": s for p, s in self.head_spec.items()})
        validate_arrays(arrays, expected, required=True)
        examples = list(metrics.get(TASK_EXAMPLES, []))
        if len(examples) != len(heads) or any(
            not np.isfinite(float(n)) or float(n) < 0 for n in examples
        ):
            raise ReplyError(f"{TASK_EXAMPLES!r} must give one count per head ({len(heads)})")

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Sample-weighted mean of the adapter; per task name, example-weighted mean of heads."""
        self.global_arrays.update(
            example_weighted_mean(
                [{k: r.arrays[k] for k in self.lora_spec} for r in replies],
                [float(r.num_examples) for r in replies],
            )
        )
        per_task: dict[str, list[tuple[dict[str, np.ndarray], float]]] = {}
        for r in replies:
            tasks = head_tasks(r.arrays)
            for task, n in zip(tasks, r.metrics[TASK_EXAMPLES], strict=True):
                head = {p: r.arrays[f"{self.head_prefix}{task}.{p}"] for p in self.head_spec}
                if float(n) > 0:  # a head trained on no example carries no weight
                    # and never more than the reply's (capped) example count
                    per_task.setdefault(task, []).append((head, min(float(n), r.num_examples)))
        for task, heads in per_task.items():
            if task not in self.task_names:
                self.task_names.append(task)
            mean = example_weighted_mean([h for h, _ in heads], [n for _, n in heads])
            for param, value in mean.items():
                self.global_arrays[f"{self.head_prefix}{task}.{param}"] = value
        self.current.extras.update(
            {
                "trainable-params-per-device": self.lora_params
                + self.head_params * len(self.task_names),
                "lora-params": self.lora_params,
                "head-params-per-task": self.head_params,
                "uploaded-params": sum(
                    self.lora_params + self.head_params * len(r.metrics[TASK_EXAMPLES])
                    for r in replies
                ),
                **self.full_finetune_extras(len(replies)),
            }
        )

    def reads_task_tags(self, node: Node) -> bool:
        """Always: FedIT's uploads name their tasks anyway (per-task accuracy in every run)."""
        return True
