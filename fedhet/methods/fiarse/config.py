"""Settings of FIARSE (``[tool.flwr.app.config.fiarse]``; METHODS.md §7.4).

FIARSE: "Model-Heterogeneous Federated Learning via Importance-Aware Submodel Extraction",
Wu et al., NeurIPS 2024, arXiv 2407.19389.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fedhet.sizes import SizeLadderConfig, parse_size_ladder


class FiarseConfig(SizeLadderConfig):
    """FIARSE settings. Every field has a run-config key ``fiarse.<kebab-name>``.

    Size fields (``ladder``, ``gamma``, ``size-assignment``, ``server-lr``, ``eval-every``) are
    shared with HeteroFL/FedRolex, see :class:`fedhet.sizes.SizeLadderConfig`.

    Attributes
    ----------
    ladder : str
        Submodel sizes γ as fractions of all parameters, comma-separated (decimals or ``1/64``).
        Default: the paper's four sizes {1/64, 1/16, 1/4, 1} (FIARSE §5; METHODS.md §7.4).
        Evaluation reports every ladder size.
    gamma : float
        Declared size for every device (0: not declared). Wins over the plan (METHODS.md §2).
    size_assignment : {"plan", "equal-groups"}
        ``plan`` (default): largest ladder size ≤ the device budget min(T, M, D_min), else the
        smallest (METHODS.md §2). ``equal-groups`` (paper-style runs, our choice): simulated
        devices are split by partition id into equal groups, the lowest ids get the smallest size
        (20 devices, 4 sizes → partitions 0–4 at 1/64 … 15–19 at 1); devices without a partition
        id fall back to ``plan``.
    scope : {"groups", "global"}
        Threshold scope (METHODS.md B3): one τ per maskable layer (default; §7.4 last row, the
        choice for small CNNs) or one τ over all maskable tensors (the paper's CIFAR-10 setting).
    dense : {"first,last", "none"}
        Layers sent whole: the first conv and the classifier (default, §7.4) or none. Norm layers
        are never masked.
    surrogate : {"biased", "ste"}
        Mask gradient (METHODS.md B4): FIARSE's threshold-controlled factor or straight-through.
    holders : {"mask", "nonzero"}
        Who averages a coordinate (§7.2 step 6): devices whose received mask covers it
        (default, our choice) or devices whose update is ≠ 0 (the official code).
    server_lr : float
        Global step η_g of the holder mean (paper: 1.0).
    encoding : {"bitmask", "auto"}
        Download encoding of masked tensors: values + bitmask (default; METHODS.md §7.3, so the
        ledger matches 4·kept + ⌈d_masked/8⌉ + 4·d_dense) or the cheapest B1 encoding (index below
        density 1/32, dense at density ≥ 31/32).
    eval_sizes : str
        Extra sizes evaluated on the global test set besides the ladder (e.g. unseen sizes
        ``"1/32,1/8,1/2"``); empty by default.
    eval_every : int
        Evaluate (devices and global test set) every n rounds and at the last round (default 1).
    """

    scope: Literal["groups", "global"] = Field("groups", description="Threshold scope (B3).")
    dense: Literal["first,last", "none"] = Field("first,last", description="Dense layers.")
    surrogate: Literal["biased", "ste"] = Field("biased", description="Mask gradient (B4).")
    holders: Literal["mask", "nonzero"] = Field("mask", description="Holder rule (B2).")
    encoding: Literal["bitmask", "auto"] = Field("bitmask", description="Download encoding.")
    eval_sizes: str = Field("", description="Extra evaluation sizes, comma-separated.")

    @field_validator("eval_sizes")
    @classmethod
    def _eval_sizes(cls, v: str) -> str:
        if v.strip():
            parse_size_ladder(v)
        return v

    @property
    def evaluation_sizes(self) -> tuple[float, ...]:
        """Ladder plus ``eval-sizes``, ascending."""
        extra = self.eval_sizes if self.eval_sizes.strip() else ""
        return parse_size_ladder(",".join(x for x in (self.ladder, extra) if x))
