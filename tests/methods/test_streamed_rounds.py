"""Streamed rounds (issue 15 item 4) give the run the list path gives: same model, same lines.

FedAvg, HeteroFL, FedRolex and pFedAFM stream their train replies by default.

FedAvg runs twice on the in-process grid, once with train replies aggregated one by one as they
are pulled (``stream_replies``, the default) and once holding the round's replies; one device
sends a non-finite update in round 1 (refused by the reply checks) and an oversized one in
round 2 (refused by the norm-outlier filter when it is on). Both runs must keep the
same global arrays (bit for bit: the filtered stream adds replies in send order), drop the same
replies with the same reasons, and write the same metrics (timings aside).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from fedhet.server.ledger import to_array_record, to_numpy_dict
from tests.methods.helpers import make

NODES = 4
_TIMING = ("seconds", "t-", "time")


def _run(tmp: Path, stream: bool, method: str = "fedavg", **over: Any) -> Any:
    strategy, grid = make(method, tmp, num_nodes=NODES, min_nodes=NODES, **over)
    strategy.stream_replies = stream
    grid.reply_at_pull = stream  # streamed: devices answer when pulled (the grid holds no reply)
    victim = sorted(grid.contexts)[2]
    seen: list[int] = []

    def corrupt(node_id: int, reply: Message) -> Message:
        if node_id != victim or reply.metadata.message_type != "train" or reply.has_error():
            return reply
        arrays = to_numpy_dict(reply.content.array_records["arrays"])
        name = next(k for k, v in arrays.items() if v.dtype.kind == "f")
        seen.append(node_id)  # round 1: a non-finite update; round 2: an oversized one
        arrays[name] = arrays[name] * (np.nan if len(seen) == 1 else 1e6)
        reply.content.array_records["arrays"] = to_array_record(arrays)
        return reply

    grid.corrupt = corrupt
    strategy.start(grid)
    return strategy


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(t in k for t in _TIMING)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


@pytest.mark.parametrize("outlier_factor", [10.0, 0.0])
def test_streamed_run_equals_list_run(tmp_path: Path, outlier_factor: float) -> None:
    runs = {
        s: _run(tmp_path / str(s), s, outlier_factor=outlier_factor, round_timeout=30.0)
        for s in (True, False)
    }
    assert runs[True].streams_replies() and not runs[False].streams_replies()
    streamed, listed = runs[True], runs[False]
    for name, arr in listed.global_arrays.items():
        assert np.isfinite(arr).all()
        np.testing.assert_array_equal(streamed.global_arrays[name], arr, err_msg=name)
    assert _strip(streamed.history) == _strip(listed.history)
    drops = [
        d["reason"] for row in streamed.history for d in row["dropped"] if d["stage"] == "train"
    ]
    assert not list(tmp_path.glob("**/fedhet-spill-*"))  # the filtered path's spill is gone
    assert "NaN or Inf" in drops[0]
    assert (len(drops) == 2 and "update norm" in drops[1]) == (outlier_factor > 0)


@pytest.mark.parametrize("method", ["heterofl", "fedrolex", "pfedafm"])
def test_streamed_run_equals_list_run_for_other_streamed_rules(tmp_path: Path, method: str) -> None:
    """HeteroFL / FedRolex (masked ``holders`` rule, no norm filter: sizes differ) and pFedAFM's G
    (plain mean, filtered): the streamed run keeps the list run's model and lines."""
    runs = {s: _run(tmp_path / str(s), s, method, round_timeout=30.0) for s in (True, False)}
    assert runs[True].streams_replies() and not runs[False].streams_replies()
    for name, arr in runs[False].global_arrays.items():
        np.testing.assert_array_equal(runs[True].global_arrays[name], arr, err_msg=name)
    assert _strip(runs[True].history) == _strip(runs[False].history)


@pytest.mark.parametrize("method", ["fedavg", "heterofl", "pfedafm"])
def test_a_subclass_with_its_own_aggregate_is_not_streamed(tmp_path: Path, method: str) -> None:
    strategy, _ = make(method, tmp_path, num_nodes=NODES, min_nodes=NODES)
    assert strategy.streams_replies()
    strategy.__class__ = type("Own", (type(strategy),), {"aggregate": lambda s, r, replies: None})
    assert not strategy.streams_replies()
    strategy.__class__ = type("Same", (type(strategy).__mro__[1],), {})  # no override: streamed
    assert strategy.streams_replies()
    if method != "pfedafm":  # whose aggregation admits no robust rule
        robust, _ = make(method, tmp_path / "robust", num_nodes=NODES, aggregation="median")
        assert not robust.streams_replies()  # coordinate-wise order statistics need every reply
