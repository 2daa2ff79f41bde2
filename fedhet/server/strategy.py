"""The base strategy every fedhet method extends (DESIGN.md "One round, as messages").

:class:`FedhetStrategy` implements Flower's abstract ``flwr.serverapp.strategy.Strategy``
(``configure_train``, ``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``,
``summary``) and runs the rounds itself in :meth:`FedhetStrategy.start`, which returns Flower's
:class:`~flwr.serverapp.strategy.Result`. What a fleet of unequal devices needs lives in one module
per concern, all under :mod:`fedhet.server`:

* :mod:`~fedhet.server.registration`: the profile query, the node table, ``profiles.json``;
* :mod:`~fedhet.server.ledger`: bytes per node and round, ``metrics.jsonl`` lines, the ``Result``;
* :mod:`~fedhet.server.evaluation`: pooled federated evaluation, the global test set;
* :mod:`~fedhet.server.checkpoint`: checkpoints and resume;
* :mod:`~fedhet.server.validate`: reply checks (a bad reply is dropped with a logged reason);
* :mod:`~fedhet.server.trust`: checks before decoding, example caps, the norm-outlier filter,
  rollback of a non-finite aggregate, the idle-round limit (DESIGN.md "Trust").

Each node gets one typed plan (:class:`~fedhet.plan.NodePlan`, the method's
:attr:`~FedhetStrategy.knobs_model` as knobs), sent in every message's config. A method overrides
the small hooks below (``plan_knobs``, ``train_payload``, ``expected_reply``, ``aggregate`` …)
rather than the Flower hooks; the base class stays the only place that talks to the Grid.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedhet.config import ConfigError, RunConfig
from fedhet.data.base import TensorData
from fedhet.plan import NodePlan, budget_for, plan_knobs_of
from fedhet.profile import DeviceProfile
from fedhet.server.checkpoint import PENDING_KEY, checkpoint_state, restore_strategy
from fedhet.server.evaluation import GlobalTest, pool_eval_replies
from fedhet.server.fused import PendingEval, due_evaluations, pool_pending, split_stream
from fedhet.server.hooks import Arrays, ConfigValues, MethodHooks
from fedhet.server.ledger import (
    RoundLog,
    RoundRecord,
    log_round,
    record_bytes,
    result_of,
    round_record,
    to_array_record,
    to_numpy_dict,
)
from fedhet.server.messaging import (
    Exchange,
    iter_replies,
    pull_chunk_for,
    send_and_receive,
    stamp_replies,
    stamp_stream,
)
from fedhet.server.registration import (
    QUERY_PROFILE,
    REGISTRATION_TIMEOUT_S,
    Node,
    NodeTable,
    log_registration,
    query_profiles,
    sample_nodes,
    wait_for_nodes,
)
from fedhet.server.replies import Reply, collect_train_replies, iter_train_replies
from fedhet.server.run_dir import RunDir, RunDirLocked
from fedhet.server.streaming import stream_mean
from fedhet.server.trust import (
    IdleWatch,
    RunFailed,
    TrainReply,
    drop_outliers,
    guarded_aggregate,
    read_train_reply,
)
from fedhet.wire import EVAL_FLAG

__all__ = [
    "QUERY_PROFILE",
    "REGISTRATION_TIMEOUT_S",
    "FedhetStrategy",
    "Node",
    "Reply",
    "RoundLog",
    "record_bytes",
    "to_array_record",
    "to_numpy_dict",
]

log = logging.getLogger("fedhet")

#: Key of the pending evaluation in a checkpoint's strategy state (:mod:`fedhet.server.fused`).


class FedhetStrategy(MethodHooks, Strategy):
    """Base class of fedhet methods. Subclasses set :attr:`name` and override the hooks.

    Parameters
    ----------
    cfg : RunConfig
        The parsed run config.
    run_dir : RunDir, optional
        Output folder; ``None`` keeps everything in memory (tests).
    """

    #: The global model is personalised per device (evaluation uses per-device state).
    personalised: ClassVar[bool] = False
    #: Training sample size m from every available device, not only the participating ones
    #: (FedAvg-drop draws min(m, |eligible|), METHODS.md §6.2).
    sample_size_of_all: ClassVar[bool] = False
    #: The train message carries the model the evaluate message would carry (the global model
    #: after the previous round, or the device's own-size part of it), so a device evaluates it
    #: in the same call before training and the evaluate phase runs for the final model only
    #: (:mod:`fedhet.server.fused`). Capability flag of the method, FL-bench style.
    fused_evaluation: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        self.cfg = cfg
        self.shared = cfg.shared
        self.mcfg = cfg.method
        self.run_dir = run_dir
        self.registry = NodeTable()
        self.global_arrays: Arrays = self.initial_arrays()
        self.totals = {"bytes-down": 0, "bytes-up": 0}
        self.current: RoundLog = RoundLog(0)
        #: ``metrics.jsonl`` lines of the rounds the last :meth:`start` ran.
        self.history: list[RoundRecord] = []
        self._sent: dict[str, int] = {}
        #: (arrays, their ArrayRecord) of the message being built; reset before each batch.
        self._shared_payload: tuple[Arrays, ArrayRecord] | None = None
        self._test = GlobalTest(self.shared.dataset, self.shared.server_eval)
        #: What each node was sent for training this round (for the update-size filter).
        self._sent_train: dict[int, Arrays] = {}
        self.idle = IdleWatch(self.shared.max_idle_rounds)
        if self.shared.aggregation != "mean" and not self.supports_robust_rules():
            raise ConfigError(
                f"invalid run config: 'aggregation' = {self.shared.aggregation!r} is not available "
                f"for method {self.name!r} (its aggregation is method-specific); use 'mean'"
            )
        #: Last round of the running :meth:`start` (``None``: rounds run one by one, unfused).
        self._last_round: int | None = None
        self._pending: PendingEval | None = None
        self._finished: list[RoundRecord] = []

    @property
    def nodes(self) -> dict[int, Node]:
        """Registered nodes by node id."""
        return self.registry.nodes

    @property
    def bench_reference(self) -> float | None:
        """The run's fixed time reference (see :func:`fedhet.plan.reference_bench_ms`)."""
        return self.registry.reference_bench_ms

    @property
    def rejected(self) -> dict[int, str]:
        """Node ids whose profile was rejected, with the reason."""
        return self.registry.rejected

    # ------------------------------------------------------------------------------------------
    # Registration and plans
    # ------------------------------------------------------------------------------------------
    def register_nodes(self, grid: Grid, server_round: int) -> list[Node]:
        """Ask every node not seen before for its profile; plan the valid ones.

        Returns
        -------
        list[Node]
            The nodes registered now (``profiles.json`` is rewritten when anything changed).
        """
        query = ConfigRecord({"run-name": self.shared.run_name, "fleet": self.shared.fleet})
        timeout = min(self.shared.round_timeout, REGISTRATION_TIMEOUT_S)
        new = query_profiles(
            grid,
            self.registry,
            query,
            self._planner(server_round),
            timeout,
            server_round=server_round,
            ref_bench_ms=self.shared.ref_bench_ms,
        )
        if new or self.rejected:
            self.registry.save(self.run_dir)
        return new

    def _planner(self, server_round: int) -> Callable[[int, DeviceProfile], NodePlan]:
        def plan(node_id: int, profile: DeviceProfile) -> NodePlan:
            return self.plan_node(node_id, profile, server_round)

        return plan

    def plan_node(self, node_id: int, profile: DeviceProfile, server_round: int) -> NodePlan:
        """The validated plan of a device: its budget plus the method's typed knobs.

        Raises
        ------
        TypeError
            If :meth:`plan_knobs` returned knobs that are not a :attr:`knobs_model`.
        """
        budget = budget_for(profile, self.shared, self.fleet_reference())
        participate, knobs, reason = self.plan_knobs(profile, budget)
        if not isinstance(knobs, self.knobs_model):
            raise TypeError(
                f"{type(self).__name__}.plan_knobs returned {type(knobs).__name__}, "
                f"expected {self.knobs_model.__name__}"
            )
        plan = NodePlan(
            node_id=node_id,
            device_id=profile.device_id,
            device_class=profile.device_class,
            budget=budget,
            participate=participate,
            reason=reason,
            knobs=plan_knobs_of(knobs),
        )
        log_registration(Node(node_id, profile, plan))
        if self.run_dir:
            self.run_dir.append_plan({"round": server_round, **json.loads(plan.to_json())})
        return plan

    # ------------------------------------------------------------------------------------------
    # Sampling and messages
    # ------------------------------------------------------------------------------------------
    def sample(self, grid: Grid, server_round: int, fraction: float, purpose: str) -> list[Node]:
        """Seeded sample of live, available nodes (see :func:`sample_nodes`): training draws from
        the participating ones; evaluation from all (every device can run the shared global
        model, so every method is evaluated on the same devices), except for personalised methods,
        where a device that does not participate has no model of its own to evaluate."""
        live = set(grid.get_node_ids())
        return sample_nodes(
            self.nodes,
            live,
            self.shared.seed,
            server_round,
            fraction,
            purpose,
            eligible_only=purpose == "train" or self.personalised,
            size_of_all=self.sample_size_of_all,
        )

    def _message(
        self,
        node: Node,
        arrays: Arrays,
        config: ConfigValues,
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
        if arrays is not self.global_arrays:
            record = to_array_record(arrays)
        else:
            # nodes sent the global model itself (FedAvg) share one record per batch of messages:
            # 100 sampled devices no longer hold 100 serialised copies of the model on the server
            if self._shared_payload is None or self._shared_payload[0] is not arrays:
                self._shared_payload = (arrays, to_array_record(arrays))
            record = self._shared_payload[1]
        content = RecordDict({"arrays": record, "config": cfg})
        msg = Message(content, dst_node_id=node.node_id, message_type=message_type)
        self.totals["bytes-down"] += self.current.count(node, content, "down")
        return msg

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per sampled node, with the node's own payload and plan.

        ``arrays`` is not used: each node's payload comes from :meth:`train_payload`.
        """
        msgs = []
        self._sent_train = {}
        self._shared_payload = None
        for node in self.sample(grid, server_round, self.shared.fraction_train, "train"):
            payload, extra = self.train_payload(node, server_round)
            self._sent_train[node.node_id] = payload
            if self._pending is not None and node.node_id in self._pending.due:
                extra = {**extra, EVAL_FLAG: True}
            msgs.append(
                self._message(
                    node, payload, {**dict(config), **extra}, server_round, MessageType.TRAIN
                )
            )
            self.current.node(node)["status"] = "sent"
        return msgs

    def _checker(self, server_round: int) -> Callable[[Node, Arrays, dict[str, Any]], None]:
        def check(node: Node, arrays: Arrays, metrics: dict[str, Any]) -> None:
            self.validate_reply(node, server_round, arrays, metrics)

        return check

    def _reader(self, server_round: int) -> Callable[[Node, RecordDict], TrainReply]:
        model_bytes = int(sum(np.asarray(a).nbytes for a in self.global_arrays.values()))

        def read(node: Node, content: RecordDict) -> TrainReply:
            names = [str(k) for k in content.array_records.get("arrays", {})]
            spec, sizes = self.reply_spec(node, server_round, names)
            return read_train_reply(
                content,
                spec,
                sizes=sizes,
                declared_examples=node.profile.num_train,
                max_reply_bytes=self.shared.max_reply_bytes,
                open_length_bytes=model_bytes,
            )

        return read

    def _reply_node(self, reply: Message) -> Node | None:
        node_id = self._sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        return self.nodes.get(node_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, drop bad ones with a logged reason, aggregate the rest.

        Replies are checked before decoding, updates far larger than the round's others are
        dropped (``outlier-factor``), and an aggregate that is not finite is rolled back.

        Returns
        -------
        tuple[ArrayRecord | None, MetricRecord | None]
            The global arrays after :meth:`aggregate`, and ``num-replies`` plus the
            sample-weighted ``train-loss``.
        """
        reading = (self._reply_node, self.current, self.totals)
        checks = (self._checker(server_round), self._reader(server_round))
        sent = {} if self.replies_are_updates else self._sent_train
        factor = self.shared.outlier_factor if self.comparable_updates else 0.0
        if self.streams_replies():  # one reply in memory at a time (fedhet.server.streaming)
            order = {nid: i for i, nid in enumerate(self._sent_train)}
            stream = iter_train_replies(replies, *reading, *checks)
            valid = stream_mean(self, server_round, stream, sent, factor, order)
        else:
            valid = collect_train_replies(replies, *reading, *checks)
            valid = drop_outliers(valid, sent, factor, self.current)
            rule = self.robust_aggregate if self.shared.aggregation != "mean" else self.aggregate
            if valid:
                guarded_aggregate(
                    self, server_round, lambda: rule(server_round, valid), self.current
                )
        total_n = sum(r.num_examples for r in valid)
        metrics_out: dict[str, int | float | list[int] | list[float]] = {"num-replies": len(valid)}
        if total_n > 0:
            metrics_out["train-loss"] = float(
                sum(r.num_examples * float(r.metrics["train-loss"]) for r in valid) / total_n
            )
        return to_array_record(self.global_arrays), MetricRecord(metrics_out)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One evaluate message per sampled node, with :meth:`eval_payload` and the plan."""
        msgs = []
        self._shared_payload = None
        for node in self.sample(grid, server_round, self.shared.fraction_evaluate, "evaluate"):
            payload, extra = self.eval_payload(node, server_round)
            msgs.append(
                self._message(
                    node, payload, {**dict(config), **extra}, server_round, MessageType.EVALUATE
                )
            )
        self._shared_payload = None
        return msgs

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Accuracy = Σ correct / Σ samples over the nodes' local test sets (never a mean of means).

        See :func:`fedhet.server.evaluation.pool_eval_replies`.
        """
        return pool_eval_replies(replies, self._reply_node, self.current, self.totals)

    # ------------------------------------------------------------------------------------------
    # The round loop
    # ------------------------------------------------------------------------------------------
    def _send(self, grid: Grid, msgs: list[Message], stream: bool = False) -> Iterable[Message]:
        """The replies: a list, or with ``stream`` an iterator handing each on as it is pulled."""
        if not msgs:
            return []
        timeout = self.shared.round_timeout
        if stream:
            out = Exchange()
            self._sent = out.dst
            chunk = pull_chunk_for(sum(a.nbytes for a in self.global_arrays.values()))
            pulled = iter_replies(grid, msgs, timeout, out, pull_chunk=chunk)
            return stamp_stream(pulled, out, self.current.nodes)
        exchange = send_and_receive(grid, msgs, timeout)
        self._sent = exchange.dst
        stamp_replies(exchange, self.current.nodes)  # for the deployment benchmark's breakdown
        return exchange.replies

    def evaluates(self, server_round: int) -> bool:
        """Whether round ``server_round`` has a federated evaluation (default: every round)."""
        return True

    def _fused_round(self, server_round: int) -> bool:
        """Whether round ``server_round`` leaves its evaluation to the next round's train calls."""
        last = self._last_round
        return self.fused_evaluation and last is not None and server_round < last

    def _wait_for_nodes(self, grid: Grid, server_round: int) -> None:
        wait_for_nodes(
            grid,
            lambda: self.register_nodes(grid, server_round),
            self.registry,
            self.shared.min_nodes,
            self.shared.round_timeout,
            server_round,
        )

    def _global_test(self) -> TensorData | None:
        return self._test.get()

    def resume(self, grid: Grid | None = None) -> int:
        """Restore the last checkpoint of this run, if any (:func:`restore_strategy`).

        Returns
        -------
        int
            The last completed round (0 for a fresh start).
        """
        return restore_strategy(self, grid)

    def run_round(self, grid: Grid, server_round: int) -> RoundRecord:
        """One full round: register, train, aggregate, evaluate, log.

        Returns
        -------
        RoundRecord
            The round's ``metrics.jsonl`` line.
        """
        self.current = RoundLog(server_round)
        self._wait_for_nodes(grid, server_round)
        base_cfg = ConfigRecord({"server-round": server_round})
        train_msgs = list(self.configure_train(server_round, ArrayRecord(), base_cfg, grid))
        for entry in self.current.nodes.values():
            entry["train-payload-bytes-down"] = entry["payload-bytes-down"]
        trained = {m.metadata.dst_node_id for m in train_msgs}
        stream = self.streams_replies()
        replies = self._send(grid, train_msgs + due_evaluations(self, trained), stream)
        evals: list[Message] = []
        if self._pending is not None:
            replies = split_stream(replies, evals)
            if not stream:
                replies = list(replies)
                pool_pending(self, evals)
        _, train_metrics = self.aggregate_train(server_round, replies)
        pool_pending(self, evals)  # streamed: its evaluation replies came with the train replies
        nodes = self.current.nodes.values()
        self.current.extras["train-bytes-down"] = sum(e["bytes-down"] for e in nodes)
        self.current.extras["train-bytes-up"] = sum(e["bytes-up"] for e in nodes)
        due: list[int] = []
        eval_metrics = None
        if self._fused_round(server_round):
            fraction = self.shared.fraction_evaluate
            if self.evaluates(server_round):
                due = [n.node_id for n in self.sample(grid, server_round, fraction, "evaluate")]
        else:
            eval_msgs = list(self.configure_evaluate(server_round, ArrayRecord(), base_cfg, grid))
            eval_metrics = self.aggregate_evaluate(server_round, self._send(grid, eval_msgs))
        server_metrics = self.server_evaluate(server_round)
        record = round_record(
            self.current,
            method=self.name,
            run_name=self.shared.run_name,
            totals=self.totals,
            train=dict(train_metrics) if train_metrics else {},
            evaluation=dict(eval_metrics) if eval_metrics else {},
            server=server_metrics,
        )
        if self._fused_round(server_round):
            self._pending = PendingEval(record, due)
        return record

    def _write(self, record: RoundRecord) -> None:
        if self.run_dir:
            self.run_dir.append_metrics(record)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run (or resume) the whole federation.

        Parameters
        ----------
        grid : Grid
            Where the nodes are.
        initial_arrays : ArrayRecord, optional
            Replaces :meth:`initial_arrays` (a resumed run's checkpoint still wins).
        num_rounds : int, optional
            Last round to run (default: ``num-server-rounds``).
        timeout : float, optional
            Not used: replies are awaited for ``round-timeout`` seconds (run config).
        train_config, evaluate_config : ConfigRecord, optional
            Not used: every message's config comes from the method's hooks and the node's plan.
        evaluate_fn : callable, optional
            Not supported: server-side evaluation is the method's :meth:`server_evaluate`.

        Returns
        -------
        Result
            Final global arrays and, per round run by this call, the train metrics (loss, bytes,
            method extras), the pooled device evaluation and the server-side evaluation. The
            full per-node lines are in :attr:`history` and ``metrics.jsonl``.

        Raises
        ------
        ValueError
            If ``train_config``, ``evaluate_config`` or ``evaluate_fn`` is given.
        RunDirLocked
            If another server holds the run folder (same ``run-name``).
        RunFailed
            If no node trained for ``max-idle-rounds`` consecutive rounds (the reason is also in
            the last ``metrics.jsonl`` line, ``run-failed``).
        """
        if train_config or evaluate_config or evaluate_fn is not None:
            raise ValueError(
                "FedhetStrategy.start takes no train_config, evaluate_config or evaluate_fn: "
                "messages are built by the method's hooks, server evaluation by server_evaluate"
            )
        num_rounds = num_rounds or self.shared.num_server_rounds
        self.summary()
        if initial_arrays is not None and len(initial_arrays):
            self.global_arrays = to_numpy_dict(initial_arrays)
        if self.run_dir:
            try:
                self.run_dir.lock()  # a second server with the same run name fails here
            except RunDirLocked as exc:
                log.error("%s", exc)
                raise
        try:
            return self._run_rounds(grid, num_rounds)
        finally:
            if self.run_dir:
                self.run_dir.unlock()

    def _run_rounds(self, grid: Grid, num_rounds: int) -> Result:
        """Resume, then run rounds up to ``num_rounds``; see :meth:`start`."""
        last = self.resume(grid)
        self.history = []
        self._last_round = num_rounds
        t0 = time.time()
        for server_round in range(last + 1, num_rounds + 1):
            record = self.run_round(grid, server_round)
            failed = self.idle.observe(server_round, int(record["num-trained"]))
            if failed:
                record["run-failed"] = failed
            for finished in self._finished:  # the previous round, evaluated in this one
                self._write(finished)
                if not any(finished is seen for seen in self.history):  # resumed: not seen yet
                    self.history.append(finished)
            self._finished = []
            self.history.append(record)
            if self._pending is None or failed:
                self._write(record)
            if failed:
                log.error("run %s failed: %s", self.shared.run_name, failed)
                raise RunFailed(failed)
            if self.run_dir and (
                server_round % self.shared.checkpoint_every == 0 or server_round == num_rounds
            ):
                strategy_state = self.state_dict()
                if self._pending is not None:
                    strategy_state = {**strategy_state, PENDING_KEY: self._pending.to_state()}
                state = checkpoint_state(
                    server_round, self.name, self.global_arrays, strategy_state, self.totals
                )
                self.run_dir.save_checkpoint(server_round, state)
            done = server_round - last
            log_round(record, num_rounds, (time.time() - t0) / done * (num_rounds - server_round))
        if last >= num_rounds:
            log.info(
                "run %s already completed %d rounds; nothing to do", self.shared.run_name, last
            )
        self.registry.save(self.run_dir)
        return result_of(self.history, self.global_arrays)
