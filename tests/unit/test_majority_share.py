"""Majority-class share: hand-computed values, reply checks, and the FIARSE table's ⚠ flag."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from benchmarks import fiarse
from fedhet.core.predictions import PREDICTED_KEY, majority_share, pool_counts
from fedhet.core.training import evaluate_model, evaluate_predictions
from fedhet.data.base import TensorData
from fedhet.server.validate import ReplyError, validate_eval_metrics

C = 10


def balanced_data(per_class: int = 3) -> TensorData:
    """``C * per_class`` one-hot samples, labels 0..C-1 cycling (a balanced test set)."""
    y = torch.arange(C * per_class) % C
    x = nn.functional.one_hot(y, C).float()
    return TensorData(x, y, C, "balanced-one-hot")


class Constant(nn.Module):
    """Predicts class 3 for everything."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], C)
        out[:, 3] = 1.0
        return out


def test_constant_model_has_share_one_and_is_flagged() -> None:
    data = balanced_data()
    correct, total, _, counts = evaluate_predictions(Constant(), data, batch_size=7)
    assert counts == [0, 0, 0, 30, 0, 0, 0, 0, 0, 0]  # batches of 7 are summed
    assert (correct, total) == (3, 30)  # the 3 samples of class 3
    share = majority_share(counts)
    assert share == 1.0
    assert fiarse.flagged(correct / total, share)
    assert fiarse.flagged(None, share)  # the share alone flags it


def test_balanced_spread_has_share_one_tenth_and_is_not_flagged() -> None:
    data = balanced_data()
    model = nn.Linear(C, C, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(C))  # predicts the one-hot's class: one per class
    correct, total, loss, counts = evaluate_predictions(model, data)
    assert counts == [3] * C
    assert majority_share(counts) == pytest.approx(0.1)
    assert (correct, total) == (30, 30)
    assert evaluate_model(model, data) == (correct, total, loss)
    assert not fiarse.flagged(correct / total, majority_share(counts))


def test_flag_rule_by_hand() -> None:
    assert abs(fiarse.CHANCE_FLAG - 0.12) < 1e-12
    assert fiarse.flagged(0.12, 0.1)  # at chance + 2 points
    assert not fiarse.flagged(0.13, 0.49)
    assert fiarse.flagged(0.30, 0.5)  # collapsed onto one class, still above chance
    assert not fiarse.flagged(None, None)


def test_pooled_counts_not_mean_of_shares() -> None:
    # device A: 10 predictions all class 0 (share 1.0); device B: 90 spread 10 per class
    a, b = [10] + [0] * 9, [9] * 10
    pooled = pool_counts([a, b])
    assert pooled.tolist() == [19] + [9] * 9
    assert majority_share(pooled) == pytest.approx(19 / 100)  # mean of shares would be 0.55
    assert pool_counts([[1, 2], [3, 0, 4]]).tolist() == [4, 2, 4]
    assert majority_share([]) is None and majority_share([0, 0]) is None
    with pytest.raises(ValueError, match="negative"):
        majority_share([3, -1])


def test_eval_reply_counts_are_checked() -> None:
    ok = {"eval-correct": 4, "num-examples": 10, "eval-loss": 3.0}
    assert validate_eval_metrics({**ok, PREDICTED_KEY: [5, 5, 0]}, 10) == (4, 10, 3.0)
    assert validate_eval_metrics(ok, 10) == (4, 10, 3.0)  # optional
    for bad in ([5, 4], [11, -1], [], [2.5, 7.5], 10):
        with pytest.raises(ReplyError, match=PREDICTED_KEY):
            validate_eval_metrics({**ok, PREDICTED_KEY: bad}, 10)


def _row(method: str, shares: bool, small_acc: float, small_share: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "method": method,
        "seed": 0,
        "wall-s": 1.0,
        "local": 0.6,
        "global": 0.5,
        "mb-up-round": 1.0,
        "mb-down-round": 1.0,
        "mb-cum-train": 1.0,
        "mb-cum-all": 1.0,
        "payload-by-size": {},
    }
    for g in fiarse.SIZES:
        small = g == fiarse.SIZES[0]
        row[f"model-{g:g}"] = row[f"global-{g:g}"] = small_acc if small else 0.6
        if shares:
            share = small_share if small else 0.15
            row[f"model-share-{g:g}"] = row[f"global-share-{g:g}"] = share
    return row


def test_table_flags_from_the_json_and_says_na_without_shares() -> None:
    data = {
        "rows": [
            _row("FIARSE", True, 0.6, 0.15),
            _row("HeteroFL", True, 0.3, 0.8),  # collapsed, above chance: flagged by share
            _row("FedRolex", False, 0.1, 0.0),  # old JSON, at chance: flagged by accuracy
        ],
        "settings": fiarse.settings(True),
        "command": "x",
        "wall-s": 1.0,
    }
    text = fiarse.render_json(copy.deepcopy(data))
    # the paper's accuracies (a table of their own) have HeteroFL rows too
    paper = [ln for ln in text.splitlines() if ln.startswith("| HeteroFL | CIFAR-")]
    assert len(paper) == 2
    tables = [ln for ln in text.splitlines() if ln.startswith("| HeteroFL |") and ln not in paper]
    assert len(tables) == 3  # main, global per size, shares
    main, per_size, shares = tables
    assert main.count("⚠") == 1 and per_size.count("⚠") == 1 and "30.00 ⚠" in per_size
    assert "| 0.800 | 0.150 |" in shares
    fiarse_rows = [ln for ln in text.splitlines() if ln.startswith("| FIARSE |")]
    assert not any("⚠" in ln for ln in fiarse_rows)
    rolex = [ln for ln in text.splitlines() if ln.startswith("| FedRolex |")]
    assert rolex[1].count("⚠") == 1 and "10.00 ⚠" in rolex[1]
    assert rolex[2].count("n/a") == 8


def _history(one_size: bool, old_node: bool) -> list[dict[str, Any]]:
    """One evaluated round of 20 devices (partitions 0–4 hold 1/64): those predict class 0 only."""
    nodes = []
    for p in range(fiarse.NUM_CLIENTS):
        small = fiarse._size_of(f"dev-{p}") == fiarse.SIZES[0]
        node: dict[str, Any] = {
            "device-id": f"dev-{p}",
            "status": "trained",
            "payload-bytes-up": 1,
            "eval-correct": 5 if small else 40,
            "eval-examples": 50,
            PREDICTED_KEY: [50] + [0] * 9 if small else [5] * 10,
        }
        nodes.append(node)
    if old_node:
        del nodes[-1][PREDICTED_KEY]  # a device of size 1 without counts
    sizes = fiarse.SIZES[:1] if one_size else fiarse.SIZES
    record: dict[str, Any] = {
        "round": 1,
        "server-accuracy": 0.5,
        "nodes": nodes,
        "cum-bytes-up": 1,
        "cum-bytes-down": 1,
        **{f"server-accuracy-g{g:g}": 0.5 for g in sizes},
        **{f"server-majority-share-g{g:g}": 0.25 + i / 10 for i, g in enumerate(sizes)},
    }
    return [record]


def test_summarise_pools_counts_per_size_from_the_history() -> None:
    row = fiarse.summarise("X", _history(one_size=False, old_node=True), 1.0)
    assert row["model-share-0.015625"] == 1.0  # 5 devices × 50 predictions, all class 0
    assert row["model-share-0.0625"] == pytest.approx(0.1)
    assert row["model-share-1"] is None  # one size-1 device sent no counts: no guess
    assert [row[f"global-share-{g:g}"] for g in fiarse.SIZES] == pytest.approx(
        [0.25, 0.35, 0.45, 0.55]
    )
    fedavg = fiarse.summarise("F", _history(one_size=True, old_node=False), 1.0)
    assert [fedavg[f"global-share-{g:g}"] for g in fiarse.SIZES] == [0.25] * 4
