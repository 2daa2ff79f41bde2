"""Server machinery: failures, late joiners, bad profiles, ledger, resume (fedavg as the carrier)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedhet.config import ConfigError
from fedhet.methods import get_method, parse_run_config
from fedhet.server.run_dir import RunDir
from tests.methods.helpers import make, tiny_config


def test_node_failure_is_logged_and_round_goes_on(tmp_path):
    strategy, grid = make("fedavg", tmp_path, num_server_rounds=1)
    victim = sorted(grid.contexts)[1]
    strategy.register_nodes(grid, 1)
    grid.fail_next[victim] = "node lost connection"
    strategy.start(grid)
    history = strategy.history
    drops = history[0]["dropped"]
    assert any(d["node-id"] == victim and "node lost connection" in d["reason"] for d in drops)
    assert history[0]["num-trained"] == 5


def test_late_joiner_is_registered_and_trained(tmp_path):
    strategy, grid = make("fedavg", tmp_path, num_nodes=4, num_server_rounds=1, min_nodes=4)
    strategy.start(grid)
    new = grid.add_node({"partition-id": 3, "num-partitions": 4, "device-id": "late-device"})
    grid.offline.add(sorted(grid.contexts)[0])
    strategy.shared.num_server_rounds = 2
    strategy.start(grid, num_rounds=2)
    history = strategy.history
    assert new in strategy.nodes and strategy.nodes[new].device_id == "late-device"
    trained = {n["node-id"] for n in history[-1]["nodes"] if n["status"] == "trained"}
    assert new in trained and sorted(grid.contexts)[0] not in trained


def test_bad_profile_is_rejected_with_reason(tmp_path):
    strategy, grid = make("fedavg", tmp_path, num_nodes=3, num_server_rounds=1, min_nodes=2)
    victim = sorted(grid.contexts)[2]

    def corrupt(node_id, reply):
        if node_id == victim and reply.metadata.message_type == "query.profile":
            rec = dict(reply.content.config_records["profile"])
            rec["cores"] = -4.0
            return _replace_profile(reply, rec)
        return reply

    grid.corrupt = corrupt
    strategy.start(grid)
    assert victim in strategy.rejected and "'cores' = -4.0" in strategy.rejected[victim]
    profiles = json.loads((tmp_path / "t-fedavg" / "profiles.json").read_text())
    assert str(victim) in profiles["rejected"]


def _replace_profile(reply, rec):
    reply.content.config_records["profile"] = ConfigRecord(rec)
    return reply


def test_ledger_counts_serialised_bytes(tmp_path):
    strategy, grid = make("fedavg", tmp_path, num_server_rounds=1)
    strategy.start(grid)
    history = strategy.history
    model_bytes = sum(a.nbytes for a in strategy.global_arrays.values())
    overhead = 256 * len(strategy.global_arrays)  # serialised dtype/shape metadata per array
    for node in history[0]["nodes"]:
        # train + eval downloads each carry the full model; the upload carries it once
        assert 2 * model_bytes <= node["payload-bytes-down"] <= 2 * (model_bytes + overhead)
        assert model_bytes <= node["payload-bytes-up"] <= model_bytes + overhead
        assert node["bytes-down"] > node["payload-bytes-down"]  # configs are counted too


def test_fedavg_drop_samples_only_full_budget_devices(tmp_path):
    strategy, grid = make("fedavg-drop", tmp_path, num_server_rounds=1)
    strategy.start(grid)
    history = strategy.history
    classes = {n["device-class"] for n in history[0]["nodes"] if n["status"] == "trained"}
    assert classes == {"strong"}


def test_fedavg_drop_trains_min_m_strong_and_evaluates_every_device(tmp_path):
    """6 devices, three-tier: 2 strong. fraction-train 0.5 → m = 3 for every method, so
    FedAvg-drop trains min(3, 2) = 2 (a fraction of the strong pool would give 1); evaluation
    covers all 6 devices, as for FedAvg (every device can run the global model)."""
    strategy, grid = make("fedavg-drop", tmp_path, num_server_rounds=2, fraction_train=0.5)
    strategy.start(grid)
    for record in strategy.history:
        trained = [n for n in record["nodes"] if n["status"] == "trained"]
        assert record["num-trained"] == len(trained) == 2
        assert {n["device-class"] for n in trained} == {"strong"}
        evaluated = {n["device-id"] for n in record["nodes"] if "eval-examples" in n}
        assert evaluated == {f"partition-{i}" for i in range(6)}
    other, grid2 = make("fedavg", tmp_path / "full", num_server_rounds=1, fraction_train=0.5)
    other.start(grid2)
    assert other.history[0]["num-trained"] == 3
    evaluated_full = {n["device-id"] for n in other.history[0]["nodes"] if "eval-examples" in n}
    assert evaluated_full == evaluated


def test_resume_continues_from_checkpoint(tmp_path):
    strategy, grid = make("fedavg", tmp_path, num_server_rounds=1)
    strategy.start(grid)
    after_one = {k: np.array(v) for k, v in strategy.global_arrays.items()}
    raw = tiny_config("fedavg", tmp_path, num_server_rounds=2)
    resumed = get_method("fedavg").strategy_cls(
        parse_run_config(raw), RunDir(tmp_path / "t-fedavg")
    )
    resumed.start(grid)
    history = resumed.history
    assert [h["round"] for h in history] == [2]
    rows = RunDir(tmp_path / "t-fedavg").read_metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[1]["cum-bytes-up"] > rows[0]["cum-bytes-up"]
    # resumed from round 1's model, not from scratch
    fresh = get_method("fedavg").strategy_cls(parse_run_config(raw), None)
    k = "fc2.weight"
    assert not np.allclose(after_one[k], fresh.global_arrays[k])


def test_resume_with_different_config_fails_clearly(tmp_path):
    strategy, grid = make("fedavg", tmp_path, num_server_rounds=1)
    strategy.start(grid)
    raw = tiny_config("fedavg", tmp_path, lr=0.5)
    other = get_method("fedavg").strategy_cls(parse_run_config(raw), RunDir(tmp_path / "t-fedavg"))
    with pytest.raises(ConfigError, match=r"lr: 0\.05 → 0\.5"):
        other.start(grid)


def test_device_with_its_own_data_path(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.kron(digits.images[:150], np.ones((4, 4)))[:, 2:30, 2:30]  # 32×32 → crop 28×28
    path = tmp_path / "own.npz"
    np.savez(path, x=(x * 16).astype(np.uint8), y=digits.target[:150])
    strategy, grid = make("fedavg", tmp_path, num_nodes=2, num_server_rounds=1, min_nodes=3)
    own = grid.add_node({"data-path": str(path), "device-id": "press-1", "device-class": "strong"})
    strategy.start(grid)
    history = strategy.history
    entry = next(n for n in history[0]["nodes"] if n["node-id"] == own)
    assert entry["status"] == "trained" and entry["device-id"] == "press-1"
    assert entry["num-examples"] == 120  # 80 % of the device's 150 samples train, 20 % test locally
    assert not strategy.nodes[own].profile.simulated


def test_evaluate_error_reply_is_logged_under_the_dead_node(tmp_path, monkeypatch):
    """A SuperLink error reply has the SuperLink as sender; ``dropped`` must name the node.

    Seen on a real SuperLink: a node SIGKILLed during the train phase is still sampled for
    evaluation and its evaluate message comes back as "Node Unavailable" from node id 1.
    """
    strategy, grid = make("fedavg", tmp_path, num_nodes=3, num_server_rounds=1, min_nodes=2)
    victim = sorted(grid.contexts)[1]
    handle = grid._handle

    def dies_before_evaluate(msg):
        if msg.metadata.dst_node_id == victim and msg.metadata.message_type == "evaluate":
            return grid._error(msg, "Node Unavailable")
        return handle(msg)

    monkeypatch.setattr(grid, "_handle", dies_before_evaluate)
    strategy.start(grid)
    history = strategy.history
    drops = [d for d in history[0]["dropped"] if d["stage"] == "evaluate"]
    assert drops == [
        {
            "node-id": victim,
            "device-id": strategy.nodes[victim].device_id,
            "stage": "evaluate",
            "reason": "Node Unavailable",
        }
    ]
    assert history[0]["num-trained"] == 3


def test_fedavg_on_a_batch_norm_model_keeps_every_reply(tmp_path):
    """Regression: 0-d BN counters were sent as (1,) arrays and every reply was dropped."""
    strategy, grid = make(
        "fedavg", tmp_path, num_nodes=3, num_server_rounds=1, min_nodes=3, model="cnn_b"
    )
    strategy.start(grid)
    history = strategy.history
    assert history[0]["dropped"] == []
    assert history[0]["num-trained"] == 3


def test_restart_before_first_checkpoint_starts_clean(tmp_path):
    """Metric lines of a run that died before its first checkpoint are not kept twice."""
    strategy, grid = make("fedavg", tmp_path, num_server_rounds=1, checkpoint_every=5)
    run_dir = RunDir(tmp_path / "t-fedavg")
    run_dir.append_metrics({"round": 1, "stale": True})
    strategy.start(grid)
    rows = run_dir.read_metrics()
    assert [r["round"] for r in rows] == [1] and "stale" not in rows[0]


def test_start_returns_flower_result_with_the_round_history(tmp_path):
    """start() returns Flower's Result, filled from the metrics.jsonl lines of the run."""
    from flwr.serverapp.strategy import Result, Strategy

    strategy, grid = make("fedavg", tmp_path, num_server_rounds=2)
    assert isinstance(strategy, Strategy)
    result = strategy.start(grid)
    assert isinstance(result, Result)
    rows = RunDir(tmp_path / "t-fedavg").read_metrics()
    assert [r["round"] for r in rows] == [1, 2] and strategy.history == rows
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    for row in rows:
        rnd = row["round"]
        train = dict(result.train_metrics_clientapp[rnd])
        assert train["train-loss"] == pytest.approx(row["train-loss"])
        assert train["bytes-up"] == row["bytes-up"] and train["num-trained"] == row["num-trained"]
        local = dict(result.evaluate_metrics_clientapp[rnd])
        assert local["eval-accuracy"] == pytest.approx(row["eval-accuracy"])
        server = dict(result.evaluate_metrics_serverapp[rnd])
        assert server["server-accuracy"] == pytest.approx(row["server-accuracy"])
        assert "server-accuracy" not in train and "eval-accuracy" not in train
    final = {k: v.numpy() for k, v in result.arrays.items()}
    assert set(final) == set(strategy.global_arrays)
    for k, v in strategy.global_arrays.items():
        np.testing.assert_array_equal(final[k], v)
    # Flower's own start() arguments that fedhet builds itself are refused, not ignored
    with pytest.raises(ValueError, match="evaluate_fn"):
        strategy.start(grid, evaluate_fn=lambda rnd, arrays: None)


def test_metrics_log_the_plan_from_the_server_side(tmp_path):
    """Every node line carries the server's plan knobs; devices echo no plan-* metrics."""
    strategy, grid = make("fiarse", tmp_path, num_nodes=4, num_server_rounds=1, min_nodes=4)
    strategy.start(grid)
    for node in strategy.history[0]["nodes"]:
        assert node["plan"] == strategy.nodes[node["node-id"]].plan.knobs
        assert node["plan"]["gamma"] == node["fiarse-gamma"]
        assert not any(k.startswith("plan-") for k in node)
    sent = [m for m in grid.sent_log if m.metadata.message_type in ("train", "evaluate")]
    assert sent and all("fiarse-gamma" not in m.content.config_records["config"] for m in sent)
