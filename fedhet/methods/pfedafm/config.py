"""Settings of pFedAFM (``[tool.flwr.app.config.pfedafm]``); METHODS.md §5.4.

Yi et al., "pFedAFM: Adaptive Feature Mixture for Batch-Level Personalization in Heterogeneous
Federated Learning", arXiv 2404.17847. Neutral module: no torch, Flower or server import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhet.config import KebabModel


class PfedafmConfig(KebabModel):
    """pFedAFM's own keys (``pfedafm.*``). Local training uses these, not the shared ``lr``,
    ``batch-size``, ``local-epochs`` or ``local-steps`` (tuned for other methods).

    Attributes
    ----------
    arch_assignment : {"budget", "index"}
        ``budget`` (our choice): largest CNN-x with parameters relative to CNN-1 ≤ min(T, M);
        ``index`` (paper (code)): CNN-(partition-id mod 5 + 1). A node-config ``arch`` wins.
    lr : float
        SGD learning rate of the local model ω and of the shared extractor θ (paper (code): 0.01).
    lr_alpha : float
        SGD learning rate of α (paper (code): 0.01 for heterogeneous models, 0.1 homogeneous).
    momentum : float
        SGD momentum of all three optimisers (paper (code): 0.9).
    weight_decay : float
        SGD weight decay of all three optimisers (paper (code): 1e-3).
    grad_clip : float
        Gradient-norm clip of ω (stage 1) and θ (stage 2) (paper (code): 50).
    epochs : int
        E, epochs **per stage**; a round costs 2E epochs (paper (code): 10; §5.6 reproduction
        and our default: 1).
    steps : int
        Steps per stage instead of epochs (0: use ``epochs``); for tests and quick runs.
    batch_size : int
        Local batch size (paper (code): 512; §5.6 reproduction and our default: 128).
    stage2 : {"local-header", "mixture"}
        Stage 2 input: ``local-header`` (paper (code)): pure G features into the frozen local
        header h_k; ``mixture`` (our option): G trained through the mixture with f_k, α frozen.
    projection : bool
        Allow dim f_k ≠ dim G through a per-device linear projection of G's features (our
        choice; off: a dimension mismatch is an error).
    alpha_init : float
        Initial value of every α entry (paper (code): 1, purely local features).
    train_alpha : bool
        Learn α (paper); false keeps α fixed at ``alpha-init`` (ablation row "α fixed at 0.5").
    eval_batch_size : int
        Batch size of local evaluation (does not change the result).
    """

    arch_assignment: Literal["budget", "index"] = Field(
        "budget", description="Architecture per device: `budget` or `index` (paper)."
    )
    lr: float = Field(0.01, gt=0, description="SGD lr of the local model and of G.")
    lr_alpha: float = Field(0.01, gt=0, description="SGD lr of α.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(1e-3, ge=0, description="SGD weight decay.")
    grad_clip: float = Field(50.0, gt=0, description="Gradient-norm clip of ω and θ.")
    epochs: int = Field(1, ge=1, description="E: epochs per stage (a round is 2E epochs).")
    steps: int = Field(0, ge=0, description="Steps per stage (0: use epochs).")
    batch_size: int = Field(128, ge=1, description="Local batch size.")
    stage2: Literal["local-header", "mixture"] = Field(
        "local-header", description="Stage-2 input: pure G features or the mixture."
    )
    projection: bool = Field(False, description="Project G's features when dims differ.")
    alpha_init: float = Field(1.0, ge=0, le=1, description="Initial α (1: purely local).")
    train_alpha: bool = Field(True, description="Learn α (false: fixed at alpha-init).")
    eval_batch_size: int = Field(256, ge=1, description="Local evaluation batch size.")
