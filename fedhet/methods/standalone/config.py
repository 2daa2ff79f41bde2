"""Settings of the Standalone baseline (``[tool.flwr.app.config.standalone]``); METHODS.md §5.6.

Each device trains its own architecture of the pFedAFM family alone (no communication), with
pFedAFM's optimiser settings and 2E epochs per round, so the compute per round matches pFedAFM's
two stages of E epochs. Neutral module: no torch, Flower or server import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhet.config import KebabModel


class StandaloneConfig(KebabModel):
    """Standalone's keys (``standalone.*``); defaults match ``pfedafm.*``.

    Attributes
    ----------
    arch_assignment : {"budget", "index"}
        Same rule as ``pfedafm.arch-assignment`` (a node-config ``arch`` wins).
    lr, momentum, weight_decay, grad_clip : float
        SGD settings (0.01, 0.9, 1e-3, gradient-norm clip 50), as pFedAFM's local model.
    epochs : int
        Epochs per round; default 2 = 2E with pFedAFM's E = 1 (compute-matched).
    steps : int
        Steps per round instead of epochs (0: use ``epochs``).
    batch_size : int
        Local batch size (128).
    eval_batch_size : int
        Batch size of local evaluation.
    """

    arch_assignment: Literal["budget", "index"] = Field(
        "budget", description="Architecture per device: `budget` or `index` (paper)."
    )
    lr: float = Field(0.01, gt=0, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(1e-3, ge=0, description="SGD weight decay.")
    grad_clip: float = Field(50.0, gt=0, description="Gradient-norm clip.")
    epochs: int = Field(2, ge=1, description="Epochs per round (2E: compute-matched).")
    steps: int = Field(0, ge=0, description="Steps per round (0: use epochs).")
    batch_size: int = Field(128, ge=1, description="Local batch size.")
    eval_batch_size: int = Field(256, ge=1, description="Local evaluation batch size.")
