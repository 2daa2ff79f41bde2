"""pFedAFM server: plan each device's architecture, federate the shared extractor G only.

Yi et al., "pFedAFM: Adaptive Feature Mixture for Batch-Level Personalization in Heterogeneous
Federated Learning", arXiv 2404.17847, Algorithm 1 (server); METHODS.md §5.2–§5.3. The server
holds θ, the parameters of G (the feature extractor of the run's ``model``, CNN-5 by default:
520,248 parameters; G has no classifier, so none is ever sent), sends it dense to every sampled
device and replaces it by the sample-weighted mean of the returned θ_k (B2 ``plain``). Local
models and α never reach it.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from fedhet.config import ConfigError, RunConfig
from fedhet.core.seeding import derive_seed
from fedhet.core.summaries import mean_by_group, mean_over_devices
from fedhet.methods.pfedafm import wire
from fedhet.methods.pfedafm.config import PfedafmConfig
from fedhet.methods.pfedafm.plan import PfedafmKnobs
from fedhet.models.afm import AFM_REFERENCE, ArchKnobs, build_extractor, relative_sizes
from fedhet.models.cnn import AFM_ARCHS
from fedhet.server.archs import ArchFamilyStrategy
from fedhet.server.run_dir import RunDir
from fedhet.server.strategy import Node, Reply

log = logging.getLogger("fedhet")


class PfedafmStrategy(ArchFamilyStrategy):
    """pFedAFM (arXiv 2404.17847) on the fedhet base strategy.

    Plan (METHODS.md §2): knob ``arch`` from ``pfedafm.arch-assignment`` (``budget``: largest
    CNN-x with parameters relative to CNN-1 ≤ min(T, M); ``index``: partition-id mod 5); a
    declared node-config ``arch`` wins; a device whose memory fits no architecture gets none and
    replies ``infeasible``.

    Metrics (``metrics.jsonl``): per node ``arch``, ``alpha-mean``, ``alpha-hist`` (10 bins over
    [0, 1]), ``alpha-resets``, ``stage1-loss``, ``stage2-loss``, ``eval-accuracy`` (mixture),
    ``eval-g-accuracy`` (G-only path h_k(G(x))); per round ``eval-accuracy`` = mean over devices
    of their personalised local-test accuracy, ``eval-accuracy-pooled``, ``eval-g-accuracy``,
    ``alpha-mean``, and per architecture ``eval-accuracy-<arch>``, ``alpha-mean-<arch>``.
    """

    knobs_model: ClassVar[type[ArchKnobs]] = PfedafmKnobs
    name: ClassVar[str] = "pfedafm"

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        if cfg.shared.model not in AFM_ARCHS:
            raise ConfigError(
                f"invalid run config: 'model' = {cfg.shared.model!r} cannot be mixed by method "
                f"'pfedafm'; it names the shared extractor G and must be one of: "
                f"{', '.join(AFM_ARCHS)} (default afm_cnn5)"
            )
        self.acfg: PfedafmConfig = cfg.method_as(PfedafmConfig)
        self.arch_assignment = self.acfg.arch_assignment
        super().__init__(cfg, run_dir)

    # hooks ------------------------------------------------------------------------------------
    def initial_arrays(self) -> dict[str, np.ndarray]:
        """θ⁰: G, the feature extractor of the run's model, seeded (no classifier)."""
        torch.manual_seed(derive_seed(self.shared.seed, "init"))
        g = build_extractor(self.shared.model)
        return {k: v.detach().cpu().numpy().copy() for k, v in g.state_dict().items()}

    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """θ^{t−1}, dense (METHODS.md §5.3); the plan (with ``arch``) goes in the config."""
        self.mark_arch(node)
        return self.global_arrays, {}

    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.mark_arch(node)
        return self.global_arrays, {}

    #: θ^t is the plain sample-weighted mean of the θ_k: replies are streamed (issue 15 item 4).
    aggregate_is_mean: ClassVar[bool] = True

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """θ^t = Σ_k n_k θ_k / Σ_k n_k over the valid replies (B2 ``plain``), after
        :meth:`note_replies`. Overridden only to keep the robust rules off: pFedAFM's
        aggregation is its own (METHODS.md §5.3)."""
        super().aggregate(server_round, replies)

    def note_replies(self, server_round: int, replies: list[Reply]) -> None:
        """Log α per node and its means per round and architecture (metrics only)."""
        for r in replies:
            entry = self.current.node(r.node)
            entry.update({k: r.metrics[k] for k in wire.NODE_TRAIN_METRICS if k in r.metrics})
        trained = [e for e in self.current.nodes.values() if e.get("status") == "trained"]
        self.current.extras["alpha-mean"] = mean_over_devices(trained, wire.ALPHA_MEAN)
        for arch, value in mean_by_group(trained, wire.ALPHA_MEAN, "arch").items():
            self.current.extras[f"alpha-mean-{arch}"] = value

    def evaluation_extras(self, evaluated: list[dict[str, Any]]) -> dict[str, float]:
        """``eval-g-accuracy``: mean over devices of the G-only path h_k(G(x)) (METHODS.md §5.2)."""
        for e in evaluated:
            e["eval-g-accuracy"] = int(e.get(wire.EVAL_G_CORRECT, 0)) / int(e["eval-examples"])
        return {"eval-g-accuracy": mean_over_devices(evaluated, "eval-g-accuracy") or 0.0}

    def summary(self) -> None:
        super().summary()
        d = sum(int(v.size) for v in self.global_arrays.values())
        log.info(
            "  pfedafm: G = extractor of %s, %d parameters (%.2f MB per direction and device); "
            "architectures relative to %s: %s",
            self.shared.model,
            d,
            4 * d / 1e6,
            AFM_REFERENCE,
            {k: round(v, 3) for k, v in relative_sizes().items()},
        )
