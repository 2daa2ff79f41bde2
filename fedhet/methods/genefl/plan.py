"""GENE-FL's per-device plan knobs (METHODS.md §2): participation and, optionally, scaled steps."""

from __future__ import annotations

from pydantic import Field

from fedhet.plan import Knobs


class GeneflKnobs(Knobs):
    """What the server fixes for a device at registration.

    Attributes
    ----------
    availability : float
        Probability of being online in a round (the device's declared availability).
    steps : int
        Local SGD steps per round; 0 = the shared ``local-steps``/``local-epochs`` rule.
        With ``genefl.scale-steps``: max(1, round(E·T)).
    """

    availability: float = Field(1.0, ge=0, le=1)
    steps: int = Field(0, ge=0)


def scaled_steps(base_steps: int, time_budget: float, scale: bool) -> int:
    """E_i = max(1, round(E·T)) when ``scale`` and E > 0, else E (0 keeps the epoch rule)."""
    if not scale or base_steps <= 0:
        return base_steps
    return max(1, round(base_steps * time_budget))
