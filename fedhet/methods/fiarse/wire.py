"""FIARSE message keys read by both the server and the device (arXiv 2407.19389, §7.2 step 3).

The device's size γ travels in its typed plan (:mod:`fedhet.methods.fiarse.plan`), not here.
"""

from __future__ import annotations

#: Train/eval config key carrying τ per masked tensor as a JSON object (METHODS.md §7.2 step 3).
THRESHOLDS_KEY = "fiarse-thresholds"
