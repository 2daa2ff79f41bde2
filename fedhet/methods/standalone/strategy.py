"""Standalone server: plans each device's architecture and collects metrics; nothing is averaged.

The "Standalone" baseline of pFedAFM (Yi et al., arXiv 2404.17847, §5; METHODS.md §5.6): each
device trains its own CNN-x (the pFedAFM architecture rule, :mod:`fedhet.models.afm`) on its own
data, 2E epochs per round (compute-matched with pFedAFM's two stages), and never communicates
model parameters. It still registers, gets a plan and reports metrics, so it runs side by side
with pFedAFM; its messages carry config and metrics only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from flwr.app import Message, MetricRecord

from fedhet.config import ConfigError, RunConfig
from fedhet.core.summaries import mean_by_group, mean_over_devices
from fedhet.methods.standalone.config import StandaloneConfig
from fedhet.methods.standalone.plan import StandaloneKnobs, plan_knobs
from fedhet.models.afm import reference_bytes
from fedhet.models.cnn import AFM_ARCHS
from fedhet.plan import Budget, FleetReference, Knobs
from fedhet.profile import DeviceProfile
from fedhet.server.run_dir import RunDir
from fedhet.server.strategy import FedhetStrategy, Node, Reply
from fedhet.server.validate import ArraySpec

log = logging.getLogger("fedhet")


class StandaloneStrategy(FedhetStrategy):
    """No federation: per-device architecture plans, empty payloads, per-device metrics.

    Metrics: per node ``arch`` and ``eval-accuracy``; per round ``eval-accuracy`` = mean over
    devices of their local-test accuracy, ``eval-accuracy-pooled`` and ``eval-accuracy-<arch>``.
    """

    knobs_model: ClassVar[type[Knobs]] = StandaloneKnobs
    name: ClassVar[str] = "standalone"
    personalised: ClassVar[bool] = True
    #: No model parameters travel and no global state exists.
    communicates: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        if cfg.shared.model not in AFM_ARCHS:
            raise ConfigError(
                f"invalid run config: 'model' = {cfg.shared.model!r} is not usable by method "
                f"'standalone' (it trains the pFedAFM family); use one of: {', '.join(AFM_ARCHS)}"
            )
        self.scfg: StandaloneConfig = cfg.method_as(StandaloneConfig)
        super().__init__(cfg, run_dir)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """No global model."""
        return {}

    def fleet_reference(self) -> FleetReference:
        """Budgets are fractions of training CNN-1, as for pFedAFM."""
        n_bytes = reference_bytes()
        fastest = min(
            (n.profile.bench_ms for n in self.nodes.values() if n.profile.bench_ms), default=None
        )
        return FleetReference(n_bytes, 4 * n_bytes, fastest)

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, Knobs, str]:
        try:
            knobs = plan_knobs(
                self.scfg.arch_assignment,
                budget.time,
                budget.memory,
                index=profile.partition_id,
                declared=profile.arch,
            )
        except ValueError as exc:
            log.error("device %s left out: %s", profile.device_id, exc)
            return False, StandaloneKnobs(rule="declared", infeasible=str(exc)), str(exc)
        return True, knobs, knobs.infeasible

    def _mark(self, node: Node) -> None:
        self.current.node(node)["arch"] = node.plan.knobs.get("arch")

    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._mark(node)
        return {}, {}

    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._mark(node)
        return {}, {}

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        """A train reply carries no arrays."""
        return {}

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Nothing to aggregate."""

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """``eval-accuracy`` = mean over devices of their local-test accuracy (pooled beside it)."""
        pooled = super().aggregate_evaluate(server_round, replies)
        if pooled is None:
            return None
        evaluated = [e for e in self.current.nodes.values() if e.get("eval-examples")]
        out = dict(pooled)
        out["eval-accuracy-pooled"] = out["eval-accuracy"]
        out["eval-accuracy"] = mean_over_devices(evaluated, "eval-accuracy") or 0.0
        self.current.extras["eval-accuracy-pooled"] = out["eval-accuracy-pooled"]
        for arch, value in mean_by_group(evaluated, "eval-accuracy", "arch").items():
            self.current.extras[f"eval-accuracy-{arch}"] = value
        return MetricRecord(out)

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """None: there is no global model."""
        return {}
