"""Per-node knobs of FedAvg and FedAvg-drop: none (every sampled device trains the full model)."""

from __future__ import annotations

from fedhet.plan import Knobs


class FedAvgKnobs(Knobs):
    """FedAvg has no per-device knobs; FedAvg-drop only decides participation (in the plan)."""
