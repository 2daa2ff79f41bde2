"""Train replies: the gate between what devices send and what a method aggregates.

Every train reply is checked before a method sees it: an error reply, a reply from an unknown
node, arrays that do not match the node's plan (checked *before* decoding, with a byte cap:
:func:`~fedhet.server.trust.read_train_reply`), malformed or unbounded metrics, or arrays the
method rejects (its ``validate_reply`` hook) are dropped with a logged reason, never averaged in
(METHODS.md B1, DESIGN.md "Trust"). No exception from one reply escapes the round. ``num-examples``
is capped at the training-set size the node declared. A device that could not train replies ``infeasible``; a sampled node that did not
reply before the timeout is logged as ``no-reply``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from fedhet.server.ledger import RoundLog
from fedhet.server.registration import Node
from fedhet.server.trust import TrainReply
from fedhet.server.validate import ReplyError

log = logging.getLogger("fedhet")

#: A method's reply check: ``(node, arrays, metrics)``; raises ReplyError (or ValueError).
ReplyCheck = Callable[[Node, dict[str, np.ndarray], dict[str, Any]], None]
#: Reads a reply's content for a node (checks before decoding): ``(node, content) → TrainReply``.
ReplyReader = Callable[[Node, RecordDict], TrainReply]


@dataclass
class Reply:
    """A validated train reply."""

    node: Node
    arrays: dict[str, np.ndarray]
    metrics: dict[str, Any]
    num_examples: int


def collect_train_replies(
    replies: Iterable[Message],
    node_of: Callable[[Message], Node | None],
    current: RoundLog,
    totals: dict[str, int],
    check: ReplyCheck,
    read: ReplyReader,
) -> list[Reply]:
    """The usable train replies of a round, as a list (see :func:`iter_train_replies`)."""
    return list(iter_train_replies(replies, node_of, current, totals, check, read))


def iter_train_replies(
    replies: Iterable[Message],
    node_of: Callable[[Message], Node | None],
    current: RoundLog,
    totals: dict[str, int],
    check: ReplyCheck,
    read: ReplyReader,
) -> Iterator[Reply]:
    """The usable train replies of a round, one at a time; every other one is dropped with its
    reason. Each reply is checked completely before it is yielded; once the iterator is
    exhausted, the sampled nodes that did not reply are logged as ``no-reply``.

    Parameters
    ----------
    replies : Iterable[Message]
        The round's train replies.
    node_of : Callable[[Message], Node | None]
        The registered node a reply answers for (``None``: unknown).
    current : RoundLog
        The round's ledger: bytes, status, train metrics and ``measured-*`` values per node.
    totals : dict[str, int]
        Run byte totals, updated in place.
    check : ReplyCheck
        The method's reply validation.
    read : ReplyReader
        Checks records, arrays (before decoding) and metrics against the node's plan.

    Yields
    ------
    Reply
        Validated replies, in the order of ``replies``.
    """
    for reply in replies:
        node = node_of(reply)
        if node is None:
            current.drop(reply.metadata.src_node_id, None, "train", "reply from unknown node")
            continue
        entry = current.node(node)
        if reply.has_error():
            entry["status"] = "error"
            current.drop(
                node.node_id,
                node.device_id,
                "train",
                f"error reply (code {reply.error.code}): {reply.error.reason}",
            )
            continue
        try:
            totals["bytes-up"] += current.count(node, reply.content, "up")
            checked = read(node, reply.content)
            if checked.infeasible:
                entry["status"] = "infeasible"
                log.info(
                    "round %d: node %s could not train (infeasible)",
                    current.server_round,
                    node.node_id,
                )
                continue
            arrays, metrics, n = checked.arrays, checked.metrics, checked.num_examples
            check(node, arrays, metrics)
        except Exception as exc:  # no exception from one reply escapes the round
            entry["status"] = "dropped"
            reason = str(exc) if isinstance(exc, ReplyError) else f"{type(exc).__name__}: {exc}"
            current.drop(node.node_id, node.device_id, "train", reason)
            continue
        entry.update(
            status="trained",
            **{k: metrics[k] for k in ("train-seconds", "train-loss") if k in metrics},
        )
        entry["num-examples"] = n
        entry.update({k: v for k, v in metrics.items() if k.startswith("measured-")})
        del reply, checked
        yield Reply(node, arrays, metrics, n)
        del arrays
    for entry in current.nodes.values():
        if entry["status"] == "sent":
            entry["status"] = "no-reply"
            current.drop(entry["node-id"], entry["device-id"], "train", "no reply before timeout")
