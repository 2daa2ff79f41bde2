"""fedhet.server.messaging: short-poll send/receive, timeout semantics, transient retries."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict

from fedhet.server.messaging import (
    PULL_BYTES,
    PULL_CHUNK_RANGE,
    Exchange,
    is_transient,
    iter_replies,
    pull_chunk_for,
    send_and_receive,
)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # a Message needs a run context
        monkeypatch.setattr(TaskIdentity, attr, 1)


class FakeGrid:
    """Replies after ``delay`` s; the first message to a node in ``flaky`` gets ``error``."""

    def __init__(self, delay: float, flaky: dict[int, Error] | None = None) -> None:
        self.delay, self.flaky = delay, dict(flaky or {})
        self.pushed: list[Message] = []
        self.pulls = 0
        self._due: dict[str, tuple[float, Message]] = {}

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.pushed.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.flaky:
                reply = Message(self.flaky.pop(node), reply_to=msg)
            else:
                reply = Message(RecordDict({"config": ConfigRecord({"ok": 1})}), reply_to=msg)
            self._due[msg.metadata.message_id] = (time.time() + self.delay, reply)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        now, out = time.time(), []
        for mid in list(message_ids):
            if mid in self._due and self._due[mid][0] <= now:
                out.append(self._due.pop(mid)[1])
        return out


def _msgs(nodes: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]


def test_replies_arrive_within_a_short_poll() -> None:
    grid: Any = FakeGrid(delay=0.3)
    start = time.time()
    out = send_and_receive(grid, _msgs([1, 2, 3]), timeout=10.0)
    took = time.time() - start
    assert len(out.replies) == 3 and not any(r.has_error() for r in out.replies)
    assert took < 2.0  # Flower's own loop sleeps 3 s between pulls (margin: loaded CI hosts)
    assert grid.pulls >= 3  # polled several times within the 0.3 s the replies took
    assert set(out.dst.values()) == {1, 2, 3}
    assert all(out.arrived_at[m] >= out.pushed_at for m in out.arrived_at)


def test_timeout_returns_what_arrived() -> None:
    grid: Any = FakeGrid(delay=5.0)
    start = time.time()
    out = send_and_receive(grid, _msgs([1]), timeout=0.4)
    assert out.replies == [] and time.time() - start < 1.0


def test_transient_error_is_retried_not_failed() -> None:
    race = Error(code=2, reason="<class 'RuntimeError'>:<'No messages received from Runtime API'>")
    grid: Any = FakeGrid(delay=0.05, flaky={2: race})
    out = send_and_receive(grid, _msgs([1, 2]), timeout=5.0)
    assert len(grid.pushed) == 3  # node 2's message was pushed again
    assert sorted(out.dst[r.metadata.reply_to_message_id] for r in out.replies) == [1, 2]
    assert not any(r.has_error() for r in out.replies)


def test_handler_errors_are_not_retried() -> None:
    bug = Error(code=2, reason="<class 'KeyError'>:<'train-loss'>")
    grid: Any = FakeGrid(delay=0.05, flaky={1: bug})
    out = send_and_receive(grid, _msgs([1]), timeout=5.0)
    assert len(grid.pushed) == 1 and out.replies[0].has_error()


def test_retries_are_bounded() -> None:
    class AlwaysCrashing(FakeGrid):
        def push_messages(self, messages: Iterable[Message]) -> list[str]:
            for msg in messages:
                self.flaky[msg.metadata.dst_node_id] = Error(code=8, reason="crashed")
            return super().push_messages(messages)

    grid: Any = AlwaysCrashing(delay=0.01)
    out = send_and_receive(grid, _msgs([1]), timeout=5.0, max_retries=2)
    assert len(grid.pushed) == 3 and out.replies[0].has_error()
    assert is_transient(out.replies[0])


def test_replies_come_back_in_the_order_the_messages_were_sent() -> None:
    """Pulled replies follow their random message ids; the exchange must not (K-means and
    aggregation inputs would change order from run to run: found as FL-TAC clusters differing
    between two identical runs)."""
    nodes = list(range(20, 0, -1))
    exchange = send_and_receive(FakeGrid(delay=0.0), _msgs(nodes), timeout=5.0)
    by_mid = exchange.dst
    assert [by_mid[r.metadata.reply_to_message_id] for r in exchange.replies] == nodes


def test_a_resent_message_keeps_its_place() -> None:
    flaky = {3: Error(code=3, reason="transient")}
    nodes = [5, 3, 1]
    exchange = send_and_receive(FakeGrid(delay=0.0, flaky=flaky), _msgs(nodes), timeout=5.0)
    assert [exchange.dst[r.metadata.reply_to_message_id] for r in exchange.replies] == nodes
    assert not any(r.has_error() for r in exchange.replies)


def test_streamed_replies_are_pulled_in_small_batches_and_handed_on_one_by_one() -> None:
    """Issue 15 item 4: a streamed exchange pulls at most ``pull_chunk`` message ids per call
    (so a pull brings back few replies at once), in send order, and keeps no reply itself."""

    class Recording(FakeGrid):
        def __init__(self) -> None:
            super().__init__(delay=0.0, flaky={7: Error(code=3, reason="transient")})
            self.sizes: list[int] = []

        def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
            ids = list(message_ids)
            self.sizes.append(len(ids))
            return super().pull_messages(ids)

    grid: Any = Recording()
    nodes = list(range(40, 0, -1))
    out = Exchange()
    stream = iter_replies(grid, _msgs(nodes), 5.0, out, pull_chunk=6)
    assert not grid.pushed  # nothing happens before the first reply is asked for
    got = [out.dst[r.metadata.reply_to_message_id] for r in stream]
    assert sorted(got) == sorted(nodes) and len(got) == len(set(got))
    assert got[:6] == nodes[:6]  # each pull asks for the earliest-sent pending ids
    assert max(grid.sizes) <= 6 and out.replies == []
    assert len(grid.pushed) == 41  # node 7's message was pushed again


def test_pull_chunk_follows_the_reply_size() -> None:
    low, high = PULL_CHUNK_RANGE
    assert pull_chunk_for(1) == high and pull_chunk_for(10**12) == low
    assert pull_chunk_for(PULL_BYTES // 5) == max(low, min(high, 5))


def test_fast_object_pulls_shortens_only_the_pinned_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from flwr.supercore.inflatable import inflatable_utils

    from fedhet.server import messaging

    pull = inflatable_utils.pull_objects
    monkeypatch.setattr(pull, "__kwdefaults__", dict(pull.__kwdefaults__ or {}))
    flower_default = pull.__kwdefaults__["initial_backoff"]
    monkeypatch.setattr(importlib.metadata, "version", lambda _name: "1.99.0")
    assert "left as Flower 1.99.0" in messaging.fast_object_pulls()
    assert pull.__kwdefaults__["initial_backoff"] == flower_default == 1
    monkeypatch.setattr(importlib.metadata, "version", lambda _name: messaging.OBJECT_PULL_FLOWER)
    assert messaging.fast_object_pulls() == "object pull backoff 0.05-0.5 s"
    assert pull.__kwdefaults__["initial_backoff"] == 0.05
    assert pull.__kwdefaults__["backoff_cap"] == 0.5
    assert pull.__kwdefaults__["max_tries_per_object"] is None
    # the Grid of a deployment calls this very function object
    from flwr.superlink.grid import http_grid

    assert http_grid.pull_objects is pull
