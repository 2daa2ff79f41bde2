"""GENE-FL (reconstructed) end to end on the in-process LocalGrid (METHODS.md §3)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedhet.methods import get_method, parse_run_config
from fedhet.methods.genefl import wire
from fedhet.server.run_dir import RunDir
from fedhet.server.strategy import Reply
from fedhet.sim import LocalGrid, simulated_node_configs
from tests.methods.helpers import make, tiny_config

NON_IID = {"partition": "pathological", "pathological-k": 2}


def _lines(tmp: Path) -> list[dict[str, Any]]:
    text = (tmp / "t-genefl" / "metrics.jsonl").read_text()
    return [json.loads(x) for x in text.splitlines()]


def _node(row: dict[str, Any], node_id: int) -> dict[str, Any]:
    return next(n for n in row["nodes"] if n["node-id"] == node_id)


def test_phases_learngene_upload_and_clusters(tmp_path: Path) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=5, **NON_IID)
    strategy.start(grid)
    history = strategy.history
    assert [h["genefl-phase"] for h in history] == [
        "warmup",
        "warmup",
        "clustering",
        "gene",
        "gene",
    ]
    total = sum(strategy.sizes.values())
    size = history[-1]["genefl-learngene-size"]
    assert 0 < size <= 0.25 * total
    assert history[0]["genefl-learngene-size"] == 0
    # per device: gene-round upload vs the warm-up (= FedAvg) full-model upload
    full = [n["payload-bytes-up"] for n in history[0]["nodes"] if n["status"] == "trained"]
    for row in history[3:]:
        trained = [n for n in row["nodes"] if n["status"] == "trained"]
        assert trained
        for n in trained:
            assert n["bytes-up"] <= 0.25 * min(full) * 1.0 + 400  # metrics record overhead
            assert n["payload-bytes-up"] <= 0.25 * min(full)
            assert n["genefl-role"] == "founder" and "genefl-cluster" in n
    # clustering round: signatures only (|𝓖| parameter floats)
    sig = history[2]["nodes"][0]["payload-bytes-up"]
    n_sig = sum(
        strategy.global_arrays[k].size for k in strategy.gene_keys if k in strategy.param_keys
    )
    assert 4 * n_sig <= sig <= 4 * n_sig + 200  # + the record's name/shape bytes
    clusters = {n["genefl-cluster"] for n in history[-1]["nodes"]}
    assert len(clusters) >= 2, f"non-IID split used one cluster only: {clusters}"
    assert all(0.0 <= h["eval-accuracy"] <= 1.0 for h in history)
    assert history[-1]["genefl-fisher-seconds"] > 0
    # checkpoint state round-trips
    state = strategy.state_dict()
    strategy.load_state_dict(state)
    assert strategy.assign and strategy.gene_layers == state["gene-layers"]


def test_late_node_takes_the_newcomer_path(tmp_path: Path) -> None:
    from client_app.app import app as client_app

    raw = tiny_config("genefl", tmp_path, 5, num_server_rounds=5, **NON_IID)  # min-nodes 5
    cfg = parse_run_config(raw)
    nodes = simulated_node_configs(6)
    grid = LocalGrid(client_app, nodes[:5], raw)
    strategy = get_method("genefl").strategy_cls(cfg, RunDir(tmp_path / "t-genefl"))
    strategy.start(grid, num_rounds=3)
    assert strategy.centroids is not None and len(strategy.assign) == 5
    late = grid.add_node(nodes[5])
    strategy.start(grid, num_rounds=5)
    rows = _lines(tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    entry = _node(rows[3], late)
    assert entry["genefl-role"] == "newcomer"
    assert isinstance(entry["genefl-cluster"], int)
    # P and Θ_k* down, the signature up, all in the ledger under the newcomer-path keys
    gene_bytes = 4 * rows[3]["genefl-learngene-size"]
    assert 2 * gene_bytes <= entry["genefl-newcomer-bytes-down"] <= entry["bytes-down"]
    # assigned before the round's training, it also trains in its cluster in the same round
    assert entry["status"] == "trained"
    assert 0 < entry["genefl-newcomer-bytes-up"] < entry["bytes-up"]
    assert rows[3]["genefl-newcomers"] == 1
    # it then trains in its cluster and is evaluated on its personal model
    assert _node(rows[4], late)["status"] == "trained"
    assert _node(rows[4], late)["genefl-cluster"] == entry["genefl-cluster"]
    assert _node(rows[4], late).get("eval-accuracy") is not None
    founders = {n["genefl-role"] for n in rows[4]["nodes"] if n["node-id"] != late}
    assert founders == {"founder"}


def _corrupt_signatures(victims: dict[int, str]):
    def corrupt(node_id: int, reply: Message) -> Message:
        if node_id not in victims or reply.has_error():
            return reply
        rec = reply.content.array_records.get("arrays")
        if rec is None or wire.SIGNATURE not in rec:
            return reply
        sig = rec[wire.SIGNATURE].numpy()
        kind = victims.pop(node_id)
        bad = np.full_like(sig, np.nan) if kind == "nan" else np.zeros(sig.size + 1, sig.dtype)
        reply.content.array_records["arrays"] = ArrayRecord(array_dict={wire.SIGNATURE: Array(bad)})
        return reply

    return corrupt


def test_bad_signature_dropped_then_newcomer_path(tmp_path: Path) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=5, **NON_IID)
    a, b = sorted(grid.contexts)[:2]
    grid.corrupt = _corrupt_signatures({a: "nan", b: "shape"})
    strategy.start(grid, num_rounds=3)
    rows = _lines(tmp_path)
    reasons = {d["node-id"]: d["reason"] for d in rows[2]["dropped"]}
    assert "NaN" in reasons[a] and "shape" in reasons[b]
    devs = {strategy.nodes[a].device_id, strategy.nodes[b].device_id}
    assert not devs & set(strategy.assign)
    # b never answers its probe in round 4: stays unclustered, is probed again in round 5
    grid.fail_next[b] = "node went away"
    strategy.start(grid, num_rounds=4)
    rows = _lines(tmp_path)
    assert any(d["node-id"] == b and d["stage"] == wire.PROBE for d in rows[3]["dropped"])
    assert "genefl-cluster" not in _node(rows[3], b)
    assert _node(rows[3], a)["genefl-role"] == "newcomer"
    assert "genefl-cluster" in _node(rows[3], a)
    strategy.start(grid, num_rounds=5)
    rows = _lines(tmp_path)
    assert "genefl-cluster" in _node(rows[4], b)


def test_bad_layer_scores_are_dropped(tmp_path: Path) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=2)
    victim = sorted(grid.contexts)[0]

    def corrupt(node_id: int, reply: Message) -> Message:
        metrics = reply.content.metric_records.get("metrics")
        if node_id == victim and metrics is not None and wire.SCORES in metrics:
            m = dict(metrics)
            m[wire.SCORES] = [*list(m[wire.SCORES]), 1.0]
            reply.content.metric_records["metrics"] = MetricRecord(m)
        return reply

    grid.corrupt = corrupt
    strategy.start(grid)
    history = strategy.history
    dropped = [d for d in history[1]["dropped"] if d["node-id"] == victim]
    assert dropped and "layer scores" in dropped[0]["reason"]
    assert strategy.gene_layers  # fixed from the other devices' scores


def test_missed_clustering_founders_join_as_newcomers(tmp_path: Path) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=4, fraction_train=0.5)
    strategy.start(grid)
    history = strategy.history
    clustered = {n["node-id"] for n in history[2]["nodes"] if n["status"] == "trained"}
    assert 0 < len(clustered) < 6
    missed = [n for n in history[3]["nodes"] if n["node-id"] not in clustered]
    assert missed
    warm = {n["node-id"] for h in history[:2] for n in h["nodes"] if n["status"] == "trained"}
    assert {n["node-id"] for n in missed} & warm, "no warm-up founder missed clustering"
    for n in missed:
        assert n["genefl-role"] == "newcomer" and isinstance(n["genefl-cluster"], int)


def test_k_larger_than_founders_is_reduced_with_a_log(tmp_path: Path, caplog) -> None:
    strategy, grid = make("genefl", tmp_path, num_nodes=4, num_server_rounds=3, **{"genefl.k": 9})
    with caplog.at_level(logging.WARNING, logger="fedhet.genefl"):
        strategy.start(grid)
    assert "genefl.k=9 but only 4 founders" in caplog.text
    assert strategy.centroids is not None and strategy.centroids.shape[0] == 4


def test_empty_cluster_keeps_its_learngene(tmp_path: Path, caplog) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=3, **NON_IID)
    strategy.start(grid)
    assert len(strategy.theta_k) >= 2
    dev, c = next(iter(strategy.assign.items()))
    node = next(n for n in strategy.nodes.values() if n.device_id == dev)
    before = [{k: v.copy() for k, v in t.items()} for t in strategy.theta_k]
    upload = {k: v + 1.0 for k, v in strategy.theta_k[c].items()}
    strategy.phases[99] = wire.GENE
    with caplog.at_level(logging.INFO, logger="fedhet.genefl"):
        strategy.aggregate(99, [Reply(node, upload, {}, 10)])
    for i, t in enumerate(strategy.theta_k):
        same = all(np.array_equal(t[k], before[i][k]) for k in t)
        assert same == (i != c)
    assert "had no participants; keeps its Θ_k" in caplog.text
    # Θ* = Σ N_k Θ_k / Σ N_k
    n_k = strategy._cluster_samples()
    key = strategy.gene_keys[0]
    want = sum(w * t[key] for w, t in zip(n_k, strategy.theta_k, strict=True)) / sum(n_k)
    assert np.allclose(strategy.theta_star[key], want, atol=1e-6)


@pytest.mark.parametrize("key,value", [("genefl.rho", 0.0), ("genefl.granularity", "neuron")])
def test_bad_config_is_a_config_error(tmp_path: Path, key: str, value: Any) -> None:
    from fedhet.config import ConfigError

    with pytest.raises(ConfigError, match=key.split(".")[1]):
        parse_run_config(tiny_config("genefl", tmp_path, **{key: value}))


def test_wire_and_plan_helpers() -> None:
    from fedhet.methods.genefl.plan import scaled_steps

    assert wire.decode_layers(wire.encode_layers(["units.0", "units.5"])) == ["units.0", "units.5"]
    with pytest.raises(ValueError, match="JSON list"):
        wire.decode_layers('{"units.0": 1}')
    assert scaled_steps(25, 0.33, True) == 8
    assert scaled_steps(25, 0.33, False) == 25
    assert scaled_steps(0, 0.33, True) == 0  # epoch rule kept
    assert scaled_steps(1, 0.01, True) == 1
