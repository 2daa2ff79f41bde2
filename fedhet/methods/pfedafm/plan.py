"""pFedAFM's per-device plan knob: the local architecture (METHODS.md §2, pFedAFM row).

Neutral module (no Flower, no server import): the strategy builds the knobs, the client reads them.
The rule itself lives in :mod:`fedhet.models.afm` (shared with the Standalone baseline).
"""

from __future__ import annotations

from fedhet.models.afm import ArchKnobs, arch_knobs


class PfedafmKnobs(ArchKnobs):
    """The plan's ``knobs`` for one pFedAFM device (fields: :class:`~fedhet.models.afm.ArchKnobs`)."""


def plan_knobs(
    assignment: str,
    time: float,
    memory: float,
    *,
    index: int | None,
    declared: str | None,
) -> PfedafmKnobs:
    """Knobs of one device (see :func:`fedhet.models.afm.choose_arch`)."""
    return arch_knobs(PfedafmKnobs, assignment, time, memory, index=index, declared=declared)
