"""HeteroFL/FedRolex message keys read by both the server and the device (METHODS.md B12)."""

from __future__ import annotations

#: Train/eval config key carrying the slice's width ratio β = √γ.
BETA_KEY = "width-beta"
#: Train config key carrying the rolling window's start (0 for HeteroFL's static slice).
OFFSET_KEY = "width-offset"
