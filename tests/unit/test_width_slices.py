"""``benchmarks.width_slices``: the slice diagnosis on hand-made models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import width_slices
from fedhet.models import build_model
from fedhet.server.checkpoint import checkpoint_state


def _state(bias_class: int | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build_model("cnn_s", num_classes=10).state_dict().items()}
    if bias_class is not None:  # a classifier that ignores its input: only the bias speaks
        state["fc2.weight"].zero_()
        state["fc2.bias"].zero_()
        state["fc2.bias"][bias_class] = 2.5
    return state


def test_a_bias_only_classifier_predicts_one_class() -> None:
    x = torch.randn(64, 1, 28, 28)
    y = torch.arange(64) % 10  # class 3 is 7 of the 64 items
    stats = width_slices.slice_stats(_state(bias_class=3), "cnn_s", 0.125, x, y)
    assert stats["majority-share"] == 1.0
    assert stats["accuracy"] == pytest.approx(7 / 64)
    assert stats["wh-spread"] == 0.0
    assert stats["bias-range"] == pytest.approx(2.5)
    # a trained-looking classifier spreads its logits through W·h
    spread = width_slices.slice_stats(_state(), "cnn_s", 0.125, x, y)["wh-spread"]
    assert spread > 0


def test_run_stats_scores_every_rolling_window_and_renders(tmp_path: Path) -> None:
    run = tmp_path / "ref-fedrolex-s0"
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"method": "fedrolex", "model": "cnn_s", "seed": 0, "num-server-rounds": 3}
    (run / "config.json").write_text(json.dumps(cfg))
    arrays = {k: v.numpy() for k, v in _state().items()}
    state = checkpoint_state(3, "fedrolex", arrays, {}, {})
    torch.save(state, run / "checkpoints" / "round-3.pt")
    assert width_slices._finished(run)
    x, y = torch.randn(20, 1, 28, 28), torch.arange(20) % 10
    out = width_slices.run_stats(run, x, y)
    assert set(out["static"]) == {"0.015625", "0.0625", "0.25", "1"}
    roll = out["rolling"]
    # rounds 1..3 trained windows 0, 1, 2; fc1 (128 units) is the widest hidden layer
    assert len(roll["trained-windows"]) == 3 and len(roll["never-trained-windows"]) == 125
    assert roll["last-window"] == roll["trained-windows"][-1]
    # window 0 (rolling) is the static slice
    assert roll["trained-windows"][0] == out["static"]["0.015625"]["accuracy"]
    text = width_slices.render_json({"source": "x", "runs": [out]})
    assert "| fedrolex | 0 | 0.015625 |" in text and "| 0 | 3 |" in text
    # a stopped run is not read
    cfg["num-server-rounds"] = 60
    (run / "config.json").write_text(json.dumps(cfg))
    assert not width_slices._finished(run)
