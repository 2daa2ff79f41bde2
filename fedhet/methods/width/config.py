"""Settings of HeteroFL and FedRolex (``[tool.flwr.app.config.heterofl]`` / ``.fedrolex``).

HeteroFL: Diao, Ding, Tarokh, "HeteroFL: Computation and Communication Efficient Federated
Learning for Heterogeneous Clients", ICLR 2021. FedRolex: Alam, Liu, Yan, Zhang, "FedRolex:
Model-Heterogeneous Federated Learning with Rolling Sub-Model Extraction", NeurIPS 2022.
METHODS.md B12 and §7.6 (baselines of FIARSE).
"""

from __future__ import annotations

from pydantic import Field

from fedhet.sizes import SizeLadderConfig


class WidthConfig(SizeLadderConfig):
    """Width-scaled submodels: a device of size γ trains width β = √γ (METHODS.md B12).

    Sizes are assigned exactly as FIARSE assigns them (``fiarse.*`` keys of the same names), so
    a comparison trains the same parameter budget per device.

    Attributes
    ----------
    ladder : str
        Submodel sizes γ, comma-separated (default {1/64, 1/16, 1/4, 1}, FIARSE's four sizes).
    gamma : float
        Declared γ for every device (0: not declared); wins over the plan. With a one-size ladder
        equal to it, this is FedAvg on the width-√γ model (unweighted mean).
    size_assignment : {"plan", "equal-groups"}
        ``plan``: largest ladder size ≤ min(T, M, D_min), else the smallest (METHODS.md §2);
        ``equal-groups``: equal groups by partition id, lowest ids smallest (paper-style runs).
    server_lr : float
        Global step η_g of the holder mean (1.0).
    width_scaler : bool
        HeteroFL's scaler (§3): hidden activations divided by β during training, identity at
        evaluation (default on, as in HeteroFL's and FedRolex's code). Applied only to models
        with normalisation layers, as in those papers; a no-op on ``cnn_s`` (see
        :func:`fedhet.methods.width.client.width_scaler`).
    label_mask : bool
        HeteroFL's label split (default on, as both papers' code on non-IID data): during
        training the logits of classes absent from the device's training labels are masked
        (−∞), the device reports its classes (``label-classes``) and the server averages each
        classifier row over the devices holding that class.
    eval_every : int
        Evaluate every n rounds and at the last round (default 1).
    """

    width_scaler: bool = Field(True, description="Divide hidden activations by β in training.")
    label_mask: bool = Field(
        True, description="Mask absent classes' logits; classifier rows over class holders."
    )


class HeteroFLConfig(WidthConfig):
    """HeteroFL: static nested slices, units 0…⌈βC⌉−1 of every hidden layer (ICLR 2021)."""


class FedRolexConfig(WidthConfig):
    """FedRolex: rolling window, units (t + k) mod C in round t (NeurIPS 2022)."""
