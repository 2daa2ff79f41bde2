"""Per-node knobs of HeteroFL and FedRolex (METHODS.md B12)."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from fedhet.plan import SizeKnobs


class WidthKnobs(SizeKnobs):
    """Size γ as FIARSE assigns it, and the width β = √γ of the device's slice.

    Attributes
    ----------
    beta : float
        Kept fraction of every hidden layer's units, √γ, so a slice trains about γ of the
        parameters (the same budget FIARSE gives the device).
    """

    beta: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _beta_is_sqrt_gamma(self) -> WidthKnobs:
        if not math.isclose(self.beta, math.sqrt(self.gamma), rel_tol=1e-9):
            raise ValueError(f"beta must be sqrt(gamma) = {math.sqrt(self.gamma):.6g}")
        return self
