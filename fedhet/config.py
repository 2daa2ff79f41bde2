"""Run configuration: Flower's flat run config parsed into pydantic models.

Flower hands the ServerApp and every ClientApp a flat ``dict`` (``[tool.flwr.app.config]`` plus
``flwr run -c "k=v"`` overrides). Shared keys have no prefix (``num-server-rounds``); a method's own
keys are dotted (``fiarse.ladder`` from a ``[tool.flwr.app.config.fiarse]`` table). Every key is
checked at start: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`
naming the key and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from fedhet.data.catalog import DATASETS, PARTITIONS, DatasetName, PartitionName


class ConfigError(ValueError):
    """A run config, node config or device profile that fedhet cannot use."""


def kebab(name: str) -> str:
    """Field name → config key (``num_server_rounds`` → ``num-server-rounds``)."""
    return name.replace("_", "-")


class KebabModel(BaseModel):
    """Base for fedhet config models: kebab-case keys, unknown keys rejected, validated on assignment;
    NaN and Inf are never valid values (issue 10: every float key finite)."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=kebab,
        populate_by_name=True,
        validate_assignment=True,
        allow_inf_nan=False,
    )


#: ``dataset`` / ``model`` value meaning "the chosen method's registered default".
AUTO = "auto"

__all__ = [
    "AUTO",
    "DATASETS",
    "PARTITIONS",
    "ConfigError",
    "KebabModel",
    "LoraAdapterSettings",
    "MethodInfo",
    "RunConfig",
    "SharedConfig",
    "default_run_config",
    "kebab",
    "parse_run_config",
    "validate_model",
]


class SharedConfig(KebabModel):
    """Keys every method understands (``[tool.flwr.app.config]``)."""

    method: str = Field("fedavg", description="Registered method name, see `fedhet methods`.")
    num_server_rounds: int = Field(3, ge=1, description="Federated rounds.")
    dataset: Literal["auto", DatasetName] = Field(
        "auto", description="Simulation/partitioned dataset ('auto': the method's default)."
    )
    model: str = Field(
        "auto", description="Model name, see `fedhet methods` ('auto': the method's default)."
    )
    partition: PartitionName = Field(
        "dirichlet", description="Partitioner for `partition-id` nodes."
    )
    dirichlet_alpha: float = Field(0.5, gt=0, description="Dirichlet concentration α.")
    pathological_k: int = Field(2, ge=1, description="Classes per client, pathological split.")
    num_partitions: int = Field(
        0, ge=0, description="Override the node's `num-partitions` (0: use the node config)."
    )
    max_train_per_client: int = Field(0, ge=0, description="Cap on training samples (0: none).")
    local_test_size: int = Field(500, ge=0, description="Local test set size per client.")
    fleet: str = Field(
        "three-tier",
        description="Device classes by partition id: `three-tier`, `uniform`, or a JSON list/object.",
    )
    fraction_train: float = Field(1.0, gt=0, le=1, description="Share of nodes sampled per round.")
    fraction_evaluate: float = Field(1.0, ge=0, le=1, description="Share of nodes evaluated.")
    min_nodes: int = Field(2, ge=1, description="Nodes to wait for before a round starts.")
    round_timeout: float = Field(600.0, gt=0, description="Seconds to wait for replies per round.")
    local_epochs: int = Field(1, ge=0, description="Local epochs (ignored when local-steps > 0).")
    local_steps: int = Field(0, ge=0, description="Local SGD steps per round (0: use epochs).")
    batch_size: int = Field(32, ge=1, description="Local batch size.")
    lr: float = Field(0.05, gt=0, description="Local learning rate.")
    seed: int = Field(0, description="Run seed; every draw derives from it.")
    output_dir: str = Field(
        "", description="Where run folders go ('' → $FEDHET_OUTPUT_DIR or ~/.fedhet/runs)."
    )
    run_name: str = Field("fedhet-run", description="Run folder name; a rerun with it resumes.")
    profile_bench: bool = Field(True, description="Run the short compute benchmark in profiles.")
    server_eval: bool = Field(True, description="Evaluate the global model on the global test set.")
    ref_bench_ms: float = Field(0.0, ge=0, description="Reference device step time (0: fastest).")
    upload_window_s: float = Field(10.0, gt=0, description="Seconds of upload a round allows.")
    profile_source: Literal["declared", "measured"] = Field(
        "declared", description="Budget source priority (METHODS.md §2)."
    )
    checkpoint_every: int = Field(1, ge=1, description="Write a checkpoint every n rounds.")

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError("use letters, digits, '.', '_' and '-' (max 100), starting alnum")
        return v

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, v: str) -> str:
        if v in ("three-tier", "uniform"):
            return v
        try:
            json.loads(v)
        except json.JSONDecodeError as exc:
            raise ValueError(f"use 'three-tier', 'uniform' or a JSON table ({exc})") from None
        return v

    def resolved_output_dir(self) -> Path:
        """Absolute folder for run folders."""
        raw = self.output_dir or os.environ.get("FEDHET_OUTPUT_DIR", "")
        return Path(raw).expanduser().resolve() if raw else Path.home() / ".fedhet" / "runs"

    # --- trust: robust aggregation keys and cross-field rules (issue 10 items 3 and 6) ---------
    # (NaN/Inf are refused for every key by KebabModel: ``lr=inf`` fails at start.)

    aggregation: Literal["mean", "trimmed-mean", "median"] = Field(
        "mean",
        description="Aggregation rule: the method's own mean, or coordinate-wise trimmed-mean / "
        "median (unweighted) for fleets that expect bad devices.",
    )
    trim_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="Share trimmed at each end by `aggregation=trimmed-mean`."
    )
    outlier_factor: float = Field(
        10.0,
        ge=0,
        description="Drop an update whose norm exceeds this multiple of the round's median "
        "update norm (0: off).",
    )
    max_reply_bytes: int = Field(
        0, ge=0, description="Cap on a reply's array bytes (0: only what its plan allows)."
    )
    max_idle_rounds: int = Field(
        5,
        ge=0,
        description="End the run as failed when no node trained for this many consecutive "
        "rounds (0: never).",
    )

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**63:
            raise ValueError("must be in [0, 2**63)")
        return v

    @field_validator("fleet")
    @classmethod
    def _fleet_table(cls, v: str) -> str:
        if v in ("three-tier", "uniform"):
            return v
        classes = ("strong", "medium", "weak", "custom")
        table = json.loads(v)
        if isinstance(table, list):
            names = table
        elif isinstance(table, dict):
            names = list(table)
            for name, share in table.items():
                if (
                    isinstance(share, bool)
                    or not isinstance(share, int | float)
                    or not math.isfinite(share)
                    or share <= 0
                ):
                    raise ValueError(f"share of {name!r} must be a positive number, got {share!r}")
        else:
            raise ValueError("use 'three-tier', 'uniform', a JSON list or a JSON object")
        if not names:
            raise ValueError("empty table")
        bad = [n for n in names if n not in classes]
        if bad:
            raise ValueError(f"unknown device class {bad[0]!r}; allowed: {', '.join(classes)}")
        return v

    @field_validator("local_steps")
    @classmethod
    def _some_training(cls, v: int, info: ValidationInfo) -> int:
        if v == 0 and info.data.get("local_epochs") == 0:
            raise ValueError("local-steps=0 with local-epochs=0 trains nothing; set one above 0")
        return v

    @field_validator("output_dir")
    @classmethod
    def _absolute_output_dir(cls, v: str) -> str:
        if v and not Path(v).expanduser().is_absolute():
            raise ValueError(
                "must be an absolute path (or '' for $FEDHET_OUTPUT_DIR / ~/.fedhet/runs): a "
                "relative one would land under the server process's working directory"
            )
        return v


class RunConfig(BaseModel):
    """A parsed run config: the shared keys and the chosen method's own settings.

    ``raw`` is the flat config as given, with ``dataset`` and ``model`` resolved (never ``auto``),
    so a device that re-parses it and a resumed run see the same values.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    shared: SharedConfig
    method: BaseModel
    raw: dict[str, Any]

    def method_as(self, cls: type[BaseModel]) -> Any:
        """The method settings, checked to be of ``cls``."""
        if not isinstance(self.method, cls):
            raise TypeError(f"method config is {type(self.method).__name__}, not {cls.__name__}")
        return self.method


def _format_errors(exc: ValidationError, prefix: str, values: Mapping[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        full = f"{prefix}{key}"
        got = values.get(key, err.get("input"))
        lines.append(f"  '{full}' = {got!r}: {err['msg']}")
    return "\n".join(lines)


def validate_model(cls: type[BaseModel], values: Mapping[str, Any], prefix: str, what: str) -> Any:
    """Validate ``values`` with ``cls``, raising :class:`ConfigError` that names every bad key."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as exc:
        allowed = ", ".join(f"'{prefix}{kebab(n)}'" for n in cls.model_fields)
        raise ConfigError(
            f"invalid {what}:\n{_format_errors(exc, prefix, values)}\n  allowed keys: {allowed}"
        ) from None


class MethodInfo(Protocol):
    """What the parser needs to know of a registered method (see :mod:`fedhet.methods`).

    The registry hands these to :func:`parse_run_config`, so this module never imports the
    methods.
    """

    @property
    def default_dataset(self) -> str:
        """Dataset used when the run config says ``dataset = "auto"``."""
        ...

    @property
    def default_model(self) -> str:
        """Model used when the run config says ``model = "auto"``."""
        ...

    @property
    def datasets(self) -> tuple[str, ...]:
        """Datasets the method can train on."""
        ...

    @property
    def models(self) -> tuple[str, ...]:
        """Models the method can train."""
        ...

    @property
    def config_cls(self) -> type[BaseModel]:
        """The method's settings model (keys ``<method>.<key>``)."""
        ...


def _resolve(shared: SharedConfig, method: str, info: MethodInfo) -> SharedConfig:
    """Fill ``auto`` dataset/model with the method's defaults; reject what it cannot train."""
    updates: dict[str, str] = {}
    for key, default, accepted in (
        ("dataset", info.default_dataset, info.datasets),
        ("model", info.default_model, info.models),
    ):
        value = getattr(shared, key)
        if value == AUTO:
            updates[key] = default
        elif value not in accepted:
            raise ConfigError(
                f"invalid run config: '{key}' = {value!r} does not suit method {method!r}; "
                f"it accepts: {', '.join(accepted)} (or '{AUTO}' for {default!r})"
            )
    if not updates:
        return shared
    return shared.model_copy(update=updates)


def parse_run_config(raw: Mapping[str, Any], methods: Mapping[str, MethodInfo]) -> RunConfig:
    """Parse Flower's flat run config against the registered ``methods``.

    Every method's table is validated (a typo in any method's keys fails), and the chosen
    method's settings are returned in :attr:`RunConfig.method`. ``dataset`` and ``model`` equal
    to ``auto`` become the chosen method's defaults; an explicit choice the method cannot train
    fails here, at start. Most callers use :func:`fedhet.methods.parse_run_config`, which passes
    the registry.

    Raises
    ------
    ConfigError
        On an unknown key, an unknown method, a wrong type, an out-of-range value, or a dataset or
        model the chosen method does not accept.
    """
    shared_keys = {kebab(n) for n in SharedConfig.model_fields}
    shared_raw: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        if key in shared_keys:
            shared_raw[key] = value
        elif "." in key and key.split(".", 1)[0] in methods:
            prefix, sub = key.split(".", 1)
            tables.setdefault(prefix, {})[sub] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s): {', '.join(repr(k) for k in sorted(unknown))}. "
            f"Shared keys: {', '.join(sorted(shared_keys))}. Method keys are '<method>.<key>' "
            f"with <method> one of: {', '.join(methods)}."
        )
    shared = validate_model(SharedConfig, shared_raw, "", "run config")
    if shared.method not in methods:
        raise ConfigError(
            f"invalid run config: 'method' = {shared.method!r}; allowed: {', '.join(methods)}"
        )
    shared = _resolve(shared, shared.method, methods[shared.method])
    parsed: dict[str, BaseModel] = {}
    for name, info in methods.items():
        if name in tables or name == shared.method:
            parsed[name] = validate_model(
                info.config_cls, tables.get(name, {}), f"{name}.", f"'{name}' settings"
            )
    resolved = {**raw, "dataset": shared.dataset, "model": shared.model}
    return RunConfig(shared=shared, method=parsed[shared.method], raw=resolved)


def default_run_config(**overrides: Any) -> dict[str, Any]:
    """Flower-style flat run config with every shared default, plus ``overrides``.

    Keyword names may use underscores (``num_server_rounds=2``) or be passed as a dict with
    kebab/dotted keys (``**{"fiarse.ladder": "0.25,1"}``).
    """
    raw: dict[str, Any] = {
        kebab(name): field.default for name, field in SharedConfig.model_fields.items()
    }
    for key, value in overrides.items():
        raw[key if "." in key else kebab(key)] = value
    return raw


class LoraAdapterSettings(KebabModel):
    """LoRA settings shared by the adapter methods (FL-TAC, FedIT); METHODS.md B8, §4.4.

    Local training of adapter methods uses these keys, not the shared ``lr`` / ``local-steps`` /
    ``batch-size`` (tuned for SGD on image CNNs).

    Attributes
    ----------
    rank : int
        LoRA rank r (each method sets its own default).
    alpha : float
        ``lora_alpha``; 0 means 2·r (scaling fixed at 2, our choice; FL-TAC's code: 16).
    dropout : float
        LoRA dropout (FL-TAC's code: 0.05).
    target_modules : str
        Comma-separated modules to adapt (FL-TAC: ``query,value``).
    lr : float
        AdamW learning rate (our choice 2e-3 for MiniLM; FL-TAC's code 5e-4 on BERT).
    steps : int
        τ, local steps per (device, task) and round (our choice 10; FL-TAC's code 50).
    batch_size : int
        Local batch size (our choice 16; FL-TAC's code 32).
    max_length : int
        Token length (our choice 48; the tasks' texts average 10–19 words; FL-TAC's code 128).
    num_labels : int
        C_max, outputs of each head (logits beyond a task's classes are masked); 0 = the largest
        class count of the run's dataset. Set it when devices bring their own CSV data.
    eval_batch_size : int
        Batch size of local evaluation.
    """

    rank: int = Field(1, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(0.0, ge=0, description="lora_alpha; 0 = 2·rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str = Field("query,value", description="Modules with LoRA (comma-separated).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    steps: int = Field(10, ge=1, description="τ: local steps per task and round.")
    batch_size: int = Field(16, ge=1, description="Local batch size.")
    max_length: int = Field(48, ge=8, le=512, description="Token length.")
    num_labels: int = Field(0, ge=0, description="Head outputs (0: C_max of the dataset).")
    eval_batch_size: int = Field(64, ge=1, description="Local evaluation batch size.")

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: str) -> str:
        names = [m.strip() for m in v.split(",") if m.strip()]
        if not names:
            raise ValueError("give at least one module name, e.g. 'query,value'")
        return ",".join(names)

    def lora_alpha(self) -> float:
        """``lora_alpha`` after the 0 → 2·r default."""
        return self.alpha or 2.0 * self.rank

    def modules(self) -> tuple[str, ...]:
        """Target modules as a tuple."""
        return tuple(self.target_modules.split(","))
