"""Settings of the FedIT baseline (``[tool.flwr.app.config.fedit]``; METHODS.md §4.2, §4.4).

FedIT: "Towards Building the Federated GPT: Federated Instruction Tuning", Zhang et al.,
arXiv 2305.05644 — FedAvg over one shared LoRA adapter. Compared with FL-TAC (arXiv 2404.15384).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhet.config import LoraAdapterSettings


class FedITConfig(LoraAdapterSettings):
    """FedIT settings. Every field has a run-config key ``fedit.<kebab-name>``.

    Attributes
    ----------
    rank : int
        LoRA rank of the one shared adapter (16, from FL-TAC's Table 2 counts; METHODS.md §4.4).
    alpha : float
        ``lora_alpha``; 0 means 2·r (scaling 2, as FL-TAC's adapters).
    dropout : float
        LoRA dropout.
    target_modules : str
        Comma-separated modules to adapt (``query,value``).
    lr : float
        AdamW learning rate (same as FL-TAC's, 2e-3).
    steps : int
        τ; with ``step-budget = "matched"`` a device with n_i tasks runs n_i·τ steps cycling over
        its tasks batch by batch, the compute of FL-TAC (METHODS.md §4.2).
    head : {"per-task", "shared"}
        ``per-task`` (default): a C_max-way head per task name, each batch scored by its task's
        head (the model is told each item's task). ``shared``: one head over the union of the
        run's labels (Σ_t C_t outputs, task t's labels offset by the classes of the tasks before
        it in name order), one model for all tasks as FedIT has: the task is never given.
    step_budget : {"matched", "repository"}
        ``matched`` (default): n_i·τ steps, FL-TAC's compute; ``repository``: τ steps in all,
        split over the device's tasks in turn, as FL-TAC's official code runs its FedIT
        baseline (one local budget for the device, not one per task).
    batch_size, max_length, num_labels, eval_batch_size
        As for FL-TAC (``num-labels`` 0 = C_max of the dataset).
    """

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank of the shared adapter.")
    head: Literal["per-task", "shared"] = Field(
        "per-task", description="A head per task name, or one over the union of labels."
    )
    step_budget: Literal["matched", "repository"] = Field(
        "matched", description="n_i·τ steps (FL-TAC's compute) or τ in all (the repository's)."
    )
