"""Sending messages and awaiting replies with a short poll (issue 13, "Polls").

Flower 1.41's ``Grid.send_and_receive`` pushes the messages and then pulls the replies every 3 s
(``flwr/superlink/grid/http_grid.py``): on a deployment every phase of a round waits 1.5 s on
average for nothing. :func:`send_and_receive` does the same with the Grid's public
``push_messages`` / ``pull_messages``, but polls every ``interval`` seconds (0.05 s at first,
growing to at most 0.2 s), with the same timeout semantics: replies that arrive within
``timeout`` seconds are returned, the missing ones are simply absent.

It also retries a message whose reply is a *transient* Flower error instead of failing the node
for the round: a ``flwr-clientapp`` process started before the SuperNode had the message ready
exits with "No messages received from Runtime API" (``flwr/supernode/runtime/run_clientapp.py``,
``pull_task_input``), which reaches the ServerApp as an error reply; such a message is pushed
again (a fresh copy: a new message id), at most :data:`MAX_RETRIES` times, while the timeout
allows. Errors raised by fedhet's own handlers (``CLIENT_APP_RAISED_EXCEPTION``) are never
retried: they are deterministic and are dropped with their reason by the reply checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger("fedhet")

#: First and largest pause between two pulls (seconds).
FIRST_INTERVAL_S = 0.05
MAX_INTERVAL_S = 0.2
#: How often one message is pushed again after a transient error reply.
MAX_RETRIES = 2
#: Message ids per pull when replies are streamed (at most this many replies held at once);
#: :func:`pull_chunk_for` sizes it from the reply size.
PULL_CHUNK = 16
#: Bytes of replies one streamed pull may bring back, and the bounds of its message count.
PULL_BYTES = 8 * 1024 * 1024
PULL_CHUNK_RANGE = (2, 64)

# flwr.common.constant.ErrorCode values (stable across 1.x): the message or its reply was not
# available, or the ClientApp process died before it ran fedhet's code.
_TRANSIENT_CODES = frozenset({3, 4, 8})
_TRANSIENT_REASONS = ("No messages received", "unavailable")


#: Backoff of the ServerApp's object pulls (Flower 1.41's: 1 s doubling to 10 s), in seconds.
OBJECT_PULL_BACKOFF_S = (0.05, 0.5)
#: The Flower release whose object-pull defaults :func:`fast_object_pulls` knows.
OBJECT_PULL_FLOWER = "1.41.0"


def fast_object_pulls() -> str:
    """Shorten the ServerApp's wait for a reply's objects (Flower 1.41; this process only).

    A SuperNode pushes a reply's metadata before its objects, so the Grid's ``pull_messages``
    (``flwr/superlink/grid/http_grid.py``) often sees a reply whose arrays are not stored yet and
    backs off 1 s, 2 s, … before asking again: on a deployment that is most of the "reply back"
    time of a round (``python -m benchmarks.deployment``). Here the first pause is 0.05 s, growing
    to at most 0.5 s; the overall limit (Flower's 7,200 s) stays, the per-object try count is
    lifted so that limit governs. Called once by the ServerApp; another Flower release is left
    as it is. (The same change as the warm start's ``fedhet.deploy.forkserver.fast_backoff``,
    written again here on purpose: that file must stay standard-library only and runs outside
    the package, and importing ``fedhet.deploy`` would load the PKI and fleet modules into every
    ServerApp.)

    Returns
    -------
    str
        What was done, for the log.
    """
    from importlib.metadata import version

    found = version("flwr")
    if found != OBJECT_PULL_FLOWER:
        return f"object pulls left as Flower {found} has them (tuned for {OBJECT_PULL_FLOWER})"
    from flwr.supercore.inflatable import inflatable_utils

    pull = inflatable_utils.pull_objects
    defaults = dict(pull.__kwdefaults__ or {})
    if not {"initial_backoff", "backoff_cap", "max_tries_per_object"} <= set(defaults):
        return "object pulls left as they are (unknown signature)"
    first, cap = OBJECT_PULL_BACKOFF_S
    pull.__kwdefaults__ = {
        **defaults,
        "initial_backoff": first,
        "backoff_cap": cap,
        "max_tries_per_object": None,
    }
    return f"object pull backoff {first}-{cap} s"


@dataclass
class Exchange:
    """What one :func:`send_and_receive` brought back.

    Attributes
    ----------
    replies : list[Message]
        One reply per message at most (a retried message's last reply).
    dst : dict[str, int]
        Destination node of every message id pushed (retries included).
    pushed_at : float
        Epoch seconds when the batch was pushed.
    arrived_at : dict[str, float]
        Epoch seconds when each reply was pulled, by the id of the message it answers.
    position : dict[str, int]
        Send position of each message id (a re-sent message keeps its original's).
    """

    replies: list[Message] = field(default_factory=list)
    dst: dict[str, int] = field(default_factory=dict)
    pushed_at: float = 0.0
    arrived_at: dict[str, float] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)


def is_transient(reply: Message) -> bool:
    """True for an error reply worth one more try (the message never reached fedhet's code)."""
    if not reply.has_error():
        return False
    error = reply.error
    reason = str(error.reason or "")
    return int(error.code) in _TRANSIENT_CODES or any(r in reason for r in _TRANSIENT_REASONS)


def _copy(msg: Message) -> Message:
    """A fresh message with the same content and destination (a new message id once pushed)."""
    return Message(
        msg.content,
        dst_node_id=msg.metadata.dst_node_id,
        message_type=msg.metadata.message_type,
        group_id=msg.metadata.group_id,
    )


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    *,
    max_interval: float = MAX_INTERVAL_S,
    max_retries: int = MAX_RETRIES,
) -> Exchange:
    """Push ``messages``, then pull their replies every ≤ ``max_interval`` s for ``timeout`` s.

    Parameters
    ----------
    grid : Grid
        Where the nodes are (any Flower Grid, or :class:`fedhet.sim.LocalGrid`).
    messages : Iterable[Message]
        The messages to send.
    timeout : float
        Seconds to wait for replies, counted from the push (as in Flower's ``send_and_receive``).
    max_interval : float
        Longest pause between two pulls.
    max_retries : int
        How often a message whose reply is :func:`transient <is_transient>` is pushed again.

    Returns
    -------
    Exchange
        The replies, the destination of every message id (to map replies back) and when each
        reply arrived.
    """
    out = Exchange()
    out.replies.extend(
        iter_replies(
            grid, messages, timeout, out, max_interval=max_interval, max_retries=max_retries
        )
    )
    # Replies in the order their messages were sent, not the order the message ids sort or the
    # replies arrive in: aggregation and K-means inputs stay bit-reproducible (METHODS §0).
    out.replies.sort(key=lambda r: out.position[r.metadata.reply_to_message_id])
    return out


def pull_chunk_for(reply_bytes: int) -> int:
    """Message ids per streamed pull: about :data:`PULL_BYTES` of replies of ``reply_bytes``
    each, within :data:`PULL_CHUNK_RANGE` (few round trips for small models, few replies held
    at once for large ones)."""
    low, high = PULL_CHUNK_RANGE
    return max(low, min(high, PULL_BYTES // max(int(reply_bytes), 1)))


def iter_replies(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    out: Exchange,
    *,
    max_interval: float = MAX_INTERVAL_S,
    max_retries: int = MAX_RETRIES,
    pull_chunk: int = PULL_CHUNK,
) -> Iterator[Message]:
    """The replies of :func:`send_and_receive`, one by one as they are pulled (issue 15, item 4).

    Nothing here keeps a reply once it is yielded, so a consumer that aggregates each reply and
    lets it go holds one reply at a time instead of the round's. ``out`` receives the message
    destinations (filled at the push, before the first reply is yielded), push and arrival
    times and each message id's send position; ``out.replies`` is left alone. Replies come in
    arrival order; with ``pull_chunk`` > 0 (default :data:`PULL_CHUNK`) at most that many
    message ids are pulled per call, in send order, so a pull never brings back more than
    ``pull_chunk`` replies at once (0: all pending ids in one pull).
    """
    msgs = list(messages)
    out.pushed_at = time.time()
    if not msgs:
        return
    end = out.pushed_at + timeout
    by_id: dict[str, Message] = {}
    dst = out.dst
    tries: dict[int, int] = {}
    #: Position of each message id's original message in ``msgs`` (a re-send inherits it).
    position = out.position

    def push(batch: list[Message], positions: list[int]) -> None:
        for msg, pos, mid in zip(batch, positions, grid.push_messages(batch), strict=False):
            if not mid:  # Flower returns None for a message it could not push
                log.warning("message to node %s could not be pushed", msg.metadata.dst_node_id)
                continue
            by_id[mid] = msg
            dst[mid] = msg.metadata.dst_node_id
            position[mid] = pos

    push(msgs, list(range(len(msgs))))
    del msgs
    pending = set(by_id)
    interval = FIRST_INTERVAL_S
    while pending:
        retry: list[Message] = []
        retry_at: list[int] = []
        ids = sorted(pending, key=position.__getitem__)
        step = pull_chunk if pull_chunk > 0 else len(ids)
        for first in range(0, len(ids), step):
            batch = list(grid.pull_messages(ids[first : first + step]))
            batch.reverse()
            while batch:
                reply = batch.pop()  # the batch lets go of each reply as it is handed on
                mid = reply.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                out.arrived_at[mid] = time.time()
                node = dst[mid]
                if is_transient(reply) and tries.get(node, 0) < max_retries and time.time() < end:
                    tries[node] = tries.get(node, 0) + 1
                    log.info(
                        "node %s: transient error (%s), sending the message again (try %d)",
                        node,
                        reply.error.reason,
                        tries[node] + 1,
                    )
                    retry.append(_copy(by_id[mid]))
                    retry_at.append(position[mid])
                    continue
                by_id.pop(mid, None)
                yield reply
                del reply
        if retry:
            before = set(by_id)
            push(retry, retry_at)
            pending |= set(by_id) - before
        if not pending or time.time() >= end:
            break
        time.sleep(min(interval, max(0.0, end - time.time())))
        interval = min(interval * 2, max_interval)


def stamp_replies(exchange: Exchange, entries: dict[int, dict[str, Any]]) -> None:
    """Write push and reply times into each answering node's ledger entry (``t-<type>-pushed``,
    ``t-<type>-replied``), for the deployment benchmark's per-phase breakdown."""
    for reply in exchange.replies:
        _stamp(reply, exchange, entries)


def stamp_stream(
    replies: Iterable[Message], exchange: Exchange, entries: dict[int, dict[str, Any]]
) -> Iterator[Message]:
    """:func:`stamp_replies` for replies handed on one by one (:func:`iter_replies`)."""
    for reply in replies:
        _stamp(reply, exchange, entries)
        yield reply


def _stamp(reply: Message, exchange: Exchange, entries: dict[int, dict[str, Any]]) -> None:
    entry = entries.get(exchange.dst.get(reply.metadata.reply_to_message_id, -1))
    if entry is not None:
        kind = reply.metadata.message_type
        entry[f"t-{kind}-pushed"] = exchange.pushed_at
        entry[f"t-{kind}-replied"] = exchange.arrived_at[reply.metadata.reply_to_message_id]
