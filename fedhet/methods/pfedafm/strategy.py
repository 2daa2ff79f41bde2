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
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Message, MetricRecord

from fedhet.config import ConfigError, RunConfig
from fedhet.core.aggregate import Contribution, weighted_mean
from fedhet.core.seeding import derive_seed
from fedhet.core.summaries import mean_by_group, mean_over_devices
from fedhet.methods.pfedafm import wire
from fedhet.methods.pfedafm.config import PfedafmConfig
from fedhet.methods.pfedafm.plan import PfedafmKnobs, plan_knobs
from fedhet.models.afm import AFM_REFERENCE, build_extractor, reference_bytes, relative_sizes
from fedhet.models.cnn import AFM_ARCHS
from fedhet.plan import Budget, FleetReference, Knobs
from fedhet.profile import DeviceProfile
from fedhet.server.run_dir import RunDir
from fedhet.server.strategy import FedhetStrategy, Node, Reply

log = logging.getLogger("fedhet")


class PfedafmStrategy(FedhetStrategy):
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

    knobs_model: ClassVar[type[Knobs]] = PfedafmKnobs
    name: ClassVar[str] = "pfedafm"
    personalised: ClassVar[bool] = True

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        if cfg.shared.model not in AFM_ARCHS:
            raise ConfigError(
                f"invalid run config: 'model' = {cfg.shared.model!r} cannot be mixed by method "
                f"'pfedafm'; it names the shared extractor G and must be one of: "
                f"{', '.join(AFM_ARCHS)} (default afm_cnn5)"
            )
        self.acfg: PfedafmConfig = cfg.method_as(PfedafmConfig)
        super().__init__(cfg, run_dir)

    # hooks ------------------------------------------------------------------------------------
    def initial_arrays(self) -> dict[str, np.ndarray]:
        """θ⁰: G, the feature extractor of the run's model, seeded (no classifier)."""
        torch.manual_seed(derive_seed(self.shared.seed, "init"))
        g = build_extractor(self.shared.model)
        return {k: v.detach().cpu().numpy().copy() for k, v in g.state_dict().items()}

    def fleet_reference(self) -> FleetReference:
        """Budgets are fractions of training CNN-1, the family's largest model."""
        n_bytes = reference_bytes()
        fastest = min(
            (n.profile.bench_ms for n in self.nodes.values() if n.profile.bench_ms), default=None
        )
        return FleetReference(n_bytes, 4 * n_bytes, fastest)

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, Knobs, str]:
        """The device's architecture; a declared ``arch`` outside the family excludes it."""
        try:
            knobs = plan_knobs(
                self.acfg.arch_assignment,
                budget.time,
                budget.memory,
                index=profile.partition_id,
                declared=profile.arch,
            )
        except ValueError as exc:
            log.error("device %s left out: %s", profile.device_id, exc)
            return False, PfedafmKnobs(rule="declared", infeasible=str(exc)), str(exc)
        if knobs.arch is None:
            log.warning(
                "device %s: %s; it will reply infeasible", profile.device_id, knobs.infeasible
            )
        return True, knobs, knobs.infeasible

    def _mark(self, node: Node) -> None:
        self.current.node(node)["arch"] = node.plan.knobs.get("arch")

    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """θ^{t−1}, dense (METHODS.md §5.3); the plan (with ``arch``) goes in the config."""
        self._mark(node)
        return self.global_arrays, {}

    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._mark(node)
        return self.global_arrays, {}

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """θ^t = Σ_k n_k θ_k / Σ_k n_k over the valid replies (B2 ``plain``); log α per node."""
        for r in replies:
            entry = self.current.node(r.node)
            entry.update({k: r.metrics[k] for k in wire.NODE_TRAIN_METRICS if k in r.metrics})
        trained = [e for e in self.current.nodes.values() if e.get("status") == "trained"]
        self.current.extras["alpha-mean"] = mean_over_devices(trained, wire.ALPHA_MEAN)
        for arch, value in mean_by_group(trained, wire.ALPHA_MEAN, "arch").items():
            self.current.extras[f"alpha-mean-{arch}"] = value
        contribs = [
            Contribution(r.arrays, float(r.num_examples)) for r in replies if r.num_examples > 0
        ]
        if contribs:
            self.global_arrays = weighted_mean(contribs, self.global_arrays)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """``eval-accuracy`` = mean over devices of personalised local-test accuracy (§5.5).

        Beside it: ``eval-accuracy-pooled`` (Σ correct / Σ samples), ``eval-g-accuracy`` (mean
        over devices of the G-only path h_k(G(x))) and ``eval-accuracy-<arch>``.
        """
        pooled = super().aggregate_evaluate(server_round, replies)
        if pooled is None:
            return None
        evaluated = [e for e in self.current.nodes.values() if e.get("eval-examples")]
        for e in evaluated:
            e["eval-g-accuracy"] = int(e.get(wire.EVAL_G_CORRECT, 0)) / int(e["eval-examples"])
        out = dict(pooled)
        out["eval-accuracy-pooled"] = out["eval-accuracy"]
        out["eval-accuracy"] = mean_over_devices(evaluated, "eval-accuracy") or 0.0
        out["eval-g-accuracy"] = mean_over_devices(evaluated, "eval-g-accuracy") or 0.0
        self.current.extras["eval-g-accuracy"] = out["eval-g-accuracy"]
        self.current.extras["eval-accuracy-pooled"] = out["eval-accuracy-pooled"]
        for arch, value in mean_by_group(evaluated, "eval-accuracy", "arch").items():
            self.current.extras[f"eval-accuracy-{arch}"] = value
        return MetricRecord(out)

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """None: G has no classifier and every device has its own header."""
        return {}

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
