"""Per-node knobs of FL-TAC (arXiv 2404.15384; METHODS.md §2)."""

from __future__ import annotations

from pydantic import Field

from fedhet.plan import Knobs


class FltacKnobs(Knobs):
    """How much a device trains per round, from its time budget T.

    Attributes
    ----------
    steps : int
        Local steps τ_i per slot (``fltac.scale-steps``: max(1, round(τ·T))).
    slot_share : float
        Share of its slots a device trains per round (``fltac.scale-slots``: T, else 1).
    rank : int
        LoRA rank, fleet-wide (K-means needs equal shapes).
    """

    steps: int = Field(ge=1)
    slot_share: float = Field(gt=0, le=1)
    rank: int = Field(ge=1)
