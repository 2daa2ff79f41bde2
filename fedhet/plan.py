"""From device profiles to per-device plans (METHODS.md §2).

A :class:`Budget` holds T (time), M (memory) and the upload range [D_min, D_max], each a fraction of
full training of the run's model on the reference device within the round deadline. A
:class:`NodePlan` is the budget plus the method's knobs (``knobs``), fixed for the run once the
device registers; only the upload draw D_t ~ U(D_min, D_max) changes per round.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field, ValidationError, model_validator

from fedhet.config import ConfigError, KebabModel, SharedConfig
from fedhet.core.seeding import rng
from fedhet.sizes import SizeSource

if TYPE_CHECKING:  # profile.py reads the class names below
    from fedhet.profile import DeviceProfile

log = logging.getLogger(__name__)

#: Standard simulated fleet (METHODS.md §2; CoCoFL official code): (T, M, D_min, D_max), one row
#: per class of :data:`DEVICE_CLASSES` except ``custom`` (explicit fractions).
CLASS_BUDGETS: dict[str, tuple[float, float, float, float]] = {
    "strong": (1.0, 1.0, 1.0, 1.0),
    "medium": (0.66, 0.66, 0.5, 1.0),
    "weak": (0.33, 0.33, 0.5, 1.0),
}
#: A device that declares its own fractions instead of a class of the table.
CUSTOM_CLASS = "custom"
#: Every device class a node config may declare: the table's classes, then ``custom``.
DEVICE_CLASSES: tuple[str, ...] = (*CLASS_BUDGETS, CUSTOM_CLASS)


class Budget(KebabModel):
    """Fractions of full training a device can afford."""

    time: float = Field(gt=0, le=1)
    memory: float = Field(gt=0, le=1)
    upload_min: float = Field(gt=0, le=1)
    upload_max: float = Field(gt=0, le=1)
    source: str = "class-table"

    @model_validator(mode="after")
    def _order(self) -> Budget:
        if self.upload_min > self.upload_max:
            raise ValueError("upload-min must be <= upload-max")
        return self

    @property
    def is_full(self) -> bool:
        """True when the device can do full training (T = M = D = 1)."""
        return min(self.time, self.memory, self.upload_min) >= 1.0

    @property
    def scalar(self) -> float:
        """min(T, M, D_min): the single size knob most methods map from."""
        return min(self.time, self.memory, self.upload_min)

    def upload_draw(self, seed: int, device_id: str, server_round: int) -> float:
        """D_t ~ U(D_min, D_max), seeded by (run, device, round) (METHODS.md §2, §6.2)."""
        if self.upload_min == self.upload_max:
            return self.upload_max
        return float(
            rng(seed, device_id, server_round, "upload").uniform(self.upload_min, self.upload_max)
        )


class PlanError(ValueError):
    """A plan that cannot be used: missing, malformed, or knobs of the wrong method."""


class Knobs(KebabModel):
    """Base of a method's per-node knobs (the typed part of a :class:`NodePlan`).

    Each method declares its own subclass in its folder's ``plan.py`` (window choice, size γ,
    slots …); the server validates the knobs when it plans a node and the client validates them
    again against the same model when it reads the plan, so both sides agree on one schema.
    Unknown keys are rejected (``extra="forbid"``, inherited from :class:`KebabModel`).
    """


#: Where a device's submodel size γ came from.


class SizeKnobs(Knobs):
    """Knobs of the submodel-size methods (FIARSE, HeteroFL, FedRolex; METHODS.md §2).

    Attributes
    ----------
    gamma : float
        Submodel size γ, a fraction of all parameters in (0, 1].
    size_source : {"declared", "equal-groups", "budget"}
        Where γ came from (run config, partition-id groups, or the device budget).
    """

    gamma: float = Field(gt=0, le=1)
    size_source: SizeSource


K = TypeVar("K", bound=Knobs)


class NodePlan(KebabModel):
    """The server's plan for one device, sent as JSON in every message's config (key ``plan``).

    ``knobs`` holds the method's :class:`Knobs` model dumped by alias; :meth:`knobs_as` validates
    it back into that model. It is the only place a device reads its knobs from.
    """

    node_id: int
    device_id: str
    device_class: str
    budget: Budget
    participate: bool = True
    reason: str = ""
    knobs: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> str:
        """The plan as the JSON string carried in a message's config."""
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, raw: str) -> NodePlan:
        """Parse :meth:`to_json` output.

        Raises
        ------
        PlanError
            If ``raw`` is not a valid plan.
        """
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise PlanError(f"malformed plan: {_errors(exc)}") from None

    def knobs_as(self, model: type[K]) -> K:
        """The knobs validated as ``model``.

        Raises
        ------
        PlanError
            Naming the model and every wrong, missing or unknown knob.
        """
        try:
            return model.model_validate(self.knobs)
        except ValidationError as exc:
            raise PlanError(
                f"plan of device {self.device_id!r}: knobs {self.knobs} do not match "
                f"{model.__name__}: {_errors(exc)}"
            ) from None


def plan_knobs_of(knobs: Knobs) -> dict[str, Any]:
    """A :class:`Knobs` model as the JSON-ready dict stored in :attr:`NodePlan.knobs`."""
    return knobs.model_dump(by_alias=True, mode="json")


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}" for e in exc.errors()
    )


def fleet_class(fleet: str, partition_id: int | None, num_partitions: int | None) -> str:
    """Device class that the simulated ``fleet`` assigns to a partition id.

    ``three-tier``: first round(0.33·N) strong, next round(0.33·N) medium, the rest weak.
    ``uniform``: all strong. A JSON list cycles over partition ids (``["strong", "weak"]``); a JSON
    object gives shares in the order of its keys (``{"strong": 0.5, "weak": 0.5}``).
    """
    if partition_id is None or num_partitions is None:
        return "strong"
    n, i = num_partitions, partition_id
    if fleet == "uniform":
        return "strong"
    if fleet == "three-tier":
        n_strong = round(0.33 * n)
        n_medium = round(0.33 * n)
        return "strong" if i < n_strong else "medium" if i < n_strong + n_medium else "weak"
    table = json.loads(fleet)
    if isinstance(table, list) and table:
        cls = table[i % len(table)]
    elif isinstance(table, dict) and table:
        total = sum(float(v) for v in table.values())
        edge, cls = 0.0, list(table)[-1]
        for name, share in table.items():
            edge += float(share) / total * n
            if i < round(edge):
                cls = name
                break
    else:
        raise ConfigError(f"invalid run config: 'fleet' = {fleet!r}: empty table")
    if cls not in DEVICE_CLASSES:
        raise ConfigError(
            f"invalid run config: 'fleet' names class {cls!r}; allowed: {', '.join(DEVICE_CLASSES)}"
        )
    return str(cls)


@dataclass
class FleetReference:
    """What budgets are relative to: full-training costs of the run's model and the fastest device."""

    full_update_bytes: int
    full_train_memory_bytes: int
    reference_bench_ms: float | None = None


#: A device more than this many times faster than the fleet's median step time is not used as
#: the time reference (it still gets T = 1).
REFERENCE_SPREAD = 10.0


def reference_bench_ms(bench_ms: Iterable[float | None], configured: float = 0.0) -> float | None:
    """The step time measured budgets are relative to: T = min(1, reference / bench-ms).

    ``ref-bench-ms`` (``configured`` > 0) wins. Otherwise the reference is the fastest device whose
    step time is at least 1/:data:`REFERENCE_SPREAD` of the upper median of ``bench_ms``. It is a
    function of the *set* of measurements (sorted first), so the order devices register in does not
    matter, and a single device claiming to be far faster than the rest cannot move the other
    devices' budgets (absurd values, below :data:`fedhet.profile.MIN_BENCH_MS`, are already
    rejected with the profile).

    The server computes it once, from every profile of the first registration that carries
    measurements, and keeps it for the run (plans are fixed once made): devices that join later
    are planned against the same reference. Fleets that join over time should set
    ``ref-bench-ms``.

    Examples
    --------
    >>> reference_bench_ms([40.0, 10.0, 20.0]), reference_bench_ms([20.0, 40.0, 10.0])
    (10.0, 10.0)
    >>> reference_bench_ms([10.0, 20.0, 40.0, 0.02])  # 0.02 ms is 1000x faster than the median
    10.0
    """
    if configured > 0:
        return float(configured)
    values = sorted(float(b) for b in bench_ms if b is not None and math.isfinite(b) and b > 0)
    if not values:
        return None
    median = values[len(values) // 2]
    return next(v for v in values if v >= median / REFERENCE_SPREAD)


def _measured(
    profile: DeviceProfile, shared: SharedConfig, ref: FleetReference
) -> dict[str, float]:
    out: dict[str, float] = {}
    bench_ref = shared.ref_bench_ms or ref.reference_bench_ms
    if profile.bench_ms and bench_ref:
        out["time"] = min(1.0, bench_ref / profile.bench_ms)
    if ref.full_train_memory_bytes > 0:
        out["memory"] = min(1.0, profile.mem_avail_bytes / ref.full_train_memory_bytes)
    if profile.bandwidth_mbps and ref.full_update_bytes > 0:
        sendable = profile.bandwidth_mbps * 1e6 / 8 * shared.upload_window_s
        out["upload"] = min(1.0, sendable / ref.full_update_bytes)
    return {k: max(v, 1e-3) for k, v in out.items()}


def budget_for(profile: DeviceProfile, shared: SharedConfig, ref: FleetReference) -> Budget:
    """T, M, D for one device (METHODS.md §2 "Budgets").

    With ``profile-source=declared`` each comes from the first available of (1) an explicit
    fraction in the node config, (2) the device-class table, (3) measurement; ``measured`` puts (3)
    first. Simulated devices share one host, so their measurements are ignored.
    """
    explicit = {
        "time": profile.time_frac,
        "memory": profile.mem_frac,
        "upload_min": profile.upload_min,
        "upload_max": profile.upload_max,
    }
    table = CLASS_BUDGETS.get(profile.device_class)
    klass = (
        dict(zip(("time", "memory", "upload_min", "upload_max"), table, strict=True))
        if table
        else {}
    )
    measured = {} if profile.simulated else _measured(profile, shared, ref)
    if "upload" in measured:
        measured["upload_min"] = measured["upload_max"] = measured.pop("upload")
    named: list[tuple[str, dict[str, float | None]]] = [
        ("declared", explicit),
        ("class-table", dict(klass)),
        ("measured", dict(measured)),
    ]
    if shared.profile_source == "measured":
        named = [named[2], named[0], named[1]]
    values: dict[str, float] = {}
    sources: set[str] = set()
    for key in ("time", "memory", "upload_min", "upload_max"):
        for name, src in named:
            value = src.get(key)
            if value is not None:
                values[key] = float(value)
                sources.add(name)
                break
        else:
            values[key] = 1.0
            sources.add("default")
    if profile.upload_min is not None and profile.upload_max is None:
        values["upload_max"] = max(values["upload_max"], values["upload_min"])
    if values["upload_min"] > values["upload_max"]:
        values["upload_min"] = values["upload_max"]
    return Budget(**values, source="+".join(sorted(sources)))
