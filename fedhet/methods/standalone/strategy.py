"""Standalone server: plans each device's architecture and collects metrics; nothing is averaged.

The "Standalone" baseline of pFedAFM (Yi et al., arXiv 2404.17847, §5; METHODS.md §5.6): each
device trains its own CNN-x (the pFedAFM architecture rule, :mod:`fedhet.models.afm`) on its own
data, 2E epochs per round (compute-matched with pFedAFM's two stages), and never communicates
model parameters. It still registers, gets a plan and reports metrics, so it runs side by side
with pFedAFM; its messages carry config and metrics only.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from fedhet.config import ConfigError, RunConfig
from fedhet.methods.standalone.config import StandaloneConfig
from fedhet.methods.standalone.plan import StandaloneKnobs
from fedhet.models.afm import ArchKnobs
from fedhet.models.cnn import AFM_ARCHS
from fedhet.server.archs import ArchFamilyStrategy
from fedhet.server.run_dir import RunDir
from fedhet.server.strategy import Node, Reply
from fedhet.server.validate import ArraySpec

log = logging.getLogger("fedhet")


class StandaloneStrategy(ArchFamilyStrategy):
    """No federation: per-device architecture plans, empty payloads, per-device metrics.

    Metrics: per node ``arch`` and ``eval-accuracy``; per round ``eval-accuracy`` = mean over
    devices of their local-test accuracy, ``eval-accuracy-pooled`` and ``eval-accuracy-<arch>``.
    """

    knobs_model: ClassVar[type[ArchKnobs]] = StandaloneKnobs
    name: ClassVar[str] = "standalone"
    #: No model parameters travel and no global state exists.
    communicates: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        if cfg.shared.model not in AFM_ARCHS:
            raise ConfigError(
                f"invalid run config: 'model' = {cfg.shared.model!r} is not usable by method "
                f"'standalone' (it trains the pFedAFM family); use one of: {', '.join(AFM_ARCHS)}"
            )
        self.scfg: StandaloneConfig = cfg.method_as(StandaloneConfig)
        self.arch_assignment = self.scfg.arch_assignment
        super().__init__(cfg, run_dir)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """No global model."""
        return {}

    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.mark_arch(node)
        return {}, {}

    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.mark_arch(node)
        return {}, {}

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        """A train reply carries no arrays."""
        return {}

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Nothing to aggregate."""
