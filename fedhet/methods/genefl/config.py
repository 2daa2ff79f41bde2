"""Settings of GENE-FL (``[tool.flwr.app.config.genefl]``; METHODS.md §3.4).

GENE-FL: "Gene-Driven Parameter-Efficient Dynamic Federated Learning", arXiv 2504.14628. No public
code exists: this is "GENE-FL (reconstructed)" and every default below is our choice (METHODS.md
§3.4), not the paper's. Flower-free and torch-free, so parsing a run config stays light.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhet.config import KebabModel


class GeneflConfig(KebabModel):
    """GENE-FL settings. Every field has a run-config key ``genefl.<kebab-name>``.

    Local training uses the shared ``local-steps``/``local-epochs`` and ``batch-size``; ``lr`` here
    overrides the shared ``lr`` when non-zero.

    Attributes
    ----------
    warmup : int
        R_w, FedAvg warm-up rounds on the full model; the last one also returns layer scores.
    rho : float
        ρ, learnGene budget. ``layer``: values of 𝓖 (parameters and BN statistics) ≤ ρ of the
        model's. ``element``: exactly max(1, ⌊ρ·d⌋) of the d parameter entries.
    granularity : {"layer", "element"}
        ``layer``: 𝓖 is a set of whole layers, chosen by mean Taylor score per parameter under ρ
        (B3 ``select_layers_by_budget``). ``element``: 𝓖 is an element mask over the parameters,
        the top entries by Taylor score (B3 top-k); devices upload only θ[mask] and the mask
        travels once per device (:mod:`fedhet.methods.genefl.element`).
    score_agg : {"mean", "vote"}
        Merge of the clients' layer scores: mean of sum-1 vectors, or budget votes.
    sensitivity_batches : int
        B, batches of the Taylor sensitivity analysis in round R_w.
    k : int
        K, clusters of the one-shot K-means. With fewer founders' signatures than K, K is reduced
        to their number and the log says so.
    cluster_on : {"update", "weights"}
        Probe signature: normalised update θ[𝓖] − P, or normalised weights θ[𝓖].
    probe_steps : int
        E_p, SGD steps of the probe (0: the local steps E).
    q : float
        Share of the learnGene's entries with the largest F̂ that the Fisher penalty covers.
    mu : float
        μ, scale of the layer-wise quadratic tie β_l.
    lambda_f : float
        λ_F, strength of the masked Fisher penalty on F̂.
    fisher_batches : int
        M_F, batches of the empirical Fisher.
    fisher_every : int
        Recompute F̂ every n gene rounds of a device (cached in ``context.state`` in between).
    fisher_mode : {"batch", "per-sample"}
        Squared batch gradients (METHODS.md B5), or per-sample squared gradients (``torch.func``).
    scale_steps : bool
        Local steps ∝ the device's time budget T (METHODS.md §2).
    lr : float
        Local SGD learning rate (0: the shared ``lr``).
    """

    warmup: int = Field(
        2, ge=1, description="R_w: FedAvg warm-up rounds (the last one scores layers)."
    )
    rho: float = Field(0.25, gt=0, le=1, description="ρ: learnGene share of the model's values.")
    granularity: Literal["layer", "element"] = Field(
        "layer", description="learnGene granularity: whole layers or an element mask."
    )
    score_agg: Literal["mean", "vote"] = Field("mean", description="Merge of client layer scores.")
    sensitivity_batches: int = Field(5, ge=1, description="B: Taylor sensitivity batches.")
    k: int = Field(3, ge=1, description="K: clusters of the one-shot K-means.")
    cluster_on: Literal["update", "weights"] = Field("update", description="Probe signature kind.")
    probe_steps: int = Field(0, ge=0, description="E_p: probe SGD steps (0: the local steps).")
    q: float = Field(0.2, gt=0, le=1, description="Share of 𝓖 entries under the Fisher penalty.")
    mu: float = Field(0.01, ge=0, description="μ: layer-wise quadratic tie scale.")
    lambda_f: float = Field(1.0, ge=0, description="λ_F: masked Fisher penalty strength.")
    fisher_batches: int = Field(10, ge=1, description="M_F: Fisher batches.")
    fisher_every: int = Field(1, ge=1, description="Recompute F̂ every n gene rounds.")
    fisher_mode: Literal["batch", "per-sample"] = Field("batch", description="Fisher estimator.")
    scale_steps: bool = Field(False, description="Local steps ∝ time budget T.")
    lr: float = Field(0.0, ge=0, description="Local SGD learning rate (0: shared lr).")
