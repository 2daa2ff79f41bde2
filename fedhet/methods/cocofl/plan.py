"""Per-node knobs of CoCoFL: the inputs of the device's window choice (arXiv 2203.05468, §3).

The device draws D_t ~ U(D_min, D_max) from its plan's budget each round, keeps the maximal
windows of the cost table within (T, D_t, M) and picks one with :attr:`CoCoFLKnobs.choice`
(METHODS.md §6.2 step 2). The server recomputes the same options to check the reply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fedhet.plan import Knobs


class CoCoFLKnobs(Knobs):
    """CoCoFL's plan for one device.

    Attributes
    ----------
    choice : {"random", "round-robin"}
        How the device picks among its maximal feasible windows (``cocofl.choice``).
    force_window : tuple[int, int] | None
        A window every device must train (``cocofl.force-window``), or ``None``.
    windows_at_upload_min, windows_at_upload_max : list[str]
        The maximal feasible windows at D_min and D_max (``"a-b"``; for the log).
    """

    choice: Literal["random", "round-robin"] = "random"
    force_window: tuple[int, int] | None = None
    windows_at_upload_min: list[str] = Field(default_factory=list)
    windows_at_upload_max: list[str] = Field(default_factory=list)

    @field_validator("force_window")
    @classmethod
    def _ordered(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] <= v[1]:
            raise ValueError(f"force-window must be (a, b) with 0 <= a <= b, got {v}")
        return v
