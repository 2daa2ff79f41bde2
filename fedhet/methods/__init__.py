"""Method registry: every method (and baseline) registered by name, imported lazily.

A method is a folder ``fedhet/methods/<name>/`` with ``config.py`` (a pydantic settings model),
``strategy.py`` (a :class:`~fedhet.server.strategy.FedhetStrategy` subclass) and ``client.py``
(``train(msg, ctx)`` and ``evaluate(msg, ctx)`` returning reply content). Registering a new method
is one entry here; nothing else changes. Entries are ``module:attribute`` strings so that parsing a
run config never imports torch-heavy or transformers-heavy method code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class MethodEntry:
    """Where a registered method's parts live."""

    name: str
    config: str
    strategy: str
    client: str
    summary: str
    default_dataset: str = "fashion-mnist"
    default_model: str = "cnn_s"
    #: Run-config overrides the method matrix tests use (tiny, data-package-free settings).
    test_overrides: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def _load(spec: str) -> Any:
        module, _, attr = spec.partition(":")
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod

    @cached_property
    def config_cls(self) -> Any:
        return self._load(self.config)

    @cached_property
    def strategy_cls(self) -> Any:
        return self._load(self.strategy)

    @cached_property
    def client_module(self) -> ModuleType:
        return self._load(self.client)


def _entry(name: str, package: str, prefix: str, summary: str, **kw: Any) -> MethodEntry:
    base = f"fedhet.methods.{package}"
    return MethodEntry(
        name=name,
        config=f"{base}.config:{prefix}Config",
        strategy=f"{base}.strategy:{prefix}Strategy",
        client=f"{base}.client",
        summary=summary,
        **kw,
    )


METHODS: dict[str, MethodEntry] = {
    e.name: e
    for e in [
        _entry("fedavg", "fedavg", "FedAvg", "FedAvg: every device trains the full model."),
        _entry(
            "fedavg-drop",
            "fedavg",
            "FedAvgDrop",
            "FedAvg that leaves out devices whose budget cannot do full training.",
        ),
        _entry(
            "fiarse",
            "fiarse",
            "Fiarse",
            "FIARSE: top-γ magnitude submodels, surrogate-gradient masks (arXiv 2407.19389).",
        ),
        _entry(
            "heterofl", "width", "HeteroFL", "HeteroFL: static nested width slices (ICLR 2021)."
        ),
        _entry("fedrolex", "width", "FedRolex", "FedRolex: rolling width window (NeurIPS 2022)."),
        _entry(
            "fltac",
            "fltac",
            "Fltac",
            "FL-TAC: per-task LoRA adapters, server-side adapter clustering (arXiv 2404.15384).",
            default_dataset="text-tasks",
            default_model="minilm",
            test_overrides=(
                ("dataset", "synthetic-text"),
                ("model", "tiny-bert"),
                ("fltac.steps", 2),
                ("fltac.max-length", 16),
            ),
        ),
        _entry(
            "fedit",
            "fedit",
            "FedIT",
            "FedIT: one shared LoRA adapter per device, FedAvg (arXiv 2305.05644).",
            default_dataset="text-tasks",
            default_model="minilm",
            test_overrides=(
                ("dataset", "synthetic-text"),
                ("model", "tiny-bert"),
                ("fedit.steps", 2),
                ("fedit.max-length", 16),
            ),
        ),
        _entry(
            "cocofl",
            "cocofl",
            "CoCoFL",
            "CoCoFL: one fp32 window trained per device, int8 frozen units around it "
            "(arXiv 2203.05468).",
            test_overrides=(("model", "cnn_b"),),
        ),
        _entry(
            "pfedafm",
            "pfedafm",
            "Pfedafm",
            "pFedAFM: own architecture per device, shared extractor G mixed in per device through "
            "learnable α (arXiv 2404.17847).",
            default_model="afm_cnn5",
            test_overrides=(("model", "afm_cnn5"), ("pfedafm.steps", 2)),
        ),
        _entry(
            "standalone",
            "standalone",
            "Standalone",
            "Standalone: every device trains its own architecture alone, no communication "
            "(pFedAFM baseline).",
            default_model="afm_cnn5",
            test_overrides=(("model", "afm_cnn5"), ("standalone.steps", 4)),
        ),
    ]
}


def get_method(name: str) -> MethodEntry:
    """The registered method ``name``; a ValueError lists the known names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}") from None
