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
    """FedAvg restricted to devices that can afford full training (METHODS.md §2, CoCoFL baseline).

    Each round min(m, |full-budget pool|) devices train, m being the sample size every other
    method draws from the whole fleet. Evaluation covers the same devices as any other method's:
    every device can run the global model, whatever its training budget.
    """

    name: ClassVar[str] = "fedavg-drop"
    #: m = ⌊fraction-train · available devices⌋ as for every other method; min(m, |strong pool|)
    #: train (CoCoFL's code and METHODS.md §6.2), so the baseline is not starved of devices.
    sample_size_of_all: ClassVar[bool] = True

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
