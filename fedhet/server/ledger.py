"""Round ledger: bytes per node and round, the ``metrics.jsonl`` line, Flower's ``Result``.

Bytes are counted from what is serialised (METHODS.md B1): array records are the payload, config
and metric records are counted on top of it. One :class:`RoundLog` collects a round's per-node
entries and drops; :func:`round_record` turns it into the ``metrics.jsonl`` line and
:func:`result_of` turns those lines into Flower's :class:`~flwr.serverapp.strategy.Result`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.serverapp.strategy import Result

from fedhet.core.codec import as_contiguous
from fedhet.server.registration import Node

log = logging.getLogger("fedhet")

#: A ``metrics.jsonl`` line (JSON values; ``nodes`` and ``dropped`` are lists of dicts).
RoundRecord = dict[str, Any]


def to_numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Convert an ArrayRecord to ``{name: ndarray}``.

    Parameters
    ----------
    record : ArrayRecord
        Arrays as received in a message.

    Returns
    -------
    dict[str, np.ndarray]
        The same arrays, in record order.
    """
    return {k: v.numpy() for k, v in record.items()}


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Convert ``{name: ndarray}`` to an ArrayRecord (order kept, arrays made contiguous).

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        Named arrays.

    Returns
    -------
    ArrayRecord
        The record to put in a message.
    """
    return ArrayRecord(array_dict={k: Array(as_contiguous(v)) for k, v in arrays.items()})


def record_bytes(content: RecordDict) -> tuple[int, int]:
    """Bytes of a message's content (METHODS.md B1).

    Parameters
    ----------
    content : RecordDict
        The content of a sent or received message.

    Returns
    -------
    tuple[int, int]
        ``(payload_bytes, message_bytes)``: the array records alone, and all records.
    """
    payload = sum(r.count_bytes() for r in content.array_records.values())
    other = sum(r.count_bytes() for r in content.config_records.values())
    other += sum(r.count_bytes() for r in content.metric_records.values())
    return int(payload), int(payload + other)


@dataclass
class RoundLog:
    """What one round records for ``metrics.jsonl``: one entry per node, drops, method extras."""

    server_round: int
    started: float = field(default_factory=time.time)
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def node(self, node: Node) -> dict[str, Any]:
        """The (created on first use) entry of ``node``; it logs the node's plan knobs."""
        return self.nodes.setdefault(
            node.node_id,
            {
                "node-id": node.node_id,
                "device-id": node.device_id,
                "device-class": node.profile.device_class,
                "plan": dict(node.plan.knobs),
                "bytes-down": 0,
                "bytes-up": 0,
                "payload-bytes-down": 0,
                "payload-bytes-up": 0,
                "train-seconds": 0.0,
                "num-examples": 0,
                "status": "sampled",
            },
        )

    def count(self, node: Node, content: RecordDict, direction: str, payload: bool = True) -> int:
        """Add the bytes of a message to ``node``'s entry; ``direction`` is ``down`` or ``up``.

        ``payload=False`` counts the message in ``bytes-<direction>`` only (evaluate replies).

        Returns
        -------
        int
            The message's total bytes (to add to the run totals).
        """
        arrays, total = record_bytes(content)
        entry = self.node(node)
        entry[f"bytes-{direction}"] += total
        if payload:
            entry[f"payload-bytes-{direction}"] += arrays
        return total

    def drop(self, node_id: int, device_id: str | None, stage: str, reason: str) -> None:
        """Record (and log) a reply that was not used, with the reason."""
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


def round_record(
    current: RoundLog,
    *,
    method: str,
    run_name: str,
    totals: Mapping[str, int],
    train: Mapping[str, MetricRecordValues],
    evaluation: Mapping[str, MetricRecordValues],
    server: Mapping[str, float],
) -> RoundRecord:
    """The ``metrics.jsonl`` line of a finished round.

    Parameters
    ----------
    current : RoundLog
        The round's node entries, drops and method extras.
    method, run_name : str
        Registry name of the method and the run's name.
    totals : Mapping[str, int]
        Cumulative ``bytes-down`` / ``bytes-up`` of the run so far.
    train, evaluation : Mapping[str, MetricRecordValues]
        Aggregated train metrics (``train-loss``) and federated evaluation metrics
        (``eval-accuracy``, ``eval-loss``); empty when there were none.
    server : Mapping[str, float]
        Server-side metrics on the global test set.
    """
    nodes = sorted(current.nodes.values(), key=lambda e: e["node-id"])
    return {
        "round": current.server_round,
        "method": method,
        "run-name": run_name,
        "wall-seconds": round(time.time() - current.started, 3),
        "bytes-down": sum(e["bytes-down"] for e in nodes),
        "bytes-up": sum(e["bytes-up"] for e in nodes),
        "payload-bytes-down": sum(e["payload-bytes-down"] for e in nodes),
        "payload-bytes-up": sum(e["payload-bytes-up"] for e in nodes),
        "cum-bytes-down": totals["bytes-down"],
        "cum-bytes-up": totals["bytes-up"],
        "train-loss": train.get("train-loss"),
        "eval-accuracy": evaluation.get("eval-accuracy"),
        "eval-loss": evaluation.get("eval-loss"),
        "num-trained": sum(1 for e in nodes if e["status"] == "trained"),
        "dropped": current.dropped,
        "nodes": nodes,
        **server,
        **current.extras,
    }


def log_round(record: RoundRecord, num_rounds: int, eta_s: float) -> None:
    """One INFO line per finished round (loss, accuracies, bytes, time)."""
    log.info(
        "[round %d/%d] %s trained=%d dropped=%d loss=%s acc(local)=%s acc(global)=%s "
        "up=%.2f MB down=%.2f MB  %.1fs, eta %.0fs",
        record["round"],
        num_rounds,
        record["method"],
        record["num-trained"],
        len(record["dropped"]),
        _fmt(record.get("train-loss")),
        _fmt(record.get("eval-accuracy")),
        _fmt(record.get("server-accuracy")),
        record["bytes-up"] / 1e6,
        record["bytes-down"] / 1e6,
        record["wall-seconds"],
        eta_s,
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _metric_value(v: object) -> TypeGuard[MetricRecordValues]:
    """True for the values a MetricRecord holds: int, float, or a list of one of them."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float):
        return True
    if isinstance(v, list) and v:
        return all(isinstance(x, int) and not isinstance(x, bool) for x in v) or all(
            isinstance(x, float) for x in v
        )
    return False


def _is_client_eval(key: str) -> bool:
    return (
        key.startswith("eval-")
        or key in ("local-accuracy",)
        or key.startswith(("model-accuracy", "model-majority-share"))
    )


def result_of(records: Sequence[RoundRecord], arrays: Mapping[str, np.ndarray]) -> Result:
    """Flower's :class:`Result` from ``metrics.jsonl`` lines and the final global arrays.

    Every numeric round-level value goes to one of the three histories: ``server-*`` keys to
    ``evaluate_metrics_serverapp``, federated evaluation keys (``eval-*``, ``local-accuracy``,
    ``model-accuracy-*``, ``model-majority-share-*``) to ``evaluate_metrics_clientapp``, the rest (``train-loss``, bytes,
    ``num-trained``, method extras) to ``train_metrics_clientapp``. Missing values (``None``),
    strings and the nested ``nodes``/``dropped`` lists stay in ``metrics.jsonl`` only.

    Parameters
    ----------
    records : Sequence[RoundRecord]
        One line per round, as :func:`round_record` builds them.
    arrays : Mapping[str, np.ndarray]
        The final global arrays.

    Returns
    -------
    Result
        Indexed by round number.
    """
    result = Result(arrays=to_array_record(arrays))
    for rec in records:
        rnd = int(rec["round"])
        train: dict[str, MetricRecordValues] = {}
        client_eval: dict[str, MetricRecordValues] = {}
        server_eval: dict[str, MetricRecordValues] = {}
        for key, value in rec.items():
            if key == "round" or not _metric_value(value):
                continue
            if key.startswith("server-"):
                server_eval[key] = value
            elif _is_client_eval(key):
                client_eval[key] = value
            else:
                train[key] = value
        if train:
            result.train_metrics_clientapp[rnd] = MetricRecord(train)
        if client_eval:
            result.evaluate_metrics_clientapp[rnd] = MetricRecord(client_eval)
        if server_eval:
            result.evaluate_metrics_serverapp[rnd] = MetricRecord(server_eval)
    return result
