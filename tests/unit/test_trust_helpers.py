"""Server trust helpers (issue 10): reply reading, update norms, idle rounds, device identity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedhet.server.trust import (
    IdleWatch,
    device_in_use,
    read_eval_reply,
    read_train_reply,
    update_norms,
)
from fedhet.server.validate import ReplyError, spec_of

W = {"w": np.zeros((2, 2), np.float32), "n": np.array(3, np.int64)}


def _content(arrays: dict[str, np.ndarray] | None, metrics: dict, **extra: object) -> RecordDict:
    rec: dict[str, object] = {"metrics": MetricRecord(metrics), **extra}
    if arrays is not None:
        rec["arrays"] = ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()})
    return RecordDict(rec)  # type: ignore[arg-type]


GOOD = {"num-examples": 10**15, "train-loss": 0.1, "train-seconds": 1.0}


def test_read_train_reply_caps_examples_and_checks_records() -> None:
    r = read_train_reply(_content(W, GOOD), spec_of(W), declared_examples=120)
    assert r.num_examples == 120 and not r.infeasible
    np.testing.assert_array_equal(r.arrays["w"], W["w"])
    with pytest.raises(ReplyError, match="unexpected records"):
        read_train_reply(_content(W, GOOD, junk=ConfigRecord({"a": 1})), spec_of(W))
    inf = read_train_reply(_content(None, {**GOOD, "infeasible": 1}), spec_of(W))
    assert inf.infeasible and inf.num_examples == 0


def test_read_eval_reply_bounds() -> None:
    ok = {"num-examples": 40, "eval-correct": 30, "eval-loss": 12.0}
    assert read_eval_reply(_content(None, ok), 40)[:3] == (30, 40, 12.0)
    for bad in (
        {**ok, "eval-correct": math.inf},
        {**ok, "eval-correct": 10**12, "num-examples": 10**12},
    ):
        with pytest.raises(ReplyError):
            read_eval_reply(_content(None, bad), 40)
    with pytest.raises(ReplyError, match="no arrays"):
        read_eval_reply(_content(W, ok), 40)


def test_update_norms_relative_to_what_was_sent() -> None:
    sent = {"a": {"w": np.ones((2, 2), np.float32)}}
    replies = {
        "a": {"w": np.full((2, 2), 2.0, np.float32), "n": np.array(9)},  # diff 1 each -> rms 1
        "b": {"w.values": np.array([3.0, 4.0], np.float32)},  # not sent: an update -> 5/sqrt(2)
        "c": {"w": np.array([[np.inf, 0], [0, 0]], np.float32)},
    }
    norms = update_norms(replies, sent)
    assert norms["a"] == pytest.approx(1.0) and norms["b"] == pytest.approx(5.0 / math.sqrt(2))
    assert norms["c"] == math.inf


def test_idle_watch() -> None:
    w = IdleWatch(2)
    assert w.observe(1, 0) is None
    assert w.observe(2, 3) is None
    assert w.observe(3, 0) is None
    reason = w.observe(4, 0)
    assert reason is not None and "2 consecutive rounds (rounds 3-4" in reason
    assert IdleWatch(0).observe(1, 0) is None


def test_device_in_use() -> None:
    holders = [(1, "press-1"), (2, "press-2")]
    assert device_in_use(holders, 3, "press-1", live={1, 2, 3}) == 1
    assert device_in_use(holders, 3, "press-1", live={2, 3}) is None  # old node gone: re-register
    assert device_in_use(holders, 1, "press-1", live={1, 2}) is None
