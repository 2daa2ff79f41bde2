"""Standalone's per-device plan knob: the local architecture (the pFedAFM rule, METHODS.md §2 and §5.6).

Neutral module (no Flower, no server import): the strategy builds the knobs, the client reads them.
The rule itself lives in :mod:`fedhet.models.afm` (shared with pFedAFM; this folder does not import it).
"""

from __future__ import annotations

from fedhet.models.afm import ArchKnobs, arch_knobs


class StandaloneKnobs(ArchKnobs):
    """The plan's ``knobs`` for one Standalone device (fields: :class:`~fedhet.models.afm.ArchKnobs`)."""


def plan_knobs(
    assignment: str,
    time: float,
    memory: float,
    *,
    index: int | None,
    declared: str | None,
) -> StandaloneKnobs:
    """Knobs of one device (see :func:`fedhet.models.afm.choose_arch`)."""
    return arch_knobs(StandaloneKnobs, assignment, time, memory, index=index, declared=declared)
