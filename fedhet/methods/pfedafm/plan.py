"""pFedAFM's per-device plan knob: the local architecture (METHODS.md §2, pFedAFM row).

Neutral module (no Flower, no server import): the strategy builds the knobs, the client reads them.
The rule itself lives in :mod:`fedhet.models.afm` (shared with the Standalone baseline).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from fedhet.models.afm import check_arch, choose_arch
from fedhet.plan import Knobs


class PfedafmKnobs(Knobs):
    """The plan's ``knobs`` for one pFedAFM device.

    Attributes
    ----------
    arch : str or None
        The device's local architecture (``afm_cnn1…5``); ``None`` when its memory fits none.
    rule : str
        Which rule chose it: ``budget``, ``index`` or ``declared``.
    infeasible : str
        Why the device can hold no architecture ('' when it can); such a device replies
        ``infeasible`` (METHODS.md §2).
    """

    arch: str | None = None
    rule: Literal["budget", "index", "declared"] = "budget"
    infeasible: str = ""

    @field_validator("arch")
    @classmethod
    def _family(cls, v: str | None) -> str | None:
        """An architecture outside the family fails (server when planning, device when reading)."""
        return None if v is None else check_arch(v)


def plan_knobs(
    assignment: str,
    time: float,
    memory: float,
    *,
    index: int | None,
    declared: str | None,
) -> PfedafmKnobs:
    """Knobs of one device (see :func:`fedhet.models.afm.choose_arch`)."""
    choice = choose_arch(time, memory, assignment=assignment, index=index, declared=declared)
    rule: Literal["budget", "index", "declared"] = (
        "declared" if choice.rule == "declared" else "index" if choice.rule == "index" else "budget"
    )
    return PfedafmKnobs(arch=choice.arch, rule=rule, infeasible=choice.reason)
