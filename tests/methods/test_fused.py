"""One ClientApp call per round and device (fedhet.server.fused): the train message also
evaluates the received model; metrics equal those of separate evaluate phases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import MessageType

from fedhet.methods import METHODS
from tests.methods.helpers import make

FUSED = {"fedavg", "fedavg-drop", "fiarse", "heterofl", "cocofl"}
COMPARED = ("eval-accuracy", "eval-loss", "train-loss", "server-accuracy", "num-trained")


def test_capability_flags() -> None:
    """Fused evaluation only where the train message carries the model evaluate would carry."""
    flagged = {name for name, e in METHODS.items() if e.strategy_cls.fused_evaluation}
    assert flagged == FUSED


def _run(method: str, tmp: Path, fused: bool, rounds: int = 3, **kw: Any) -> tuple[Any, Any]:
    strategy, grid = make(method, tmp, num_nodes=4, num_server_rounds=rounds, **kw)
    strategy.fused_evaluation = fused
    strategy.start(grid)
    return strategy, grid


def _counts(grid: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in grid.sent_log:
        out[m.metadata.message_type] = out.get(m.metadata.message_type, 0) + 1
    return out


@pytest.mark.parametrize("method", ["fedavg", "heterofl"])
def test_fused_equals_separate_evaluation(method: str, tmp_path: Path) -> None:
    fused, grid_f = _run(method, tmp_path / "fused", True)
    plain, grid_p = _run(method, tmp_path / "plain", False)
    # one call per device and round; the evaluate phase only for the final model
    assert _counts(grid_f)[MessageType.TRAIN] == _counts(grid_p)[MessageType.TRAIN] == 12
    assert _counts(grid_p)[MessageType.EVALUATE] == 12
    assert _counts(grid_f)[MessageType.EVALUATE] == 4
    assert [r["round"] for r in fused.history] == [1, 2, 3]
    for a, b in zip(fused.history, plain.history, strict=True):
        for key in COMPARED:
            assert a.get(key) == pytest.approx(b.get(key)), (a["round"], key)
        if method == "heterofl":  # per-size extras of the size methods survive the fusion
            keys = [k for k in b if k.startswith("model-accuracy-") or k == "local-accuracy"]
            assert keys and all(a[k] == pytest.approx(b[k]) for k in keys)
        per_node_a = {e["node-id"]: e.get("eval-accuracy") for e in a["nodes"]}
        per_node_b = {e["node-id"]: e.get("eval-accuracy") for e in b["nodes"]}
        assert per_node_a == per_node_b
    lines = fused.run_dir.read_metrics()
    assert [r["round"] for r in lines] == [1, 2, 3]
    assert all(r["eval-accuracy"] is not None for r in lines)
    assert lines[0].get("eval-fused") and not lines[-1].get("eval-fused")
    # the evaluation's download is the train message itself
    assert lines[-1]["cum-bytes-down"] < plain.run_dir.read_metrics()[-1]["cum-bytes-down"]


def test_resume_completes_the_pending_round(tmp_path: Path, monkeypatch: Any) -> None:
    """A run stopped after round 2 (its evaluation pending) resumes and fills round 2 in."""
    reference, _ = _run("fedavg", tmp_path / "ref", True)
    strategy, grid = make("fedavg", tmp_path / "cut", num_nodes=4, num_server_rounds=3)
    original = type(strategy).run_round

    def stop_at_3(self: Any, g: Any, server_round: int) -> Any:
        if server_round == 3:
            raise RuntimeError("stopped")
        return original(self, g, server_round)

    monkeypatch.setattr(type(strategy), "run_round", stop_at_3)
    with pytest.raises(RuntimeError, match="stopped"):
        strategy.start(grid)
    assert [r["round"] for r in strategy.run_dir.read_metrics()] == [1]
    monkeypatch.setattr(type(strategy), "run_round", original)
    resumed, grid2 = make("fedavg", tmp_path / "cut", num_nodes=4, num_server_rounds=3)
    resumed.start(grid2)
    lines = resumed.run_dir.read_metrics()
    assert [r["round"] for r in lines] == [1, 2, 3]
    for a, b in zip(lines, reference.history, strict=True):
        assert a["eval-accuracy"] == pytest.approx(b["eval-accuracy"]), a["round"]
