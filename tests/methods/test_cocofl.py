"""CoCoFL method tests (METHODS.md §6, B7): window plans, window-only replies, zero-fill aggregation.

End-to-end tests run the real ClientApp handlers on real Flower Messages through
:class:`fedhet.sim.LocalGrid` on sklearn digits (6 devices of the three-tier fleet: 2 strong,
2 medium, 2 weak), ``cnn_b``, tiny settings. The feasibility filter and the int8-vs-fp32 error are
tested in ``tests/unit/test_costs.py`` and ``tests/unit/test_quant.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict

from fedhet.client.runtime import ClientContext
from fedhet.config import default_run_config
from fedhet.core.costs import WindowCost, load_cost_table
from fedhet.core.quant import window_state_keys
from fedhet.methods import get_method, parse_run_config
from fedhet.methods.cocofl import client as cocofl_client
from fedhet.methods.cocofl.config import CoCoFLConfig, parse_window, step_lr
from fedhet.methods.cocofl.plan import CoCoFLKnobs
from fedhet.methods.cocofl.strategy import CoCoFLStrategy
from fedhet.methods.cocofl.windows import choose_window, window_cost_table, window_options
from fedhet.models import build_model
from fedhet.plan import Budget, NodePlan, PlanError
from fedhet.profile import DeviceProfile
from fedhet.server.strategy import Node, Reply, to_array_record
from fedhet.sim import LocalGrid, simulated_node_configs

NUM_DEVICES = 6


def run_config(**extra: Any) -> dict[str, Any]:
    raw = default_run_config(
        method="cocofl",
        dataset="digits",
        model="cnn_b",
        num_server_rounds=2,
        min_nodes=NUM_DEVICES,
        local_steps=2,
        batch_size=16,
        lr=0.1,
        profile_bench=False,
        local_test_size=40,
        max_train_per_client=120,
        partition="iid",
    )
    raw.update({k if "." in k else k.replace("_", "-"): v for k, v in extra.items()})
    return raw


def run_grid(
    raw: dict[str, Any], corrupt: Any = None
) -> tuple[CoCoFLStrategy, LocalGrid, list[dict[str, Any]], dict[int, Message]]:
    """Run the federation; returns (strategy, grid, history, last train reply per node)."""
    from client_app.app import app

    torch.set_num_threads(1)
    grid = LocalGrid(app, simulated_node_configs(NUM_DEVICES), raw)
    replies: dict[int, Message] = {}

    def capture(node_id: int, reply: Message) -> Message | None:
        if corrupt is not None:
            reply = corrupt(node_id, reply)
        if reply.metadata.message_type == MessageType.TRAIN and not reply.has_error():
            replies[node_id] = reply
        return reply

    grid.corrupt = capture
    strategy = get_method("cocofl").strategy_cls(parse_run_config(raw), None)
    strategy.start(grid)
    history = strategy.history
    return strategy, grid, history, replies


@pytest.fixture(scope="module")
def cocofl_run() -> tuple[CoCoFLStrategy, LocalGrid, list[dict[str, Any]], dict[int, Message]]:
    return run_grid(run_config())


def _node(device_class: str, budget: Budget, device_id: str = "d", node_id: int = 1) -> Node:
    profile = DeviceProfile(
        device_id=device_id,
        device_class=device_class,
        cores=1,
        mem_total_bytes=1,
        mem_avail_bytes=1,
    )
    plan = NodePlan(node_id=node_id, device_id=device_id, device_class=device_class, budget=budget)
    return Node(node_id, profile, plan)


# --- plans ------------------------------------------------------------------------------------
HAND_TABLE = [
    WindowCost((0, 0), 0.5, 0.1, 0.5),
    WindowCost((0, 1), 0.9, 0.6, 0.9),
    WindowCost((1, 1), 0.3, 0.5, 0.3),
    WindowCost((2, 2), 0.2, 0.3, 0.2),
    WindowCost((1, 2), 0.4, 0.8, 0.4),
    WindowCost((0, 2), 1.0, 1.0, 1.0),
]


def test_window_options_and_choice_on_a_hand_made_table() -> None:
    cfg = CoCoFLConfig()
    weak = Budget(time=0.45, memory=0.45, upload_min=0.5, upload_max=1.0)
    # D_t = 0.6: (1, 2) needs 0.8 → out; (1, 1) and (2, 2) stay (nothing contains them).
    assert [r.window for r in window_options(HAND_TABLE, weak, 0.6)] == [(1, 1), (2, 2)]
    # D_t = 0.9: (1, 2) fits and contains (1, 1) and (2, 2).
    assert [r.window for r in window_options(HAND_TABLE, weak, 0.9)] == [(1, 2)]
    full = Budget(time=1, memory=1, upload_min=1, upload_max=1)
    assert [r.window for r in window_options(HAND_TABLE, full, 1.0)] == [(0, 2)]
    tiny = Budget(time=0.1, memory=1, upload_min=1, upload_max=1)
    assert window_options(HAND_TABLE, tiny, 1.0, cfg.forced_window) == []
    forced = CoCoFLConfig(force_window="0,1").forced_window
    assert [r.window for r in window_options(HAND_TABLE, tiny, 1.0, forced)] == [(0, 1)]

    options = window_options(HAND_TABLE, weak, 0.6)
    picks = [choose_window(options, "random", 0, "dev", t).window for t in range(1, 41)]
    assert picks == [choose_window(options, "random", 0, "dev", t).window for t in range(1, 41)]
    assert set(picks) == {(1, 1), (2, 2)}  # both maximal windows get drawn
    assert [choose_window(options, "round-robin", 0, "dev", t).window for t in (1, 2, 3)] == [
        (1, 1),
        (2, 2),
        (1, 1),
    ]


def test_config_parsing_and_lr_schedule() -> None:
    assert parse_window("") is None and parse_window("2, 4") == (2, 4)
    with pytest.raises(ValueError):
        parse_window("4,2")
    with pytest.raises(Exception, match=r"force-window|window"):
        parse_run_config(run_config(**{"cocofl.force-window": "3"}))
    ms = (0.6, 0.8)
    lrs = [step_lr(0.1, t, 40, ms, 0.1) for t in range(1, 41)]
    assert lrs[:24] == [0.1] * 24
    assert lrs[24:32] == pytest.approx([0.01] * 8)
    assert lrs[32:] == pytest.approx([0.001] * 8)
    assert step_lr(0.1, 40, 40, (), 0.1) == 0.1


def test_plan_excludes_a_device_no_window_fits() -> None:
    strategy = CoCoFLStrategy(parse_run_config(run_config()))
    profile = _node("custom", Budget(time=1, memory=1, upload_min=1, upload_max=1)).profile
    ok, knobs, _ = strategy.plan_knobs(
        profile, Budget(time=1, memory=1, upload_min=1, upload_max=1)
    )
    assert ok and knobs.windows_at_upload_max == ["0-5"]
    ok, _, reason = strategy.plan_knobs(
        profile, Budget(time=0.01, memory=1, upload_min=1, upload_max=1)
    )
    assert not ok and "no window" in reason


def test_shipped_table_is_used_at_batch_32_and_analytic_fallback_elsewhere() -> None:
    cfg = CoCoFLConfig()
    shipped = load_cost_table(Path("fedhet/models/costs/cnn_b-b32.json"))
    assert window_cost_table("cnn_b", 32, cfg) == shipped
    resnet = window_cost_table("resnet_s", 16, cfg)  # no shipped table: analytic, 5 units
    assert len(resnet) == 15 and {r.window for r in resnet if r.data == 1.0} == {(0, 4)}


# --- two rounds on digits ----------------------------------------------------------------------
def test_two_rounds_log_plans_next_to_measurements(cocofl_run: Any) -> None:
    strategy, _, history, _ = cocofl_run
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        trained = [n for n in h["nodes"] if n["status"] == "trained"]
        assert len(trained) == NUM_DEVICES
        assert sum(h["cocofl-unit-trainers"]) > 0
        for n in trained:
            for key in (
                "plan-window-start",
                "plan-window-end",
                "plan-time",
                "plan-data",
                "plan-memory",
                "plan-upload-budget",
                "measured-train-seconds",
                "measured-upload-bytes",
                "measured-peak-mem-bytes",
            ):
                assert key in n, key
            # the ledger counts what travelled: the window's buffers plus per-array record overhead
            window = (n["plan-window-start"], n["plan-window-end"])
            n_keys = len(window_state_keys(build_model("cnn_b"), window))
            assert 0 <= n["payload-bytes-up"] - n["measured-upload-bytes"] <= 200 * n_keys
            assert n["plan-time"] <= strategy.nodes[n["node-id"]].plan.budget.time + 1e-9
            assert n["plan-memory"] <= strategy.nodes[n["node-id"]].plan.budget.memory + 1e-9
        strong = [n for n in trained if n["device-class"] == "strong"]
        assert all((n["plan-window-start"], n["plan-window-end"]) == (0, 5) for n in strong)


def test_weak_reply_carries_only_its_window(cocofl_run: Any) -> None:
    strategy, grid, history, replies = cocofl_run
    model = build_model("cnn_b")
    full_bytes = sum(v.nbytes for v in strategy.global_arrays.values())
    weak = [
        nid
        for nid, ctx in grid.contexts.items()
        if strategy.nodes[nid].profile.device_class == "weak"
    ]
    assert weak
    for nid in weak:
        reply = replies[nid]
        metrics = dict(reply.content.metric_records["metrics"])
        window = (int(metrics["window-start"]), int(metrics["window-end"]))
        assert window != (0, 5)
        assert not any(k.startswith("plan-") for k in metrics)  # the device echoes no plan
        keys = set(reply.content.array_records["arrays"].keys())
        assert keys == set(window_state_keys(model, window))
        sent = sum(a.numpy().nbytes for a in reply.content.array_records["arrays"].values())
        d_t = strategy.nodes[nid].plan.budget.upload_draw(0, strategy.nodes[nid].device_id, 2)
        entry = next(n for n in history[-1]["nodes"] if n["node-id"] == nid)
        assert entry["plan-upload-budget"] == pytest.approx(d_t)  # logged by the server
        assert (entry["plan-window-start"], entry["plan-window-end"]) == window
        assert sent <= d_t * full_bytes
        assert sent == metrics["measured-upload-bytes"] < full_bytes


def _rewrite_window(window: tuple[int, int], victims: set[int]) -> Any:
    def corrupt(node_id: int, reply: Message) -> Message:
        if node_id in victims and reply.metadata.message_type == MessageType.TRAIN:
            metrics = dict(reply.content.metric_records["metrics"])
            metrics["window-start"], metrics["window-end"] = window
            reply.content.metric_records["metrics"] = MetricRecord(metrics)
        return reply

    return corrupt


def test_reply_outside_the_plan_is_dropped() -> None:
    raw = run_config(num_server_rounds=1)
    # weak node (partition 5) claims the full window: infeasible for T = 0.33
    _, _, history, _ = run_grid(raw, corrupt=_rewrite_window((0, 5), {1005}))
    dropped = [d for d in history[0]["dropped"] if d["node-id"] == 1005]
    assert dropped and "not feasible" in dropped[0]["reason"]
    # strong node (partition 0) trains (0, 5) but claims (5, 5): names do not match the window
    _, _, history, _ = run_grid(raw, corrupt=_rewrite_window((5, 5), {1000}))
    dropped = [d for d in history[0]["dropped"] if d["node-id"] == 1000]
    assert dropped and "not feasible" in dropped[0]["reason"]
    assert history[0]["num-trained"] == NUM_DEVICES - 1


def test_reply_with_foreign_tensors_is_dropped() -> None:
    def add_tensor(node_id: int, reply: Message) -> Message:
        if node_id == 1005 and reply.metadata.message_type == MessageType.TRAIN:
            arrays = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
            arrays["units.0.0.weight"] = np.zeros((16, 1, 3, 3), np.float32)
            reply.content.array_records["arrays"] = to_array_record(arrays)
        return reply

    _, _, history, _ = run_grid(run_config(num_server_rounds=1), corrupt=add_tensor)
    dropped = [d for d in history[0]["dropped"] if d["node-id"] == 1005]
    assert dropped and "unexpected arrays" in dropped[0]["reason"]


# --- aggregation -------------------------------------------------------------------------------
def _reply(node: Node, arrays: dict[str, np.ndarray], window: tuple[int, int], n: int) -> Reply:
    metrics = {"window-start": window[0], "window-end": window[1]}
    return Reply(node, arrays, metrics, n)


@pytest.mark.parametrize("bn_stats", ["zero-fill", "holders"])
@pytest.mark.parametrize("weighted", [False, True])
def test_zero_fill_aggregation_by_hand(weighted: bool, bn_stats: str) -> None:
    strategy = CoCoFLStrategy(
        parse_run_config(run_config(**{"cocofl.weighted": weighted, "cocofl.bn-stats": bn_stats}))
    )
    model = build_model("cnn_b")
    base = {
        k: np.full(v.shape, 1.0, dtype=v.dtype.type if v.dtype.kind != "f" else np.float32)
        for k, v in strategy.global_arrays.items()
    }
    base = {k: np.asarray(v, dtype=strategy.global_arrays[k].dtype) for k, v in base.items()}
    strategy.global_arrays = base
    budget = Budget(time=1, memory=1, upload_min=1, upload_max=1)
    a, b, c = (_node("strong", budget, f"d{i}", i) for i in range(3))
    full = window_state_keys(model, (0, 5))
    last = window_state_keys(model, (4, 5))
    head = window_state_keys(model, (5, 5))
    # device a: full model at 3; device b: units 4-5 at 5; device c: unit 5 at 9 (n = 1, 1, 2)
    up_a = {k: np.full_like(base[k], 3) for k in full}
    up_b = {k: np.full_like(base[k], 5) for k in last}
    up_c = {k: np.full_like(base[k], 9) for k in head}
    up_c["units.5.weight"][0, 0] = 13.0
    strategy.aggregate(
        1, [_reply(a, up_a, (0, 5), 1), _reply(b, up_b, (4, 5), 1), _reply(c, up_c, (5, 5), 2)]
    )
    g = strategy.global_arrays
    w = (1.0, 1.0, 2.0) if weighted else (1.0, 1.0, 1.0)
    s = sum(w)
    # unit 0: only a trained it: 1 + (1/|S|)·(3 − 1); b and c count as zero updates
    assert g["units.0.0.weight"] == pytest.approx(
        np.full_like(base["units.0.0.weight"], 1 + w[0] * 2 / s)
    )
    if bn_stats == "zero-fill":
        # BN running statistics follow the weights' rule (official code)
        assert g["units.1.1.running_var"] == pytest.approx(1 + w[0] * 2 / s)
        assert g["units.4.1.running_mean"] == pytest.approx(1 + (2 * w[0] + 4 * w[1]) / s)
    else:
        # mean over the devices that trained the unit: a alone → 3; a and b → their mean
        assert g["units.1.1.running_var"] == pytest.approx(3.0)
        assert g["units.4.1.running_mean"] == pytest.approx(
            1 + (2 * w[0] + 4 * w[1]) / (w[0] + w[1])
        )
        # the BN affine weights are parameters: zero-fill as before
        assert g["units.1.1.weight"] == pytest.approx(1 + w[0] * 2 / s)
    # unit 4: a and b: 1 + (2·w_a + 4·w_b)/S
    assert g["units.4.0.weight"] == pytest.approx(1 + (2 * w[0] + 4 * w[1]) / s)
    # unit 5: all three, one coordinate differs in c
    expect = np.full_like(base["units.5.weight"], 1 + (2 * w[0] + 4 * w[1] + 8 * w[2]) / s)
    expect[0, 0] = 1 + (2 * w[0] + 4 * w[1] + 12 * w[2]) / s
    np.testing.assert_allclose(g["units.5.weight"], expect, rtol=1e-6)
    # counters are not averaged
    assert g["units.0.1.num_batches_tracked"] == base["units.0.1.num_batches_tracked"]


def test_window_only_reply_moves_other_tensors_by_the_zero_fill_rule() -> None:
    strategy = CoCoFLStrategy(parse_run_config(run_config()))
    model = build_model("cnn_b")
    base = {k: np.array(v, copy=True) for k, v in strategy.global_arrays.items()}
    budget = Budget(time=1, memory=1, upload_min=1, upload_max=1)
    weak, strong = _node("weak", budget, "w", 1), _node("strong", budget, "s", 2)
    head = window_state_keys(model, (5, 5))
    up_weak = {k: base[k] + 1.0 for k in head}
    up_strong = {k: np.array(base[k], copy=True) for k in window_state_keys(model, (0, 5))}
    up_strong["units.0.0.weight"] = base["units.0.0.weight"] + 2.0
    strategy.aggregate(
        1, [_reply(weak, up_weak, (5, 5), 10), _reply(strong, up_strong, (0, 5), 10)]
    )
    g = strategy.global_arrays
    np.testing.assert_allclose(g["units.5.weight"], base["units.5.weight"] + 0.5, rtol=1e-6)
    # the weak device did not train unit 0: it counts as a zero update (halves the step)
    np.testing.assert_allclose(g["units.0.0.weight"], base["units.0.0.weight"] + 1.0, rtol=1e-6)
    for k in base:
        if not k.startswith(("units.0.0.", "units.5.")):
            np.testing.assert_array_equal(g[k], base[k])
    assert strategy.current.extras["cocofl-unit-trainers"] == [1, 1, 1, 1, 1, 2]


# --- the device --------------------------------------------------------------------------------
def test_device_with_no_feasible_window_replies_infeasible() -> None:
    raw = run_config()
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0, "num-partitions": 6},
        state=RecordDict(),
        run_config=raw,
    )
    ctx = ClientContext.from_context(context)
    plan = NodePlan(
        node_id=7,
        device_id=ctx.device_id,
        device_class="custom",
        budget=Budget(time=0.01, memory=1, upload_min=1, upload_max=1),
    )
    strategy = CoCoFLStrategy(parse_run_config(raw))
    from flwr.app import ConfigRecord

    msg = Message(
        RecordDict(
            {
                "arrays": to_array_record(strategy.global_arrays),
                "config": ConfigRecord({"server-round": 1, "plan": plan.to_json()}),
            }
        ),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )
    content = cocofl_client.train(msg, ctx)
    metrics = dict(content.metric_records["metrics"])
    assert metrics["infeasible"] == 1 and len(content.array_records["arrays"]) == 0


def _train_message(raw: dict[str, Any], config: dict[str, Any]) -> tuple[Message, ClientContext]:
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0, "num-partitions": 6},
        state=RecordDict(),
        run_config=raw,
    )
    strategy = CoCoFLStrategy(parse_run_config(raw))
    from flwr.app import ConfigRecord

    msg = Message(
        RecordDict(
            {
                "arrays": to_array_record(strategy.global_arrays),
                "config": ConfigRecord({"server-round": 1, **config}),
            }
        ),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )
    return msg, ClientContext.from_context(context)


def test_device_reads_knobs_only_from_a_valid_plan() -> None:
    """A plan with another method's knobs, a bad knob, or no plan at all is a clear error."""
    raw = run_config()
    budget = Budget(time=1, memory=1, upload_min=1, upload_max=1)

    def plan(knobs: dict[str, Any]) -> str:
        return NodePlan(
            node_id=7, device_id="d", device_class="strong", budget=budget, knobs=knobs
        ).to_json()

    msg, ctx = _train_message(raw, {"plan": plan({"gamma": 0.25, "size-source": "budget"})})
    with pytest.raises(PlanError, match=r"CoCoFLKnobs.*gamma.*Extra inputs are not permitted"):
        cocofl_client.train(msg, ctx)
    msg, ctx = _train_message(raw, {"plan": plan({"choice": "sometimes"})})
    with pytest.raises(PlanError, match=r"CoCoFLKnobs: choice"):
        cocofl_client.train(msg, ctx)
    msg, ctx = _train_message(raw, {})
    with pytest.raises(PlanError, match=r"carries no 'plan'.*CoCoFLKnobs"):
        cocofl_client.train(msg, ctx)


def test_server_plan_carries_the_choice_inputs() -> None:
    raw = run_config(**{"cocofl.choice": "round-robin", "cocofl.force-window": "1,2"})
    strategy = CoCoFLStrategy(parse_run_config(raw))
    profile = _node("strong", Budget(time=1, memory=1, upload_min=1, upload_max=1)).profile
    plan = strategy.plan_node(3, profile, 1)
    knobs = plan.knobs_as(CoCoFLKnobs)
    assert knobs.choice == "round-robin" and knobs.force_window == (1, 2)
    assert knobs.windows_at_upload_max == ["1-2"]


def test_profile_costs_cli_writes_a_table(tmp_path: Path) -> None:
    from fedhet.cli import main

    out = tmp_path / "cnn_b-b8-analytic.json"
    assert (
        main(
            [
                "profile-costs",
                "--model",
                "cnn_b",
                "--batch-size",
                "8",
                "--generator",
                "analytic",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["meta"]["model"] == "cnn_b" and len(doc["rows"]) == 21


def test_real_int8_switch_changes_only_windows_with_a_front() -> None:
    """``cocofl.real-int8`` reaches the device: a window with units before it (medium, weak)
    trains on different activations (real int8 kernels vs fake quantisation), so its loss and
    upload differ; a window starting at unit 0 (strong, full model) has no front and is
    bit-identical (issue 14 asked whether the switch works at all)."""
    runs = {}
    for real in (True, False):
        _, _, history, replies = run_grid(
            run_config(num_server_rounds=1, **{"cocofl.real-int8": real})
        )
        runs[real] = (history[0]["nodes"], replies)
    nodes = {n["node-id"]: n for n in runs[True][0]}
    fronted = 0
    for node_id, reply in runs[True][1].items():
        other = runs[False][1][node_id]
        a = reply.content.array_records["arrays"]
        b = other.content.array_records["arrays"]
        same = all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
        start = int(reply.content.metric_records["metrics"]["window-start"])
        if start == 0:
            assert same, nodes[node_id]
        else:
            fronted += 1
            assert not same, nodes[node_id]
    assert fronted >= 2  # the three-tier fleet gives medium/weak devices windows after unit 0
