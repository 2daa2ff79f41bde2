"""FedAvg and FedAvg-drop strategies."""

from __future__ import annotations

from typing import ClassVar

from fedhet.methods.fedavg.plan import FedAvgKnobs
from fedhet.plan import Budget
from fedhet.profile import DeviceProfile
from fedhet.server.strategy import FedhetStrategy


class FedAvgStrategy(FedhetStrategy):
    """Every sampled device trains the full global model; sample-weighted average (B2 ``plain``)."""

    name: ClassVar[str] = "fedavg"
    knobs_model = FedAvgKnobs
    #: The train message carries the global model the evaluate message would carry.
    fused_evaluation: ClassVar[bool] = True


class FedAvgDropStrategy(FedAvgStrategy):
    """FedAvg restricted to devices that can afford full training (METHODS.md §2, CoCoFL baseline)."""

    name: ClassVar[str] = "fedavg-drop"

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, FedAvgKnobs, str]:
        """Participate only with a full budget (T = M = D_min = 1)."""
        if budget.is_full:
            return True, FedAvgKnobs(), ""
        return (
            False,
            FedAvgKnobs(),
            (
                f"budget below full training (T={budget.time:.2f}, M={budget.memory:.2f}, "
                f"D_min={budget.upload_min:.2f})"
            ),
        )
