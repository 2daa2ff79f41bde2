"""The base strategy every fedhet method extends (DESIGN.md "One round, as messages").

:class:`FedhetStrategy` is a ``flwr.serverapp.strategy.FedAvg`` subclass. It keeps the Flower hooks
(``configure_train``, ``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``) and adds
what a fleet of unequal devices needs:

* **registration**: before every round, nodes not seen before get a ``query.profile`` message; their
  :class:`~fedhet.profile.DeviceProfile` becomes a :class:`~fedhet.plan.NodePlan`;
* **per-node messages**: each sampled node gets its own payload (submodels, windows, adapters);
* **validation**: every reply is checked (names, shapes, dtypes, finite values, metrics) and a bad
  one is dropped with a logged reason;
* **byte ledger**: bytes of every message both ways, per node and round, from what is serialised;
* **outputs**: ``metrics.jsonl`` per round, ``plans.jsonl``, ``profiles.json`` and checkpoints, and
  **resume** from the last checkpoint when a run with the same name is started again.

A method overrides the small hooks below (``train_payload``, ``expected_reply``, ``aggregate`` …)
rather than the Flower hooks; the base class stays the only place that talks to the Grid.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedhet.config import ConfigError, RunConfig
from fedhet.core.aggregate import Contribution, weighted_mean
from fedhet.core.codec import as_contiguous
from fedhet.core.robust import norm_outliers, robust_aggregate
from fedhet.core.seeding import derive_seed, rng
from fedhet.plan import Budget, FleetReference, NodePlan, budget_for, reference_bench_ms
from fedhet.profile import DeviceProfile, parse_profile
from fedhet.server.run_dir import RunDir
from fedhet.server.trust import (
    IdleWatch,
    RunFailed,
    TrustSettings,
    device_in_use,
    read_eval_reply,
    read_train_reply,
    update_norms,
)
from fedhet.server.validate import (
    ArraySpec,
    ReplyError,
    spec_of,
    validate_arrays,
)

log = logging.getLogger("fedhet")

QUERY_PROFILE = "query.profile"
REGISTRATION_TIMEOUT_S = 120.0


@dataclass
class Node:
    """A registered device."""

    node_id: int
    profile: DeviceProfile
    plan: NodePlan

    @property
    def device_id(self) -> str:
        return self.profile.device_id


@dataclass
class Reply:
    """A validated train reply."""

    node: Node
    arrays: dict[str, np.ndarray]
    metrics: dict[str, Any]
    num_examples: int


@dataclass
class RoundLog:
    """What one round records for ``metrics.jsonl``."""

    server_round: int
    started: float = field(default_factory=time.time)
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def node(self, node: Node) -> dict[str, Any]:
        return self.nodes.setdefault(
            node.node_id,
            {
                "node-id": node.node_id,
                "device-id": node.device_id,
                "device-class": node.profile.device_class,
                "bytes-down": 0,
                "bytes-up": 0,
                "payload-bytes-down": 0,
                "payload-bytes-up": 0,
                "train-seconds": 0.0,
                "num-examples": 0,
                "status": "sampled",
            },
        )

    def drop(self, node_id: int, device_id: str | None, stage: str, reason: str) -> None:
        self.dropped.append(
            {"node-id": node_id, "device-id": device_id, "stage": stage, "reason": reason}
        )
        log.warning(
            "round %d: dropped %s reply of node %s (%s): %s",
            self.server_round,
            stage,
            node_id,
            device_id,
            reason,
        )


def to_numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord → ``{name: ndarray}``."""
    return {k: v.numpy() for k, v in record.items()}


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """``{name: ndarray}`` → ArrayRecord (order kept)."""
    return ArrayRecord(array_dict={k: Array(as_contiguous(v)) for k, v in arrays.items()})


def record_bytes(content: RecordDict) -> tuple[int, int]:
    """``(payload_bytes, message_bytes)`` of a message's content (METHODS.md B1)."""
    payload = sum(r.count_bytes() for r in content.array_records.values())
    other = sum(r.count_bytes() for r in content.config_records.values())
    other += sum(r.count_bytes() for r in content.metric_records.values())
    return int(payload), int(payload + other)


class FedhetStrategy(FedAvg):
    """Base class of fedhet methods. Subclasses set :attr:`name` and override the hooks.

    Parameters
    ----------
    cfg : RunConfig
        The parsed run config.
    run_dir : RunDir, optional
        Output folder; ``None`` keeps everything in memory (tests).
    """

    #: Registry name; set by subclasses.
    name: ClassVar[str] = "base"
    #: The global model is personalised per device (evaluation uses per-device state).
    personalised: ClassVar[bool] = False
    #: Train replies carry updates (differences), not parameters (for the norm-outlier filter).
    replies_are_updates: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        shared = cfg.shared
        super().__init__(
            fraction_train=shared.fraction_train,
            fraction_evaluate=shared.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=0 if shared.fraction_evaluate == 0 else 1,
            min_available_nodes=shared.min_nodes,
        )
        self.cfg = cfg
        self.shared = shared
        self.mcfg = cfg.method
        self.run_dir = run_dir
        self.nodes: dict[int, Node] = {}
        self.rejected: dict[int, str] = {}
        self.global_arrays: dict[str, np.ndarray] = self.initial_arrays()
        self.totals = {"bytes-down": 0, "bytes-up": 0}
        self.current: RoundLog = RoundLog(0)
        self._sent: dict[str, int] = {}
        self._server_eval_data: Any = None
        self._server_eval_disabled = not shared.server_eval
        self.trust = TrustSettings.from_shared(shared)
        self.idle = IdleWatch(self.trust.max_idle_rounds)
        self._sent_train: dict[int, dict[str, np.ndarray]] = {}
        self._bench_reference: float | None = None
        self._asked: dict[int, int] = {}
        if self.trust.aggregation != "mean" and not self.supports_robust_rules():
            raise ConfigError(
                f"invalid run config: 'aggregation' = {self.trust.aggregation!r} is not available "
                f"for method {self.name!r} (its aggregation is method-specific); use 'mean'"
            )

    # ------------------------------------------------------------------------------------------
    # Hooks a method overrides
    # ------------------------------------------------------------------------------------------
    def initial_arrays(self) -> dict[str, np.ndarray]:
        """Global arrays at round 0: the run's model, seeded."""
        from fedhet.models import build_model

        torch.manual_seed(derive_seed(self.shared.seed, "init"))
        model = build_model(self.shared.model)
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    def fleet_reference(self) -> FleetReference:
        """Full-training costs of the run's model that budgets are fractions of.

        The time reference is fixed once for the run (:func:`fedhet.plan.reference_bench_ms`,
        from the first registration that carries measurements), so budgets do not depend on the
        order devices register in.
        """
        n_bytes = int(sum(a.nbytes for a in self.global_arrays.values()))
        # weights + gradients + optimiser-free SGD + activations (rough: 4x weights)
        return FleetReference(n_bytes, 4 * n_bytes, self._bench_reference)

    def supports_robust_rules(self) -> bool:
        """Whether ``aggregation = trimmed-mean | median`` applies (full-model replies only)."""
        return type(self).aggregate is FedhetStrategy.aggregate

    def reply_spec(
        self, node: Node, server_round: int, names: list[str]
    ) -> tuple[dict[str, ArraySpec], dict[str, int]]:
        """``(spec, sizes)`` a train reply's arrays are checked against *before* decoding.

        ``names`` are the reply's array names (plain strings, for methods whose allowed names
        depend on them). Default: :meth:`expected_reply`, no open-length sizes.
        """
        return self.expected_reply(node, server_round), {}

    def robust_aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """``aggregation = trimmed-mean | median`` over full-model replies (unweighted)."""
        contribs = [Contribution(r.arrays, 1.0) for r in replies]
        if contribs:
            self.global_arrays = robust_aggregate(
                self.trust.aggregation,
                contribs,
                self.global_arrays,
                trim=self.trust.trim_fraction,
            )

    def plan_knobs(
        self, profile: DeviceProfile, budget: Budget
    ) -> tuple[bool, dict[str, Any], str]:
        """``(participates, knobs, reason)`` for a newly registered device."""
        return True, {}, ""

    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and extra config sent to ``node`` for training (default: the full global model)."""
        return self.global_arrays, {}

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        """Names, shapes and dtypes a train reply of ``node`` must have (default: the global arrays)."""
        return spec_of(self.global_arrays)

    def validate_reply(
        self, node: Node, server_round: int, arrays: dict[str, np.ndarray], metrics: dict[str, Any]
    ) -> None:
        """Raise :class:`ReplyError` if a reply cannot be used."""
        validate_arrays(arrays, self.expected_reply(node, server_round), required=True)

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Update :attr:`global_arrays` from validated replies (default: sample-weighted mean)."""
        contribs = [
            Contribution(r.arrays, float(r.num_examples)) for r in replies if r.num_examples > 0
        ]
        if contribs:
            self.global_arrays = weighted_mean(contribs, self.global_arrays)

    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and extra config sent to ``node`` for evaluation."""
        return self.global_arrays, {}

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """Server-side metrics on the global test set (default: global model accuracy)."""
        data = self._global_test()
        if data is None:
            return {}
        from fedhet.client.training import evaluate_model
        from fedhet.models import build_model

        model = build_model(self.shared.model, num_classes=data.num_classes)
        model.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in self.global_arrays.items()}
        )
        correct, total, loss = evaluate_model(model, data, batch_size=256)
        return {"server-accuracy": correct / max(total, 1), "server-loss": loss / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        """Extra strategy state for checkpoints (method state keyed by device-id)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info("fedhet method %r (%s)", self.name, type(self).__name__)
        log.info("  shared: %s", self.shared.model_dump(by_alias=True))
        log.info("  method: %s", self.mcfg.model_dump(by_alias=True))

    # ------------------------------------------------------------------------------------------
    # Registration and plans
    # ------------------------------------------------------------------------------------------
    def _profile_query_config(self) -> ConfigRecord:
        return ConfigRecord({"run-name": self.shared.run_name, "fleet": self.shared.fleet})

    def register_nodes(self, grid: Grid, server_round: int) -> list[Node]:
        """Ask every node not seen before for its profile; plan the valid ones."""
        # a rejected node is asked again once per round (its profile may be fixed by then)
        unseen = [
            n
            for n in grid.get_node_ids()
            if n not in self.nodes
            and (n not in self.rejected or self._asked.get(n) != server_round)
        ]
        if not unseen:
            return []
        for n in unseen:
            self._asked[n] = server_round
        msgs = [
            Message(
                RecordDict({"config": self._profile_query_config()}),
                dst_node_id=n,
                message_type=QUERY_PROFILE,
            )
            for n in sorted(unseen)
        ]
        timeout = min(self.shared.round_timeout, REGISTRATION_TIMEOUT_S)
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
        new: list[Node] = []
        batch: list[tuple[int, DeviceProfile]] = []
        live = set(grid.get_node_ids())
        for reply in replies:
            node_id = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node_id not in sent.values():
                continue  # not a node we asked
            if reply.has_error():
                log.warning(
                    "node %s: profile query failed (%s); will ask again next round",
                    node_id,
                    reply.error.reason,
                )
                continue
            try:
                if "profile" not in reply.content.config_records:
                    raise ConfigError("reply carries no 'profile' record")
                profile = parse_profile(dict(reply.content.config_records["profile"]))
                holders = [(nid, n.device_id) for nid, n in self.nodes.items()]
                holders += [(nid, p.device_id) for nid, p in batch]
                other = device_in_use(holders, node_id, profile.device_id, live)
                if other is not None:
                    raise ConfigError(
                        f"device-id {profile.device_id!r} is already in use by live node {other}"
                    )
            except Exception as exc:  # one bad profile never stops registration
                self.rejected[node_id] = str(exc)
                log.error(
                    "node %s: profile rejected, node left out of planning (asked again next "
                    "round): %s",
                    node_id,
                    exc,
                )
                continue
            batch.append((node_id, profile))
        if self._bench_reference is None or self.shared.ref_bench_ms:
            measured = [p.bench_ms for _, p in batch if not p.simulated and p.bench_ms]
            if measured or self.shared.ref_bench_ms:
                self._bench_reference = reference_bench_ms(measured, self.shared.ref_bench_ms)
        for node_id, profile in batch:
            self.rejected.pop(node_id, None)
            new.append(self._plan_node(node_id, profile, server_round))
        answered = {sent.get(r.metadata.reply_to_message_id) for r in replies}
        for node_id in sorted(set(unseen) - answered):
            log.warning("node %s: no profile reply within %.0f s; will ask again", node_id, timeout)
        if new or self.rejected:
            self._save_profiles()
        return new

    def _plan_node(self, node_id: int, profile: DeviceProfile, server_round: int) -> Node:
        # A device that re-registers under a new node id (restarted insecure SuperNode) keeps its plan.
        for old_id, old in list(self.nodes.items()):
            if old.device_id == profile.device_id and old_id != node_id:
                log.info(
                    "device %s re-registered: node %s → %s", profile.device_id, old_id, node_id
                )
                del self.nodes[old_id]
        budget = budget_for(profile, self.shared, self.fleet_reference())
        participate, knobs, reason = self.plan_knobs(profile, budget)
        plan = NodePlan(
            node_id=node_id,
            device_id=profile.device_id,
            device_class=profile.device_class,
            budget=budget,
            participate=participate,
            reason=reason,
            knobs=knobs,
        )
        node = Node(node_id, profile, plan)
        self.nodes[node_id] = node
        log.info(
            "node %s registered: device %s, class %s, budget T=%.2f M=%.2f D=[%.2f, %.2f]%s",
            node_id,
            profile.device_id,
            profile.device_class,
            budget.time,
            budget.memory,
            budget.upload_min,
            budget.upload_max,
            "" if participate else f", excluded: {reason}",
        )
        if self.run_dir:
            self.run_dir.append_plan({"round": server_round, **json.loads(plan.to_json())})
        return node

    def _save_profiles(self) -> None:
        if self.run_dir:
            self.run_dir.save_profiles(
                {
                    "nodes": {str(k): n.profile.to_record() for k, n in self.nodes.items()},
                    "plans": {str(k): json.loads(n.plan.to_json()) for k, n in self.nodes.items()},
                    "rejected": {str(k): v for k, v in self.rejected.items()},
                    "reference-bench-ms": self._bench_reference,
                }
            )

    def _restore_profiles(self, live: set[int]) -> None:
        if not self.run_dir:
            return
        data = self.run_dir.load_profiles()
        ref = data.get("reference-bench-ms")
        if isinstance(ref, int | float) and ref > 0:
            self._bench_reference = float(ref)
        for key, raw in data.get("nodes", {}).items():
            node_id = int(key)
            if node_id in live:
                profile = parse_profile(raw)
                plan = NodePlan.model_validate(data["plans"][key])
                self.nodes[node_id] = Node(node_id, profile, plan)
        if self.nodes:
            log.info("restored %d registered nodes from profiles.json", len(self.nodes))

    # ------------------------------------------------------------------------------------------
    # Sampling and messages
    # ------------------------------------------------------------------------------------------
    def sample(self, grid: Grid, server_round: int, fraction: float, purpose: str) -> list[Node]:
        """Seeded sample of live, participating, available nodes."""
        live = set(grid.get_node_ids())
        pool = [
            n
            for nid, n in sorted(self.nodes.items())
            if nid in live
            and n.plan.participate
            and rng(self.shared.seed, n.device_id, server_round, "available").random()
            < n.profile.availability
        ]
        if not pool or fraction <= 0:
            return []
        k = max(1, min(len(pool), int(len(pool) * fraction)))
        idx = rng(self.shared.seed, server_round, purpose).choice(len(pool), size=k, replace=False)
        return [pool[i] for i in sorted(idx)]

    def _message(
        self,
        node: Node,
        arrays: dict[str, np.ndarray],
        config: dict[str, Any],
        server_round: int,
        message_type: str,
    ) -> Message:
        cfg = ConfigRecord(
            {
                "server-round": server_round,
                "device-id": node.device_id,
                "plan": node.plan.to_json(),
                **config,
            }
        )
        content = RecordDict({"arrays": to_array_record(arrays), "config": cfg})
        msg = Message(content, dst_node_id=node.node_id, message_type=message_type)
        payload, total = record_bytes(content)
        entry = self.current.node(node)
        entry["bytes-down"] += total
        entry["payload-bytes-down"] += payload
        self.totals["bytes-down"] += total
        return msg

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node, with the node's own payload and plan."""
        msgs = []
        self._sent_train = {}
        for node in self.sample(grid, server_round, self.shared.fraction_train, "train"):
            payload, extra = self.train_payload(node, server_round)
            self._sent_train[node.node_id] = payload
            msgs.append(
                self._message(
                    node, payload, {**dict(config), **extra}, server_round, MessageType.TRAIN
                )
            )
            self.current.node(node)["status"] = "sent"
        return msgs

    def _reply_node(self, reply: Message) -> Node | None:
        node_id = self._sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        return self.nodes.get(node_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, drop bad ones with a logged reason, aggregate the rest."""
        valid: list[Reply] = []
        for reply in replies:
            node = self._reply_node(reply)
            if node is None:
                self.current.drop(
                    reply.metadata.src_node_id, None, "train", "reply from unknown node"
                )
                continue
            entry = self.current.node(node)
            if reply.has_error():
                entry["status"] = "error"
                self.current.drop(
                    node.node_id,
                    node.device_id,
                    "train",
                    f"error reply (code {reply.error.code}): {reply.error.reason}",
                )
                continue
            try:
                payload, total = record_bytes(reply.content)
                entry["bytes-up"] += total
                entry["payload-bytes-up"] += payload
                self.totals["bytes-up"] += total
                names = [str(k) for k in reply.content.array_records.get("arrays", {})]
                spec, sizes = self.reply_spec(node, server_round, names)
                checked = read_train_reply(
                    reply.content,
                    spec,
                    sizes=sizes,
                    declared_examples=node.profile.num_train,
                    max_reply_bytes=self.trust.max_reply_bytes,
                    open_length_bytes=self._model_bytes(),
                )
                if checked.infeasible:
                    entry["status"] = "infeasible"
                    log.info(
                        "round %d: node %s could not train (infeasible)", server_round, node.node_id
                    )
                    continue
                arrays, metrics, n = checked.arrays, checked.metrics, checked.num_examples
                self.validate_reply(node, server_round, arrays, metrics)
            except Exception as exc:  # no exception from one reply escapes the round
                entry["status"] = "dropped"
                reason = str(exc) if isinstance(exc, ReplyError) else f"{type(exc).__name__}: {exc}"
                self.current.drop(node.node_id, node.device_id, "train", reason)
                continue
            entry.update(
                status="trained",
                **{k: metrics[k] for k in ("train-seconds", "train-loss") if k in metrics},
            )
            entry["num-examples"] = n
            entry.update(
                {
                    k: v
                    for k, v in metrics.items()
                    if k.startswith("plan-") or k.startswith("measured-")
                }
            )
            valid.append(Reply(node, arrays, metrics, n))
        for entry in self.current.nodes.values():
            if entry["status"] == "sent":
                entry["status"] = "no-reply"
                self.current.drop(
                    entry["node-id"], entry["device-id"], "train", "no reply before timeout"
                )
        valid = self._drop_outliers(server_round, valid)
        if valid:
            self._guarded_aggregate(server_round, valid)
        total_n = sum(r.num_examples for r in valid)
        metrics_out: dict[str, Any] = {"num-replies": len(valid)}
        if total_n > 0:
            metrics_out["train-loss"] = float(
                sum(r.num_examples * float(r.metrics["train-loss"]) for r in valid) / total_n
            )
        return to_array_record(self.global_arrays), MetricRecord(metrics_out)

    def _model_bytes(self) -> int:
        return int(sum(np.asarray(a).nbytes for a in self.global_arrays.values()))

    def _drop_outliers(self, server_round: int, valid: list[Reply]) -> list[Reply]:
        """Drop updates whose norm is far outside the round's others (``outlier-factor``)."""
        sent = {} if self.replies_are_updates else self._sent_train
        norms = update_norms({r.node.node_id: r.arrays for r in valid}, sent)
        bad = norm_outliers(norms, self.trust.outlier_factor)
        for r in valid:
            if r.node.node_id in bad:
                self.current.node(r.node)["status"] = "dropped"
                self.current.drop(r.node.node_id, r.node.device_id, "train", bad[r.node.node_id])
        return [r for r in valid if r.node.node_id not in bad]

    def _guarded_aggregate(self, server_round: int, valid: list[Reply]) -> None:
        """Aggregate; roll back to the previous global model and method state if not finite."""
        previous = {k: np.array(v, copy=True) for k, v in self.global_arrays.items()}
        previous_state = self.state_dict()
        try:
            if self.trust.aggregation == "mean":
                self.aggregate(server_round, valid)
            else:
                self.robust_aggregate(server_round, valid)
            bad = [
                k
                for k, v in self.global_arrays.items()
                if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()
            ]
            bad += _non_finite_state(self.state_dict())
            reason = f"aggregate not finite in {bad[:5]}" if bad else ""
        except (ValueError, FloatingPointError, ArithmeticError) as exc:
            reason = f"aggregation failed: {type(exc).__name__}: {exc}"
        if reason:
            self.global_arrays = previous
            self.load_state_dict(previous_state)
            self.current.extras["rolled-back"] = reason
            log.error("round %d: %s; kept the previous global model", server_round, reason)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        msgs = []
        for node in self.sample(grid, server_round, self.shared.fraction_evaluate, "evaluate"):
            payload, extra = self.eval_payload(node, server_round)
            msgs.append(
                self._message(
                    node, payload, {**dict(config), **extra}, server_round, MessageType.EVALUATE
                )
            )
        return msgs

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Accuracy = Σ correct / Σ samples over the nodes' local test sets (never a mean of means)."""
        correct = total = 0
        loss = 0.0
        for reply in replies:
            node = self._reply_node(reply)
            if node is None or reply.has_error():
                reason = str(reply.error.reason) if reply.has_error() else "unknown node"
                # an error reply's sender is the SuperLink: name the node it was meant for
                node_id = node.node_id if node else reply.metadata.src_node_id
                self.current.drop(node_id, node.device_id if node else None, "evaluate", reason)
                continue
            entry = self.current.node(node)
            try:
                _, size = record_bytes(reply.content)
                entry["bytes-up"] += size
                self.totals["bytes-up"] += size
                c, n, lo, m = read_eval_reply(reply.content, node.profile.num_test)
            except Exception as exc:  # no exception from one reply escapes the round
                reason = str(exc) if isinstance(exc, ReplyError) else f"{type(exc).__name__}: {exc}"
                self.current.drop(node.node_id, node.device_id, "evaluate", f"bad reply: {reason}")
                continue
            correct, total, loss = correct + c, total + n, loss + lo
            entry["eval-accuracy"] = c / n if n else None
            entry.update({k: v for k, v in m.items() if k.startswith("eval-") and k not in entry})
        if total == 0:
            return None
        return MetricRecord(
            {"eval-accuracy": correct / total, "eval-loss": loss / total, "eval-examples": total}
        )

    # ------------------------------------------------------------------------------------------
    # The round loop
    # ------------------------------------------------------------------------------------------
    def _send(self, grid: Grid, msgs: list[Message]) -> list[Message]:
        if not msgs:
            return []
        replies = list(grid.send_and_receive(msgs, timeout=self.shared.round_timeout))
        self._sent = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
        return replies

    def _wait_for_nodes(self, grid: Grid, server_round: int) -> None:
        deadline = time.time() + self.shared.round_timeout
        while True:
            self.register_nodes(grid, server_round)
            live = set(grid.get_node_ids())
            ready = [n for n in self.nodes if n in live]
            if len(ready) >= self.shared.min_nodes:
                return
            if time.time() > deadline:
                raise RuntimeError(
                    f"round {server_round}: only {len(ready)} registered nodes after "
                    f"{self.shared.round_timeout:.0f} s; 'min-nodes' is {self.shared.min_nodes}"
                )
            log.info(
                "waiting for nodes: %d registered and connected, need %d",
                len(ready),
                self.shared.min_nodes,
            )
            time.sleep(1.0)

    def _global_test(self) -> Any:
        if self._server_eval_disabled:
            return None
        if self._server_eval_data is None:
            try:
                from fedhet.data import global_test

                self._server_eval_data = global_test(self.shared.dataset)
            except Exception as exc:  # data may live only on the devices in deployment
                log.warning("server-side evaluation disabled: %s", exc)
                self._server_eval_disabled = True
                return None
        return self._server_eval_data

    def _checkpoint_state(self, server_round: int) -> dict[str, Any]:
        return {
            "round": server_round,
            "method": self.name,
            "global": {k: torch.from_numpy(np.array(v)) for k, v in self.global_arrays.items()},
            "strategy": self.state_dict(),
            "totals": dict(self.totals),
        }

    def resume(self, grid: Grid | None = None) -> int:
        """Restore the last checkpoint of this run, if any; return the last completed round."""
        if self.run_dir is None:
            return 0
        conflicts = self.run_dir.config_conflicts(self.cfg.raw)
        if conflicts and self.run_dir.checkpoint_rounds():
            raise ConfigError(
                f"run folder {self.run_dir.path} was started with a different config ("
                + "; ".join(conflicts[:5])
                + "). Use another 'run-name' to start a new run, or the same config to resume."
            )
        self.run_dir.write_config(self.cfg.raw)
        shapes = {k: tuple(np.shape(v)) for k, v in self.global_arrays.items()}
        latest = self.run_dir.load_latest_checkpoint(self.name, shapes)
        if latest is None:
            # a run that stopped before its first checkpoint starts over: drop its metric lines
            self.run_dir.truncate_metrics(0)
            return 0
        last, state = latest
        self.global_arrays = {k: v.numpy() for k, v in state["global"].items()}
        self.load_state_dict(state.get("strategy", {}))
        self.totals = dict(state.get("totals", self.totals))
        self.run_dir.truncate_metrics(last)
        if grid is not None:
            self._restore_profiles(set(grid.get_node_ids()))
        log.info("resumed run %s from checkpoint of round %d", self.run_dir.path.name, last)
        return last

    def run_round(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """One full round: register, train, aggregate, evaluate, log. Returns the metrics line."""
        self.current = RoundLog(server_round)
        self._wait_for_nodes(grid, server_round)
        base_cfg = ConfigRecord({"server-round": server_round})
        train_msgs = list(self.configure_train(server_round, ArrayRecord(), base_cfg, grid))
        for entry in self.current.nodes.values():
            entry["train-payload-bytes-down"] = entry["payload-bytes-down"]
        _, train_metrics = self.aggregate_train(server_round, self._send(grid, train_msgs))
        nodes = self.current.nodes.values()
        self.current.extras["train-bytes-down"] = sum(e["bytes-down"] for e in nodes)
        self.current.extras["train-bytes-up"] = sum(e["bytes-up"] for e in nodes)
        eval_msgs = list(self.configure_evaluate(server_round, ArrayRecord(), base_cfg, grid))
        eval_metrics = self.aggregate_evaluate(server_round, self._send(grid, eval_msgs))
        server_metrics = self.server_evaluate(server_round)
        return self._round_record(server_round, train_metrics, eval_metrics, server_metrics)

    def _round_record(
        self,
        server_round: int,
        train: MetricRecord | None,
        evaluation: MetricRecord | None,
        server: dict[str, float],
    ) -> dict[str, Any]:
        nodes = sorted(self.current.nodes.values(), key=lambda e: e["node-id"])
        down = sum(e["bytes-down"] for e in nodes)
        up = sum(e["bytes-up"] for e in nodes)
        record: dict[str, Any] = {
            "round": server_round,
            "method": self.name,
            "run-name": self.shared.run_name,
            "wall-seconds": round(time.time() - self.current.started, 3),
            "bytes-down": down,
            "bytes-up": up,
            "payload-bytes-down": sum(e["payload-bytes-down"] for e in nodes),
            "payload-bytes-up": sum(e["payload-bytes-up"] for e in nodes),
            "cum-bytes-down": self.totals["bytes-down"],
            "cum-bytes-up": self.totals["bytes-up"],
            "train-loss": (dict(train) if train else {}).get("train-loss"),
            "eval-accuracy": (dict(evaluation) if evaluation else {}).get("eval-accuracy"),
            "eval-loss": (dict(evaluation) if evaluation else {}).get("eval-loss"),
            "num-trained": sum(1 for e in nodes if e["status"] == "trained"),
            "dropped": self.current.dropped,
            "nodes": nodes,
            **server,
            **self.current.extras,
        }
        return record

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Any:
        """Run (or resume) the whole federation; returns the list of per-round metric lines."""
        num_rounds = num_rounds or self.shared.num_server_rounds
        self.summary()
        if initial_arrays is not None and len(initial_arrays):
            self.global_arrays = to_numpy_dict(initial_arrays)
        if self.run_dir:
            self.run_dir.lock()  # a second server with the same run name fails here
        try:
            return self._start(grid, num_rounds)
        finally:
            if self.run_dir:
                self.run_dir.unlock()

    def _start(self, grid: Grid, num_rounds: int) -> list[dict[str, Any]]:
        last = self.resume(grid)
        history = []
        t0 = time.time()
        for server_round in range(last + 1, num_rounds + 1):
            record = self.run_round(grid, server_round)
            failed = self.idle.observe(server_round, record["num-trained"])
            if failed:
                record["run-failed"] = failed
            history.append(record)
            if self.run_dir:
                self.run_dir.append_metrics(record)
                if failed:
                    log.error("run %s failed: %s", self.shared.run_name, failed)
                    raise RunFailed(failed)
                if server_round % self.shared.checkpoint_every == 0 or server_round == num_rounds:
                    self.run_dir.save_checkpoint(server_round, self._checkpoint_state(server_round))
            elif failed:
                raise RunFailed(failed)
            elapsed = time.time() - t0
            done = server_round - last
            eta = elapsed / done * (num_rounds - server_round)
            acc = record.get("eval-accuracy")
            sacc = record.get("server-accuracy")
            log.info(
                "[round %d/%d] %s trained=%d dropped=%d loss=%s acc(local)=%s acc(global)=%s "
                "up=%.2f MB down=%.2f MB  %.1fs, eta %.0fs",
                server_round,
                num_rounds,
                self.name,
                record["num-trained"],
                len(record["dropped"]),
                _fmt(record["train-loss"]),
                _fmt(acc),
                _fmt(sacc),
                record["bytes-up"] / 1e6,
                record["bytes-down"] / 1e6,
                record["wall-seconds"],
                eta,
            )
        if last >= num_rounds:
            log.info(
                "run %s already completed %d rounds; nothing to do", self.shared.run_name, last
            )
        self._save_profiles()
        return history


def _non_finite_state(state: Any, path: str = "strategy") -> list[str]:
    """Paths of non-finite float tensors/arrays inside a method's :meth:`state_dict`."""
    if isinstance(state, dict):
        return [p for k, v in state.items() for p in _non_finite_state(v, f"{path}/{k}")]
    if isinstance(state, list | tuple):
        return [p for i, v in enumerate(state) for p in _non_finite_state(v, f"{path}/{i}")]
    if isinstance(state, torch.Tensor) and state.is_floating_point():
        return [] if bool(torch.isfinite(state).all()) else [path]
    if isinstance(state, np.ndarray) and np.issubdtype(state.dtype, np.floating):
        return [] if np.isfinite(state).all() else [path]
    return []


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"
