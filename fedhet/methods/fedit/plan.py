"""Per-node knobs of FedIT (arXiv 2305.05644): none, every device trains the shared adapter."""

from __future__ import annotations

from fedhet.plan import Knobs


class FedITKnobs(Knobs):
    """FedIT has no per-device knobs (one adapter, the same local steps on every device)."""
