"""Shared server side of the methods whose devices each run their own pFedAFM-family model.

pFedAFM (Yi et al., arXiv 2404.17847) and its Standalone baseline plan each device's architecture
with the same rule (:mod:`fedhet.models.afm`), budget it against CNN-1 and report personalised
accuracy as a mean over devices; this base holds that once, as :mod:`fedhet.server.sizes` does
for the submodel-size methods. Neither method imports the other's folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

from flwr.app import Message, MetricRecord

from fedhet.core.summaries import mean_by_group, mean_over_devices
from fedhet.models.afm import ArchKnobs, arch_knobs, reference_bytes
from fedhet.plan import Budget, FleetReference
from fedhet.profile import DeviceProfile
from fedhet.server.strategy import FedhetStrategy, Node

log = logging.getLogger("fedhet")


class ArchFamilyStrategy(FedhetStrategy):
    """Per-device architecture plans, ``arch`` in every node entry, per-device mean accuracy.

    Subclasses set :attr:`knobs_model` (an :class:`~fedhet.models.afm.ArchKnobs` subclass) and
    :attr:`arch_assignment` (their config's ``arch-assignment``).
    """

    knobs_model: ClassVar[type[ArchKnobs]] = ArchKnobs
    personalised: ClassVar[bool] = True
    arch_assignment: str = "budget"

    def fleet_reference(self) -> FleetReference:
        """Budgets are fractions of training CNN-1, the family's largest model."""
        n_bytes = reference_bytes()
        fastest = min(
            (n.profile.bench_ms for n in self.nodes.values() if n.profile.bench_ms), default=None
        )
        return FleetReference(n_bytes, 4 * n_bytes, fastest)

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, ArchKnobs, str]:
        """The device's architecture; a declared ``arch`` outside the family excludes it."""
        try:
            knobs = arch_knobs(
                self.knobs_model,
                self.arch_assignment,
                budget.time,
                budget.memory,
                index=profile.partition_id,
                declared=profile.arch,
            )
        except ValueError as exc:
            log.error("device %s left out: %s", profile.device_id, exc)
            return False, self.knobs_model(rule="declared", infeasible=str(exc)), str(exc)
        if knobs.arch is None:
            log.warning(
                "device %s: %s; it will reply infeasible", profile.device_id, knobs.infeasible
            )
        return True, knobs, knobs.infeasible

    def mark_arch(self, node: Node) -> None:
        """Write the node's architecture into its entry of this round's metrics line."""
        self.current.node(node)["arch"] = node.plan.knobs.get("arch")

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """``eval-accuracy`` = mean over devices of their local-test accuracy (pFedAFM §5.5).

        Beside it: ``eval-accuracy-pooled`` (Σ correct / Σ samples), ``eval-accuracy-<arch>`` and
        whatever :meth:`evaluation_extras` adds.
        """
        pooled = super().aggregate_evaluate(server_round, replies)
        if pooled is None:
            return None
        evaluated = [e for e in self.current.nodes.values() if e.get("eval-examples")]
        out: dict[str, Any] = dict(pooled)
        out["eval-accuracy-pooled"] = out["eval-accuracy"]
        out["eval-accuracy"] = mean_over_devices(evaluated, "eval-accuracy") or 0.0
        extras = {"eval-accuracy-pooled": out["eval-accuracy-pooled"]}
        extras.update(self.evaluation_extras(evaluated))
        out.update(extras)
        self.current.extras.update(extras)
        for arch, value in mean_by_group(evaluated, "eval-accuracy", "arch").items():
            self.current.extras[f"eval-accuracy-{arch}"] = value
        return MetricRecord(out)

    def evaluation_extras(self, evaluated: list[dict[str, Any]]) -> dict[str, float]:
        """Method-specific per-round evaluation figures (default: none)."""
        return {}

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """None: every device has its own model (and its own header)."""
        return {}
