"""Settings of FL-TAC (``[tool.flwr.app.config.fltac]``; METHODS.md §4.4).

FL-TAC: "Enhanced Fine-Tuning in Federated Learning via Low-Rank, Task-Specific Adapter
Clustering", Ping et al., ICLR 2024 workshop, arXiv 2404.15384.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhet.config import LoraAdapterSettings


class FltacConfig(LoraAdapterSettings):
    """FL-TAC settings. Every field has a run-config key ``fltac.<kebab-name>``.

    Local training uses these keys, not the shared ``lr``/``local-steps``/``batch-size`` (which
    are tuned for SGD on image CNNs).

    Attributes
    ----------
    rank : int
        LoRA rank r of every task adapter, fleet-wide (K-means needs equal shapes). Paper: 1.
    alpha : float
        ``lora_alpha``; 0 means 2·r (scaling fixed at 2, our choice; paper code: 16).
    dropout : float
        LoRA dropout (paper code: 0.05).
    target_modules : str
        Comma-separated modules to adapt (paper: ``query,value``).
    lr : float
        AdamW learning rate (our choice 2e-3 for MiniLM; paper code 5e-4 on BERT).
    steps : int
        τ, local steps per (device, task slot) and round (our choice 10; paper code 50).
    batch_size : int
        Local batch size (our choice 16; paper code 32).
    max_length : int
        Token length (our choice 48; texts average 10–19 words; paper code 128).
    k : int
        K-means clusters; 0 = number of tasks of the run's dataset (paper: K = N).
    num_labels : int
        C_max, outputs of each slot's head (logits beyond a task's classes are masked); 0 = the
        largest class count of the run's dataset. Set it when devices bring their own CSV data.
    weighted : bool
        Cluster mean weighted by slot samples (the official code) instead of unweighted (paper).
    normalise : bool
        L2-normalise the flattened LoRA rows before K-means (cosine K-means); default off
        (Euclidean, unscaled, as the paper's code).
    stale : {"nearest", "keep"}
        Slots not uploaded in a round: next time send the current cluster mean nearest to the
        stored LoRA vector (default, our choice) or the stored vector.
    scale_steps : bool
        τ_i = max(1, round(τ·T)) with T the device's time budget (METHODS.md §2); default off.
    scale_slots : bool
        A device trains (and uploads) at most max(1, ⌈T·n_i⌉) of its n_i slots per round, in
        rotation, so weak devices keep each round's work near T of a strong one; the others
        follow ``stale``. Default off (METHODS.md §2: slots = n-tasks).
    eval_batch_size : int
        Batch size of local evaluation.
    oracle_eval : bool
        Simulation-only evaluator (METHODS.md §4.2 step 6, §4.4): simulated devices tag each
        evaluated slot with its task (CRC-32 of the name) and the server logs per-task accuracy
        and cluster purity. Default off. Outside simulation devices never send task tags, even
        when this is on (issue 10 item 8); the clustering never reads them either way.
    """

    rank: int = Field(1, ge=1, le=256, description="LoRA rank of each task adapter (paper: 1).")
    k: int = Field(0, ge=0, description="K-means clusters (0: number of tasks).")
    weighted: bool = Field(False, description="Sample-weighted cluster mean (official code).")
    normalise: bool = Field(False, description="Cosine K-means (L2-normalised rows).")
    stale: Literal["nearest", "keep"] = Field("nearest", description="Rule for slots not uploaded.")
    scale_steps: bool = Field(False, description="Scale τ by the device's time budget.")
    scale_slots: bool = Field(False, description="Weak devices train fewer slots per round.")
    oracle_eval: bool = Field(
        False, description="Simulation only: per-task accuracy and cluster purity from task tags."
    )
