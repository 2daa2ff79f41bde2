"""Submodel size ladder shared by FIARSE, HeteroFL and FedRolex (no Flower, no torch).

A device trains a submodel of size γ, a fraction of all parameters, chosen from a ladder of sizes
(METHODS.md §2, FIARSE row). Both halves of those methods read these settings: the server assigns
sizes and reports per-size metrics (:mod:`fedhet.server.sizes`), the device only receives its own
submodel. Keeping them here lets a method's config subclass :class:`SizeLadderConfig` without
importing server code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from fedhet.config import KebabModel

#: Where a device's submodel size came from (logged in its plan).
SizeSource = Literal["declared", "equal-groups", "budget"]


def parse_size_ladder(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of submodel sizes (``"0.015625,0.0625,0.25,1"``).

    Entries may be decimals or fractions (``"1/64"``). Returns the sizes sorted ascending without
    duplicates; every size must lie in (0, 1].

    Raises
    ------
    ValueError
        On a size outside (0, 1], a malformed entry or an empty list.
    """
    sizes: set[float] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        num, slash, den = part.partition("/")
        value = float(num) / float(den) if slash else float(num)
        if not 0 < value <= 1:
            raise ValueError(f"submodel size {part!r} is not in (0, 1]")
        sizes.add(value)
    if not sizes:
        raise ValueError(f"no submodel sizes in {text!r}")
    return tuple(sorted(sizes))


def size_from_ladder(ladder: Sequence[float], budget: float) -> float:
    """Largest ladder size ≤ ``budget``, else the smallest (METHODS.md §2, FIARSE plan row)."""
    if not ladder:
        raise ValueError("empty size ladder")
    fitting = [s for s in ladder if s <= budget * (1 + 1e-9)]
    return max(fitting) if fitting else min(ladder)


def equal_group_size(ladder: Sequence[float], index: int, count: int) -> float:
    """Size of device ``index`` of ``count`` when the fleet is split into equal groups per size.

    Paper-style assignment (FIARSE, arXiv 2407.19389, §5: "equal groups" of clients per size):
    device ``i`` gets ``sorted(ladder)[⌊i·L/count⌋]``, so the first ``count/L`` devices hold the
    smallest size.
    """
    if not 0 <= index < count:
        raise ValueError(f"device index {index} not in [0, {count})")
    sizes = sorted(ladder)
    return sizes[index * len(sizes) // count]


def size_key(gamma: float) -> str:
    """Metric-name suffix of a submodel size (``0.015625`` → ``g0.015625``)."""
    return f"g{gamma:g}"


class SizeLadderConfig(KebabModel):
    """Size settings shared by the submodel methods.

    Attributes
    ----------
    ladder : str
        Submodel sizes γ as fractions of all parameters, comma-separated (decimals or ``1/64``).
        Default: FIARSE's four sizes {1/64, 1/16, 1/4, 1} (arXiv 2407.19389 §5; METHODS.md §7.4).
    gamma : float
        Declared size for every device (0: not declared); wins over the plan (METHODS.md §2).
    size_assignment : {"plan", "equal-groups"}
        ``plan``: largest ladder size ≤ the device budget min(T, M, D_min), else the smallest
        (METHODS.md §2). ``equal-groups`` (paper-style runs, our choice): simulated devices split by
        partition id into equal groups, lowest ids smallest; devices without a partition id fall
        back to ``plan``.
    server_lr : float
        Global step η_g of the holder mean (paper: 1.0).
    eval_every : int
        Evaluate (devices and global test set) every n rounds and at the last round (default 1).
    """

    ladder: str = Field("0.015625,0.0625,0.25,1", description="Submodel sizes γ (paper: 4 sizes).")
    gamma: float = Field(0.0, ge=0, le=1, description="Declared γ for every device (0: plan).")
    size_assignment: Literal["plan", "equal-groups"] = Field(
        "plan", description="γ from the device budget, or equal groups by partition id."
    )
    server_lr: float = Field(1.0, gt=0, description="Global step η_g.")
    eval_every: int = Field(1, ge=1, description="Evaluate every n rounds (and the last).")

    @field_validator("ladder")
    @classmethod
    def _ladder(cls, v: str) -> str:
        parse_size_ladder(v)
        return v

    @property
    def sizes(self) -> tuple[float, ...]:
        """The ladder, ascending."""
        return parse_size_ladder(self.ladder)

    def device_size(
        self, budget_scalar: float, partition_id: int | None, num_partitions: int | None
    ) -> tuple[float, SizeSource]:
        """``(γ, source)`` of a device (METHODS.md §2).

        The declared ``gamma`` if set; else with ``equal-groups`` and a partition id the size of
        its group (:func:`equal_group_size`); else the largest ladder size ≤ ``budget_scalar``
        = min(T, M, D_min) (:func:`size_from_ladder`).
        """
        ladder = self.sizes
        if self.gamma > 0:
            return self.gamma, "declared"
        if self.size_assignment == "equal-groups" and partition_id is not None and num_partitions:
            return equal_group_size(ladder, partition_id, num_partitions), "equal-groups"
        return size_from_ladder(ladder, budget_scalar), "budget"


__all__ = [
    "SizeLadderConfig",
    "equal_group_size",
    "parse_size_ladder",
    "size_from_ladder",
    "size_key",
]
