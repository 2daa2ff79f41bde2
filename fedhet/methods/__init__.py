"""Method registry: every method (and baseline) registered by name, imported lazily.

A method is a folder ``fedhet/methods/<name>/`` with ``config.py`` (a pydantic settings model),
``strategy.py`` (a :class:`~fedhet.server.strategy.FedhetStrategy` subclass), ``client.py``
(``train(msg, ctx)`` and ``evaluate(msg, ctx)`` returning reply content) and, for what both halves
need, neutral modules (``wire.py``, ``windows.py``…). Registering it is one :class:`MethodEntry`
here, naming its classes explicitly, plus its ``[tool.flwr.app.config.<name>]`` table in
pyproject.toml (see docs/writing-a-method.md). Entries are ``module:attribute`` strings, so that
parsing a run config never imports torch, Flower or transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from fedhet import config as _config
from fedhet.data.catalog import IMAGE_DATASETS, TEXT_DATASETS
from fedhet.models.catalog import (
    AFM_ARCHS,
    IMAGE_MODELS,
    TEXT_MODELS,
    UNIT_MODELS,
    WIDTH_MODELS,
)


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


@dataclass(frozen=True)
class MethodEntry:
    """Where a registered method's parts live, and what it can train.

    Attributes
    ----------
    name : str
        Run-config name (``method = "<name>"``) and prefix of its keys (``<name>.<key>``).
    config, strategy : str
        ``module:Class`` of its settings model and of its strategy.
    client : str
        Module holding its device handlers ``train`` and ``evaluate``.
    summary : str
        One line for ``fedhet methods`` (cite the paper).
    default_dataset, default_model : str
        What ``dataset = "auto"`` / ``model = "auto"`` (the defaults) resolve to.
    datasets, models : tuple of str
        What the method accepts; any other explicit choice is a ConfigError at start.
    """

    name: str
    config: str
    strategy: str
    client: str
    summary: str
    default_dataset: str = "fashion-mnist"
    default_model: str = "cnn_s"
    datasets: tuple[str, ...] = IMAGE_DATASETS
    models: tuple[str, ...] = IMAGE_MODELS

    def __post_init__(self) -> None:
        if self.default_dataset not in self.datasets:
            raise ValueError(f"{self.name}: default dataset not in {self.datasets}")
        if self.default_model not in self.models:
            raise ValueError(f"{self.name}: default model not in {self.models}")

    @cached_property
    def config_cls(self) -> type[BaseModel]:
        """The settings model (imported on first use)."""
        cls: type[BaseModel] = _load(self.config)
        return cls

    @cached_property
    def strategy_cls(self) -> Any:
        """The strategy class (imports Flower and torch)."""
        return _load(self.strategy)

    @cached_property
    def client_module(self) -> ModuleType:
        """The device-side module with ``train`` and ``evaluate``."""
        module: ModuleType = _load(self.client)
        return module


def _entry(
    name: str, folder: str, config: str, strategy: str, summary: str, **kw: Any
) -> MethodEntry:
    base = f"fedhet.methods.{folder}"
    return MethodEntry(
        name=name,
        config=f"{base}.config:{config}",
        strategy=f"{base}.strategy:{strategy}",
        client=f"{base}.client",
        summary=summary,
        **kw,
    )


_TEXT = {
    "default_dataset": "text-tasks",
    "default_model": "minilm",
    "datasets": TEXT_DATASETS,
    "models": TEXT_MODELS,
}

METHODS: dict[str, MethodEntry] = {
    e.name: e
    for e in [
        _entry(
            "fedavg",
            "fedavg",
            "FedAvgConfig",
            "FedAvgStrategy",
            "FedAvg: every device trains the full model.",
        ),
        _entry(
            "fedavg-drop",
            "fedavg",
            "FedAvgDropConfig",
            "FedAvgDropStrategy",
            "FedAvg that leaves out devices whose budget cannot do full training.",
        ),
        _entry(
            "fiarse",
            "fiarse",
            "FiarseConfig",
            "FiarseStrategy",
            "FIARSE: top-γ magnitude submodels, surrogate-gradient masks (arXiv 2407.19389).",
        ),
        _entry(
            "heterofl",
            "width",
            "HeteroFLConfig",
            "HeteroFLStrategy",
            "HeteroFL: static nested width slices (ICLR 2021).",
            models=WIDTH_MODELS,
        ),
        _entry(
            "fedrolex",
            "width",
            "FedRolexConfig",
            "FedRolexStrategy",
            "FedRolex: rolling width window (NeurIPS 2022).",
            models=WIDTH_MODELS,
        ),
        _entry(
            "fltac",
            "fltac",
            "FltacConfig",
            "FltacStrategy",
            "FL-TAC: per-task LoRA adapters, server-side adapter clustering (arXiv 2404.15384).",
            **_TEXT,
        ),
        _entry(
            "fedit",
            "fedit",
            "FedITConfig",
            "FedITStrategy",
            "FedIT: one shared LoRA adapter per device, FedAvg (arXiv 2305.05644).",
            **_TEXT,
        ),
        _entry(
            "cocofl",
            "cocofl",
            "CoCoFLConfig",
            "CoCoFLStrategy",
            "CoCoFL: one fp32 window trained per device, int8 frozen units around it "
            "(arXiv 2203.05468).",
            default_model="cnn_b",
            models=UNIT_MODELS,
        ),
        _entry(
            "genefl",
            "genefl",
            "GeneflConfig",
            "GeneflStrategy",
            "GENE-FL (reconstructed): learnGene exchange per cluster, Fisher ties, newcomers by "
            "probe signature (arXiv 2504.14628).",
            default_model="cnn_b",
        ),
        _entry(
            "pfedafm",
            "pfedafm",
            "PfedafmConfig",
            "PfedafmStrategy",
            "pFedAFM: own architecture per device, shared extractor G mixed in per device through "
            "learnable α (arXiv 2404.17847).",
            default_model="afm_cnn5",
            models=tuple(AFM_ARCHS),
        ),
        _entry(
            "standalone",
            "standalone",
            "StandaloneConfig",
            "StandaloneStrategy",
            "Standalone: every device trains its own pFedAFM-family architecture alone, no "
            "communication (pFedAFM's baseline, arXiv 2404.17847).",
            default_model="afm_cnn5",
            models=tuple(AFM_ARCHS),
        ),
    ]
}


def get_method(name: str) -> MethodEntry:
    """The registered method ``name``; a ValueError lists the known names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}") from None


def parse_run_config(
    raw: Mapping[str, Any], methods: Mapping[str, MethodEntry] | None = None
) -> _config.RunConfig:
    """Parse Flower's flat run config against the registry (:func:`fedhet.config.parse_run_config`).

    ``methods`` defaults to :data:`METHODS`. Imports no Flower, torch or method code beyond the
    settings models of the methods the config names.
    """
    return _config.parse_run_config(raw, METHODS if methods is None else methods)


__all__ = ["METHODS", "MethodEntry", "get_method", "parse_run_config"]
