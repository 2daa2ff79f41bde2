"""Shared server side of methods whose devices train a submodel of size γ from a ladder.

FIARSE (top-γ by magnitude), HeteroFL (static width) and FedRolex (rolling width) assign sizes the
same way (METHODS.md §2, FIARSE row) and report the same per-size metrics (§7.2 step 7), so a
comparison trains the same parameter budget per device and is scored alike. The settings and
ladder maths live in :mod:`fedhet.sizes` (no Flower), which the methods' configs subclass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedhet.config import RunConfig
from fedhet.core.predictions import PREDICTED_KEY, majority_share, pool_counts
from fedhet.plan import Budget, SizeKnobs, SizeSource
from fedhet.profile import DeviceProfile
from fedhet.server.run_dir import RunDir
from fedhet.server.strategy import FedhetStrategy
from fedhet.sizes import SizeLadderConfig, size_key


class SizedStrategy(FedhetStrategy):
    """Base of the submodel-size methods: size plan, evaluation cadence, per-size metrics.

    Adds to ``metrics.jsonl``: ``model-accuracy-g<γ>`` = Model(γ) (pooled accuracy on the local
    tests of size-γ devices) and ``local-accuracy`` = Local (mean over devices of their own size's
    local-test accuracy), METHODS.md §7.2 step 7; ``server-accuracy-g<γ>`` per size on the global
    test set. Next to each per-size accuracy, the majority-class share of the same predictions
    (:func:`fedhet.core.predictions.majority_share`): ``server-majority-share-g<γ>`` and
    ``model-majority-share-g<γ>`` (counts pooled over the size-γ devices, logged only when every
    one of them reported its counts), so a slice predicting one class is visible.
    """

    #: Devices train different parts (sizes / windows): see ``comparable_updates`` in hooks.
    comparable_updates: ClassVar[bool] = False

    knobs_model: ClassVar[type[SizeKnobs]] = SizeKnobs

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        super().__init__(cfg, run_dir)
        self.size_cfg: SizeLadderConfig = cfg.method_as(SizeLadderConfig)

    def device_size(self, profile: DeviceProfile, budget: Budget) -> tuple[float, SizeSource]:
        """``(γ, source)`` of a device (METHODS.md §2; see :meth:`SizeLadderConfig.device_size`)."""
        return self.size_cfg.device_size(
            budget.scalar, profile.partition_id, profile.num_partitions
        )

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, SizeKnobs, str]:
        """Every device participates with size γ of :meth:`device_size`."""
        gamma, source = self.device_size(profile, budget)
        return True, self.knobs_model(gamma=gamma, size_source=source), ""

    def evaluation_sizes(self) -> tuple[float, ...]:
        """Sizes scored on the global test set (default: the ladder)."""
        return self.size_cfg.sizes

    def size_model(self, gamma: float, num_classes: int) -> Any:
        """The global model's size-γ submodel, ready to evaluate (each method extracts its own)."""
        raise NotImplementedError

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """Global-test accuracy of every size's submodel (``server-accuracy-g<γ>``) and their mean
        over the ladder, ``server-accuracy`` = Global (METHODS.md §7.2 step 7). One definition for
        every size method, so their Global numbers compare. Each size also gets the majority-class
        share of its predictions, ``server-majority-share-g<γ>``."""
        if not self.evaluates(server_round):
            return {}
        data = self._global_test()
        if data is None:
            return {}
        from fedhet.core.training import evaluate_predictions

        out: dict[str, float] = {}
        for gamma in self.evaluation_sizes():
            model = self.size_model(gamma, data.num_classes)
            correct, total, _, counts = evaluate_predictions(model, data, batch_size=500)
            out[f"server-accuracy-{size_key(gamma)}"] = correct / max(total, 1)
            share = majority_share(counts)
            if share is not None:
                out[f"server-majority-share-{size_key(gamma)}"] = share
        out["server-accuracy"] = float(
            np.mean([out[f"server-accuracy-{size_key(g)}"] for g in self.size_cfg.sizes])
        )
        return out

    def evaluates(self, server_round: int) -> bool:
        """Evaluate this round (every ``eval-every`` rounds and the last)."""
        every = self.size_cfg.eval_every
        return server_round % every == 0 or server_round == self.shared.num_server_rounds

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate messages only in rounds that :meth:`evaluates`."""
        if not self.evaluates(server_round):
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Pooled local accuracy, plus Model(γ) per size and Local (METHODS.md §7.2 step 7), and
        the majority-class share of each size's pooled predictions."""
        result = super().aggregate_evaluate(server_round, replies)
        per_size: dict[float, list[tuple[int, int]]] = {}
        predicted: dict[float, list[Any]] = {}
        for node_id, entry in self.current.nodes.items():
            node = self.nodes.get(node_id)
            n = entry.get("eval-examples")
            if node is None or entry.get("eval-accuracy") is None or not n:
                continue
            gamma = float(node.plan.knobs["gamma"])
            per_size.setdefault(gamma, []).append((int(entry["eval-correct"]), int(n)))
            predicted.setdefault(gamma, []).append(entry.get(PREDICTED_KEY))
        if per_size:
            for gamma, results in sorted(per_size.items()):
                correct = sum(c for c, _ in results)
                total = sum(n for _, n in results)
                self.current.extras[f"model-accuracy-{size_key(gamma)}"] = correct / total
                counts = predicted[gamma]
                share = None if None in counts else majority_share(pool_counts(counts))
                if share is not None:
                    self.current.extras[f"model-majority-share-{size_key(gamma)}"] = share
            accs = [c / n for results in per_size.values() for c, n in results]
            self.current.extras["local-accuracy"] = float(np.mean(accs))
        return result
