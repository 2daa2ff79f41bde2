"""Per-node knobs of FIARSE (arXiv 2407.19389, §5; METHODS.md §2 and §7.2)."""

from __future__ import annotations

from fedhet.plan import SizeKnobs


class FiarseKnobs(SizeKnobs):
    """The device's submodel size γ (top-γ of the parameters by magnitude) and its source.

    The thresholds τ that select the top-γ entries change every round with the global model, so
    they travel in the message config (``fiarse-thresholds``), not in the plan.
    """
