"""Every registered method runs two rounds in-process with the shared checks (DESIGN.md "Testing")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message

from fedhet.methods import METHODS
from tests.methods.helpers import make

REQUIRED_ROUND_KEYS = {
    "round",
    "method",
    "bytes-down",
    "bytes-up",
    "train-loss",
    "eval-accuracy",
    "nodes",
}
REQUIRED_NODE_KEYS = {
    "node-id",
    "device-class",
    "bytes-down",
    "bytes-up",
    "train-seconds",
    "num-examples",
}


@pytest.mark.parametrize("method", list(METHODS))
def test_two_rounds(method, tmp_path):
    strategy, grid = make(method, tmp_path)
    before = {k: np.array(v, copy=True) for k, v in strategy.global_arrays.items()}
    strategy.start(grid)
    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        assert set(h) >= REQUIRED_ROUND_KEYS
        assert h["bytes-down"] > 0 and h["bytes-up"] > 0
        assert h["num-trained"] >= 1
        assert np.isfinite(h["train-loss"])
        # pooled over the evaluated devices' local tests: Σ correct / Σ samples (not a mean of
        # per-device accuracies)
        evaluated = [n for n in h["nodes"] if n.get("eval-examples")]
        assert evaluated, "no device was evaluated"
        pooled = sum(n["eval-correct"] for n in evaluated) / sum(
            n["eval-examples"] for n in evaluated
        )
        assert h["eval-accuracy"] == pytest.approx(pooled)
        for node in h["nodes"]:
            assert set(node) >= REQUIRED_NODE_KEYS
        trained = [n for n in h["nodes"] if n["status"] == "trained"]
        assert all(n["bytes-up"] > 0 and n["num-examples"] > 0 for n in trained)
        assert sum(n["bytes-down"] for n in h["nodes"]) == h["bytes-down"]
    if getattr(strategy, "communicates", True):
        changed = [
            k
            for k, v in strategy.global_arrays.items()
            if v.dtype.kind == "f" and not np.allclose(v, before[k])
        ]
        assert changed, "global state did not change in two rounds"
    else:  # a no-communication baseline (standalone): no global state, no parameter traffic
        assert not strategy.global_arrays
        assert all(h["payload-bytes-up"] == 0 == h["payload-bytes-down"] for h in history)
    lines = (tmp_path / f"t-{method}" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]
    assert (tmp_path / f"t-{method}" / "checkpoints" / "round-2.pt").exists()


def _corrupt(kind: str, victims: set[int]):
    def corrupt(node_id: int, reply: Message) -> Message:
        if node_id not in victims or reply.metadata.message_type != "train" or reply.has_error():
            return reply
        rec = reply.content.array_records.get("arrays")
        if rec is None or not len(rec):
            return reply
        name = next(k for k, v in rec.items() if v.numpy().dtype.kind == "f")
        arr = rec[name].numpy()
        bad = np.full_like(arr, np.nan) if kind == "nan" else np.zeros(arr.size + 3, arr.dtype)
        rec[name] = Array(bad)
        reply.content.array_records["arrays"] = ArrayRecord(array_dict=dict(rec.items()))
        return reply

    return corrupt


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", ["nan", "shape"])
def test_bad_reply_is_dropped_and_round_goes_on(method, kind, tmp_path):
    strategy, grid = make(method, tmp_path, num_server_rounds=1)
    if not getattr(strategy, "communicates", True):
        pytest.skip(f"{method} uploads no arrays, so there is nothing to corrupt")
    victim = sorted(grid.contexts)[0]
    grid.corrupt = _corrupt(kind, {victim})
    strategy.start(grid)
    history = strategy.history
    dropped = [d for d in history[0]["dropped"] if d["node-id"] == victim and d["stage"] == "train"]
    assert dropped, f"corrupted reply of node {victim} was not dropped: {history[0]['dropped']}"
    assert (
        ("NaN" in dropped[0]["reason"])
        if kind == "nan"
        else ("shape" in dropped[0]["reason"] or "values" in dropped[0]["reason"])
    )
    assert history[0]["num-trained"] >= 1
    assert all(np.isfinite(v).all() for v in strategy.global_arrays.values() if v.dtype.kind == "f")
