"""CoCoFL server: full model down, one trained window up, zero-fill mean per tensor.

Beutel et al., "CoCoFL: Communication- and Computation-Aware Federated Learning via Partial NN
Freezing and Quantization", TMLR 2023, arXiv 2203.05468; METHODS.md §6 and B7.

Each round a sampled device receives the full global model (parameters and buffers, §6.3), draws
its upload budget D_t ~ U(D_min, D_max) seeded by (run, device, round), keeps the maximal windows of
the model's cost table within (T, D_t, M) (B7 ``feasible_windows``), picks one (seeded uniform or
round-robin), trains it and uploads only the window's tensors. The server recomputes the same
options from the device's plan and drops a reply whose window is not among them or whose tensors
are not exactly the window's. Aggregation is B2 ``zero-fill``: a device that did not train a tensor
counts as a zero update, w_l ← w_l + (1/|S|)·Σ_{i∈S_l}(w_{l,i} − w_l), BN statistics alike,
``num_batches_tracked`` skipped.

The window planning functions live in :mod:`fedhet.methods.cocofl.windows`, so that the device
(:mod:`fedhet.methods.cocofl.client`) and the server run the same code on the same table.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from fedhet.config import RunConfig
from fedhet.core.aggregate import Contribution, masked_mean
from fedhet.core.codec import decode_payload, payload_bytes
from fedhet.core.costs import WindowCost
from fedhet.core.quant import window_state_keys
from fedhet.methods.cocofl.config import CoCoFLConfig, step_lr
from fedhet.methods.cocofl.plan import CoCoFLKnobs
from fedhet.methods.cocofl.windows import (
    cost_table_source,
    reported_window,
    window_cost_table,
    window_label,
    window_options,
)
from fedhet.plan import Budget
from fedhet.profile import DeviceProfile
from fedhet.server.run_dir import RunDir
from fedhet.server.strategy import FedhetStrategy, Node, Reply
from fedhet.server.validate import ReplyError, spec_of, validate_arrays

#: Suffixes of BatchNorm running statistics (aggregated per ``cocofl.bn-stats``).
BN_STATS: tuple[str, ...] = (".running_mean", ".running_var")

log = logging.getLogger("fedhet")

#: Slack for float comparisons of fractions (the table's full window is exactly 1).
EPS = 1e-9


class CoCoFLStrategy(FedhetStrategy):
    """CoCoFL (arXiv 2203.05468, §3–4) on the fedhet base strategy.

    Plan (METHODS.md §2): every device participates when some window fits (T, D_max, M); knobs
    list its maximal windows at D_min and D_max for the log. Per round the device chooses its
    window; the server recomputes the options for (T, D_t, M) and checks the reply against them.

    Per node in ``metrics.jsonl``, written by the server once it has checked the reply:
    ``plan-window-start``/``-end`` (the window the device chose), ``plan-time``, ``plan-data``,
    ``plan-memory`` (the table's predicted fractions), ``plan-upload-budget`` (D_t),
    ``plan-options``, ``plan-lr``; from the device only its choice (``window-start``/``-end``)
    and measurements: ``measured-train-seconds``, ``measured-upload-bytes``,
    ``measured-peak-mem-bytes``, ``measured-data``. Per round:
    ``cocofl-unit-trainers`` (how many devices trained each unit).
    """

    #: Devices train different parts (sizes / windows): see ``comparable_updates`` in hooks.
    comparable_updates: ClassVar[bool] = False

    name: ClassVar[str] = "cocofl"
    aggregates_with_combine: ClassVar[bool] = True
    #: The train message carries the full fp32 global model, which evaluate scores.
    fused_evaluation: ClassVar[bool] = True
    knobs_model = CoCoFLKnobs

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        super().__init__(cfg, run_dir)
        self.ccfg: CoCoFLConfig = cfg.method_as(CoCoFLConfig)
        self.table = window_cost_table(self.shared.model, self.shared.batch_size, self.ccfg)
        self.shapes = {k: tuple(v.shape) for k, v in self.global_arrays.items()}
        self.full_bytes = int(sum(np.asarray(v).nbytes for v in self.global_arrays.values()))
        from fedhet.models import build_model

        self._template = build_model(self.shared.model)
        self.num_units = len(self._template.units)  # type: ignore[arg-type]
        self._window_keys = {
            r.window: window_state_keys(self._template, r.window) for r in self.table
        }

    # plan -------------------------------------------------------------------------------------
    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, CoCoFLKnobs, str]:
        """The window-choice inputs; a device participates when some window fits (T, D_max, M)."""
        forced = self.ccfg.forced_window
        at_min = window_options(self.table, budget, budget.upload_min, forced)
        at_max = window_options(self.table, budget, budget.upload_max, forced)
        knobs = CoCoFLKnobs(
            choice=self.ccfg.choice,
            force_window=forced,
            windows_at_upload_min=[window_label(r.window) for r in at_min],
            windows_at_upload_max=[window_label(r.window) for r in at_max],
        )
        if not at_max:
            return (
                False,
                knobs,
                (
                    f"no window of the cost table fits T={budget.time:.2f}, "
                    f"D_max={budget.upload_max:.2f}, M={budget.memory:.2f}"
                ),
            )
        return True, knobs, ""

    def round_options(self, node: Node, server_round: int) -> tuple[float, list[WindowCost]]:
        """``(D_t, allowed windows)`` of ``node`` in ``server_round``, as the device computes them."""
        budget = node.plan.budget
        forced = node.plan.knobs_as(CoCoFLKnobs).force_window
        upload = budget.upload_draw(self.shared.seed, node.device_id, server_round)
        return upload, window_options(self.table, budget, upload, forced)

    # replies ----------------------------------------------------------------------------------
    def validate_reply(
        self, node: Node, server_round: int, arrays: dict[str, np.ndarray], metrics: dict[str, Any]
    ) -> None:
        """A reply must carry exactly the tensors of one window the device was allowed this round.

        Raises :class:`ReplyError` when the reported window is missing or not among the options
        for (T, D_t, M), when the uploaded names differ from the window's parameters and buffers,
        on a wrong shape, dtype or a non-finite value, or when the payload exceeds D_t × the full
        model's bytes (§6.3; not checked for a forced window).
        """
        try:
            window = reported_window(metrics)
        except (KeyError, TypeError, ValueError):
            raise ReplyError("reply does not report its window (window-start/end)") from None
        upload, options = self.round_options(node, server_round)
        allowed = {r.window for r in options}
        if window not in allowed:
            raise ReplyError(
                f"window {window_label(window)} is not feasible for this device in round "
                f"{server_round} (D_t={upload:.3f}; allowed: "
                f"{sorted(window_label(w) for w in allowed) or 'none'})"
            )
        keys = self._window_keys[window]
        expected = {k: v for k, v in spec_of(self.global_arrays).items() if k in keys}
        validate_arrays(arrays, expected, required=True)
        sent = payload_bytes(arrays)
        if self.ccfg.forced_window is None and sent > upload * self.full_bytes + EPS:
            raise ReplyError(
                f"upload of {sent} B exceeds D_t × full model = {upload * self.full_bytes:.0f} B"
            )
        row = next(r for r in options if r.window == window)
        lr = step_lr(
            self.shared.lr,
            server_round,
            self.shared.num_server_rounds,
            self.ccfg.milestones,
            self.ccfg.lr_decay,
        )
        self.current.node(node).update(
            {
                "plan-window-start": window[0],
                "plan-window-end": window[1],
                "plan-time": row.time,
                "plan-data": row.data,
                "plan-memory": row.memory,
                "plan-upload-budget": upload,
                "plan-options": len(options),
                "plan-lr": lr,
            }
        )
        log.info(
            "round %d: device %s (%s) window %s, D_t=%.3f | predicted time %.3f data %.3f "
            "memory %.3f | measured %.3f s, %d B up (%.3f), %d B peak",
            server_round,
            node.device_id,
            node.profile.device_class,
            window_label(window),
            upload,
            row.time,
            row.data,
            row.memory,
            float(metrics.get("measured-train-seconds", 0.0)),
            sent,
            sent / self.full_bytes,
            int(metrics.get("measured-peak-mem-bytes", 0)),
        )

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """B2 ``zero-fill`` per tensor over the devices that trained it (METHODS.md §6.2, server 3).

        w_l ← w_l + Σ_{i∈S_l} ω_i (w_{l,i} − w_l) / Σ_{i∈S} ω_i with ω_i = 1 (``cocofl.weighted``:
        ω_i = n_i); S are all valid replies of the round, S_l those whose window holds tensor l.
        BN running statistics: ``cocofl.bn-stats=zero-fill`` (default) applies the weights' rule
        (METHODS.md §6.2, the official code); ``holders`` averages them over the devices whose
        window held them (B2 ``holders``, unchanged when nobody trained the unit).
        ``num_batches_tracked`` keeps its value.
        """
        contribs: list[Contribution] = []
        trainers = [0] * self.num_units
        for reply in replies:
            tensors, _ = decode_payload(reply.arrays, self.shapes)
            weight = float(reply.num_examples) if self.ccfg.weighted else 1.0
            contribs.append(Contribution(tensors, weight))
            a, b = reported_window(reply.metrics)
            for u in range(a, b + 1):
                trainers[u] += 1
        if not contribs or sum(c.weight for c in contribs) <= 0:
            return
        self.current.extras["cocofl-unit-trainers"] = trainers
        base = self.global_arrays
        out = self.combine(contribs, base, mode="zero-fill")
        if self.ccfg.bn_stats == "holders" and self.shared.aggregation == "mean":
            stats = {k: v for k, v in base.items() if k.endswith(BN_STATS)}
            out.update(masked_mean(contribs, stats, mode="holders"))
        self.global_arrays = out

    def summary(self) -> None:
        super().summary()
        log.info(
            "  cocofl: %d units, %d windows, cost table %s",
            self.num_units,
            len(self.table),
            cost_table_source(self.shared.model, self.shared.batch_size, self.ccfg),
        )
