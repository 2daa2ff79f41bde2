"""pFedAFM's per-device plan knob: the local architecture (METHODS.md §2, pFedAFM row).

Neutral module (no Flower, no server import): the strategy builds the knobs, the client reads them.
The rule itself lives in :mod:`fedhet.models.afm` (shared with the Standalone baseline).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedhet.config import KebabModel
from fedhet.models.afm import check_arch, choose_arch


class PfedafmKnobs(KebabModel):
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
    rule: str = Field("budget")
    infeasible: str = ""

    def to_knobs(self) -> dict[str, Any]:
        """The plain dict stored in :attr:`fedhet.plan.NodePlan.knobs`."""
        return self.model_dump(by_alias=True)


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
    return PfedafmKnobs(arch=choice.arch, rule=choice.rule, infeasible=choice.reason)


def read_knobs(knobs: dict[str, Any]) -> PfedafmKnobs:
    """Parse a received plan's knobs; an architecture outside the family is a ``ValueError``.

    Raises
    ------
    ValueError
        Naming the bad architecture and the family's members.
    """
    parsed = PfedafmKnobs.model_validate(knobs)
    if parsed.arch is not None:
        try:
            check_arch(parsed.arch)
        except ValueError as exc:
            raise ValueError(f"pFedAFM plan names an unusable architecture: {exc}") from None
    return parsed
