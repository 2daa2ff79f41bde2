"""Settings of CoCoFL (``[tool.flwr.app.config.cocofl]``; METHODS.md §6.4).

CoCoFL: "Communication- and Computation-Aware Federated Learning via Partial NN Freezing and
Quantization", Beutel et al., TMLR 2023, arXiv 2203.05468 (official code: k1l1/CoCoFL).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fedhet.config import KebabModel


def parse_window(raw: str) -> tuple[int, int] | None:
    """``"a,b"`` → ``(a, b)`` with ``0 <= a <= b``; ``""`` → ``None``.

    Raises
    ------
    ValueError
        On anything else.
    """
    if not raw.strip():
        return None
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"window must be 'a,b' with unit indices a <= b, got {raw!r}")
    a, b = int(parts[0]), int(parts[1])
    if a > b:
        raise ValueError(f"window must have a <= b, got {raw!r}")
    return a, b


def parse_milestones(raw: str) -> tuple[float, ...]:
    """``"0.6,0.8"`` → ``(0.6, 0.8)``: fractions of the run's rounds in (0, 1), ascending."""
    if not raw.strip():
        return ()
    try:
        values = tuple(sorted(float(p) for p in raw.split(",")))
    except ValueError:
        raise ValueError(f"milestones must be comma-separated fractions, got {raw!r}") from None
    if any(not 0 < v < 1 for v in values):
        raise ValueError(f"milestones must lie in (0, 1), got {raw!r}")
    return values


def step_lr(
    base_lr: float, server_round: int, num_rounds: int, milestones: tuple[float, ...], decay: float
) -> float:
    """Learning rate of a round under CoCoFL's step schedule (METHODS.md §6.4, paper (code)).

    lr_t = lr · decay^{|{m : t > m·R}|} for round t of R: with R = 40 and milestones (0.6, 0.8),
    rounds 1–24 use lr, 25–32 lr·0.1 and 33–40 lr·0.01.
    """
    passed = sum(1 for m in milestones if server_round > m * num_rounds)
    return base_lr * decay**passed


class CoCoFLConfig(KebabModel):
    """CoCoFL settings. Every field has a run-config key ``cocofl.<kebab-name>``.

    Attributes
    ----------
    cost : {"measured", "analytic"}
        Cost-table generator (METHODS.md B7): ``measured`` on this host (default, our choice) or the
        ``analytic`` formulas. The shipped ``fedhet/models/costs/<model>-b<batch>[-analytic].json``
        is used; without one the analytic table is computed in-process (logged).
    cost_table : str
        Explicit cost-table JSON path (default ``""``: the shipped table). Device and server must
        use the same table, since the server re-checks every reply's window against it.
    int8_cost : float
        Relative cost q of an int8 operation, analytic tables only (default 0.5, METHODS.md B7).
    choice : {"random", "round-robin"}
        How a device picks among its maximal feasible windows: uniformly at random, seeded by
        (run, device, round) (default, paper (code)), or ``(round − 1) mod |options|``.
    force_window : str
        ``"a,b"`` forces that window on every device (server-side override, our choice); ``""``
        lets the device choose (default).
    weighted : bool
        Weight the zero-fill mean by sample counts instead of 1 per device (default False:
        w_l ← w_l + (1/|S|)·Σ_{i∈S_l}(w_{l,i} − w_l), METHODS.md §6.2).
    bn_stats : {"zero-fill", "holders"}
        How BN running statistics are aggregated. ``zero-fill`` (default): like the weights
        (METHODS.md §6.2 "BN statistics alike", the official code); ``holders``: the mean over
        the devices that trained the unit, unchanged when nobody did. Neither matches the
        statistics of the zero-filled global weights (a model nobody trained); issue 14's probe
        measured both at chance after round 1 (10.0 % and 10.3 %) where the same weights with
        recalibrated statistics reach 27.1 % (benchmarks/results/cocofl.md).
    real_int8 : bool
        Real int8 kernels (``torch.ao.nn.quantized``) for the units before the window (default
        True); False fakes int8 everywhere (for comparison).
    quant_backward : bool
        Fake-quantise input gradients to int8 (per-batch scale) after the window (default True).
    weight_scale_factor : float
        c in the weight scale s = c·max|w|/127 (default 1; the official code behaves like 2).
    weight_decay : float
        Local SGD weight decay (default 1e-3, paper (code)); no momentum.
    lr_milestones : str
        Fractions of the rounds after which the learning rate is divided (default ``"0.6,0.8"``,
        paper (code)); ``""`` keeps it constant.
    lr_decay : float
        Factor applied at each milestone (default 0.1).
    """

    cost: Literal["measured", "analytic"] = Field("measured", description="Cost-table generator.")
    cost_table: str = Field("", description="Explicit cost-table JSON path ('' = shipped table).")
    int8_cost: float = Field(0.5, gt=0, le=1, description="Analytic int8 relative cost q.")
    choice: Literal["random", "round-robin"] = Field("random", description="Window choice.")
    force_window: str = Field("", description="'a,b' forces a window on every device.")
    weighted: bool = Field(False, description="Sample-weighted zero-fill mean.")
    bn_stats: Literal["zero-fill", "holders"] = Field(
        "zero-fill", description="BN running statistics: zero-fill, or mean over trainers."
    )
    real_int8: bool = Field(True, description="Real int8 kernels before the window.")
    quant_backward: bool = Field(True, description="Int8 input gradients after the window.")
    weight_scale_factor: float = Field(1.0, gt=0, description="Weight quantisation factor c.")
    weight_decay: float = Field(1e-3, ge=0, description="Local SGD weight decay.")
    lr_milestones: str = Field("0.6,0.8", description="Round fractions where lr is divided.")
    lr_decay: float = Field(0.1, gt=0, le=1, description="lr factor at each milestone.")

    @field_validator("force_window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_window(v)
        return v

    @field_validator("lr_milestones")
    @classmethod
    def _milestones(cls, v: str) -> str:
        parse_milestones(v)
        return v

    @property
    def forced_window(self) -> tuple[int, int] | None:
        """The forced window, or ``None``."""
        return parse_window(self.force_window)

    @property
    def milestones(self) -> tuple[float, ...]:
        """lr milestones as fractions of the rounds, ascending."""
        return parse_milestones(self.lr_milestones)
