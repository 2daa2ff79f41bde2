"""One ClientApp call per round and device: train messages that also evaluate (issue 13, item 1).

In a deployment every message costs a fresh ``flwr-clientapp`` process, so a round of *train then
evaluate* pays two process starts per device. For a method whose train message carries the
global model as it is after the previous round's aggregation (``fused_evaluation`` on the
strategy: FedAvg, FedAvg-drop, FIARSE's own-size submodel, HeteroFL's static slice, CoCoFL's full
fp32 model), the device can score that model on its local test set *before* it trains, in the
same call. That is exactly the federated evaluation of round t−1's model, so:

* round t's train message to a node that was in round t−1's evaluate sample carries
  ``evaluate-received = true``; its reply holds the evaluation as an extra metric record
  :data:`EVAL_RECORD` next to the train metrics;
* a node in round t−1's evaluate sample that is not sampled for training in round t gets an
  ordinary evaluate message for round t−1's model, in the same batch as the train messages;
* the metrics line of round t−1 is completed with these evaluations (same nodes, same model,
  same pooling as an evaluate phase) and only then written; the last round runs an ordinary
  evaluate phase for the final model.

``metrics.jsonl`` therefore has the same per-round meaning with and without fusion; what changes
is when a line is written (one round later) and that the evaluation's download is the train
message itself. A run that stops between round t and t+1 keeps round t's line unfinished in
its checkpoint (:meth:`PendingEval.to_state`) and completes it after a resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, MessageType, MetricRecord, RecordDict

from fedhet.server.ledger import RoundLog, RoundRecord
from fedhet.wire import EVAL_FLAG, EVAL_RECORD


@dataclass
class PendingEval:
    """A finished round whose federated evaluation arrives with the next round's train replies.

    Attributes
    ----------
    record : RoundRecord
        The round's ``metrics.jsonl`` line, ``eval-*`` not filled yet.
    due : list[int]
        Node ids of the round's evaluate sample.
    """

    record: RoundRecord
    due: list[int] = field(default_factory=list)
    _ledger: RoundLog | None = field(default=None, repr=False)

    def ledger(self) -> RoundLog:
        """The round's ledger over the line's own node entries (created once)."""
        if self._ledger is None:
            self._ledger = RoundLog(self.server_round)
            self._ledger.nodes = {int(e["node-id"]): e for e in self.record["nodes"]}
        return self._ledger

    @property
    def server_round(self) -> int:
        """The round whose model is evaluated."""
        return int(self.record["round"])

    def to_state(self) -> dict[str, Any]:
        """What a checkpoint stores (JSON values only)."""
        return {"record": self.record, "due": list(self.due)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> PendingEval | None:
        """The pending evaluation of a checkpoint (``None`` if it had none)."""
        if not state:
            return None
        return cls(dict(state["record"]), [int(n) for n in state["due"]])


def split_replies(replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
    """Separate a fused batch's replies into train replies and evaluation replies.

    A train reply carrying :data:`EVAL_RECORD` loses that record (so the train ledger counts
    the train part only) and yields an evaluation view with the same metadata; evaluate replies
    (and error replies to evaluate messages) go to the evaluation side as they are.

    Returns
    -------
    tuple[list[Message], list[Message]]
        ``(train_replies, eval_replies)``.
    """
    evals: list[Message] = []
    train = list(split_stream(replies, evals))
    return train, evals


def split_stream(replies: Iterable[Message], evals: list[Message]) -> Iterator[Message]:
    """:func:`split_replies` one reply at a time: yields the train replies, appends the evaluation
    replies (metrics only) to ``evals``; a streamed round aggregates its train replies as they
    arrive (:mod:`fedhet.server.streaming`)."""
    for reply in replies:
        if reply.metadata.message_type != "train":
            evals.append(reply)
            continue
        if not reply.has_error() and EVAL_RECORD in reply.content.metric_records:
            record = reply.content.metric_records[EVAL_RECORD]
            del reply.content[EVAL_RECORD]
            # Message(metadata=…) is how Flower's own make_message copies a message's metadata
            view = Message(  # type: ignore[call-overload]
                metadata=reply.metadata,
                content=RecordDict({"metrics": MetricRecord(dict(record))}),
            )
            evals.append(view)
        yield reply


def pool_pending(strategy: Any, evals: list[Message]) -> None:
    """Pool the pending round's evaluation replies into its line and queue the line for writing.

    ``strategy`` is the running :class:`~fedhet.server.strategy.FedhetStrategy`; its own
    ``aggregate_evaluate`` runs on the pending round's ledger (see :func:`complete`).
    """
    pending = strategy._pending
    if pending is None:
        return
    current, strategy.current = strategy.current, pending.ledger()
    try:
        evaluation = strategy.aggregate_evaluate(pending.server_round, evals)
    finally:
        strategy.current = current
    strategy._finished.append(complete(pending, evaluation))
    strategy._pending = None


def complete(pending: PendingEval, evaluation: MetricRecord | None) -> RoundRecord:
    """Fill the pending round's line with its pooled evaluation (as an evaluate phase would).

    The strategy pools the replies with its own ``aggregate_evaluate`` on :meth:`PendingEval.ledger`
    (so per-size extras of size methods land in that ledger); this copies the result, the
    ledger's extras and drops, and the evaluation's bytes into the line.

    Parameters
    ----------
    pending : PendingEval
        The round waiting for its evaluation.
    evaluation : MetricRecord | None
        What ``aggregate_evaluate`` returned (``None``: no usable evaluation reply).

    Returns
    -------
    RoundRecord
        ``pending.record``, completed in place.
    """
    record = pending.record
    ledger = pending.ledger()
    metrics = dict(evaluation) if evaluation else {}
    nodes = sorted(ledger.nodes.values(), key=lambda e: e["node-id"])
    down = sum(e["bytes-down"] for e in nodes)
    up = sum(e["bytes-up"] for e in nodes)
    record.update(
        {
            "eval-accuracy": metrics.get("eval-accuracy"),
            "eval-loss": metrics.get("eval-loss"),
            "cum-bytes-down": record["cum-bytes-down"] + down - record["bytes-down"],
            "cum-bytes-up": record["cum-bytes-up"] + up - record["bytes-up"],
            "bytes-down": down,
            "bytes-up": up,
            "dropped": list(record["dropped"]) + ledger.dropped,
            "nodes": nodes,
            "eval-fused": True,
            **ledger.extras,
        }
    )
    return record


__all__ = [
    "EVAL_FLAG",
    "EVAL_RECORD",
    "PendingEval",
    "complete",
    "split_replies",
]


def due_evaluations(strategy: Any, trained: set[int]) -> list[Message]:
    """Evaluate messages for the pending round's evaluate sample minus the trained nodes.

    ``strategy`` is the running :class:`~fedhet.server.strategy.FedhetStrategy`. The messages are
    built while its ``global_arrays`` is still the pending round's model; their bytes go to the
    pending round's ledger.
    """
    pending = strategy._pending
    if pending is None:
        return []
    current, strategy.current = strategy.current, pending.ledger()
    try:
        msgs = []
        for node_id in pending.due:
            node = strategy.nodes.get(node_id)
            if node is None or node_id in trained:
                continue
            payload, extra = strategy.eval_payload(node, pending.server_round)
            msgs.append(
                strategy._message(node, payload, extra, pending.server_round, MessageType.EVALUATE)
            )
        return msgs
    finally:
        strategy.current = current
