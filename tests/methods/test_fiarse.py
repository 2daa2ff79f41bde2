"""FIARSE method tests (METHODS.md §7): sizes, thresholds, surrogate gradient, payloads, holders.

End-to-end tests run the real ClientApp handlers on real Flower Messages through
:class:`fedhet.sim.LocalGrid` on sklearn digits (4 devices, one per size, tiny settings).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType

from fedhet.core.codec import VALUES
from fedhet.core.masks import SurrogateMask, magnitude_thresholds, submodel_mask_spec
from fedhet.methods import get_method, parse_run_config
from fedhet.methods.fiarse.plan import FiarseKnobs
from fedhet.methods.fiarse.strategy import FiarseStrategy
from fedhet.methods.fiarse.wire import THRESHOLDS_KEY
from fedhet.models import build_model
from fedhet.plan import Budget, NodePlan
from fedhet.profile import DeviceProfile
from fedhet.server.strategy import Node, Reply
from fedhet.sim import LocalGrid, simulated_node_configs
from fedhet.sizes import equal_group_size, parse_size_ladder, size_from_ladder
from tests.methods.helpers import assert_majority_shares, sized_run_config

LADDER = (1 / 64, 1 / 16, 1 / 4, 1.0)
D_CNN_S = 421_642


def run_config(method: str = "fiarse", **extra: Any) -> dict[str, Any]:
    return sized_run_config(method, **extra)


def run_grid(
    raw: dict[str, Any], rounds: int = 2, corrupt: Any = None
) -> tuple[Any, LocalGrid, list[dict[str, Any]], list[Message]]:
    """Run ``rounds`` rounds on 4 digits devices; returns (strategy, grid, history, replies)."""
    from client_app.app import app

    torch.set_num_threads(1)
    raw = {**raw, "num-server-rounds": rounds}
    cfg = parse_run_config(raw)
    grid = LocalGrid(app, simulated_node_configs(4), raw)
    replies: list[Message] = []

    def capture(node_id: int, reply: Message) -> Message | None:
        if corrupt is not None:
            reply = corrupt(node_id, reply)
        replies.append(reply)
        return reply

    grid.corrupt = capture
    strategy = get_method(raw["method"]).strategy_cls(cfg, None)
    strategy.start(grid)
    history = strategy.history
    return strategy, grid, history, replies


@pytest.fixture(scope="module")
def fiarse_run() -> tuple[FiarseStrategy, LocalGrid, list[dict[str, Any]], list[Message]]:
    return run_grid(run_config())


def _node(device_id: str, gamma: float, node_id: int = 1) -> Node:
    profile = DeviceProfile(
        device_id=device_id, device_class="strong", cores=1, mem_total_bytes=1, mem_avail_bytes=1
    )
    budget = Budget(time=1, memory=1, upload_min=1, upload_max=1)
    plan = NodePlan(
        node_id=node_id,
        device_id=device_id,
        device_class="strong",
        budget=budget,
        knobs={"gamma": gamma},
    )
    return Node(node_id, profile, plan)


# --- sizes ------------------------------------------------------------------------------------
def test_ladder_parsing_and_size_rules() -> None:
    assert parse_size_ladder("1, 1/4,0.0625,1/64") == LADDER
    with pytest.raises(ValueError):
        parse_size_ladder("0.5,1.5")
    assert size_from_ladder(LADDER, 1.0) == 1.0
    assert size_from_ladder(LADDER, 0.5) == 0.25  # medium class (D_min = 0.5)
    assert size_from_ladder(LADDER, 0.33) == 0.25
    assert size_from_ladder(LADDER, 0.001) == 1 / 64  # nothing fits: smallest
    assert [equal_group_size(LADDER, i, 20) for i in range(20)] == [
        s for s in LADDER for _ in range(5)
    ]


def test_plan_declared_gamma_wins_and_budget_rule() -> None:
    cfg = parse_run_config(run_config(**{"fiarse.size-assignment": "plan"}))
    strategy = FiarseStrategy(cfg)
    weak = DeviceProfile(
        device_id="w", device_class="weak", cores=1, mem_total_bytes=1, mem_avail_bytes=1
    )
    budget = Budget(time=0.33, memory=0.33, upload_min=0.5, upload_max=1)
    assert strategy.device_size(weak, budget) == (0.25, "budget")
    cfg = parse_run_config(run_config(**{"fiarse.gamma": 0.0625}))
    assert FiarseStrategy(cfg).device_size(weak, budget) == (0.0625, "declared")


# --- thresholds -------------------------------------------------------------------------------
def _hand_state() -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in build_model("cnn_s").state_dict().items()}
    # conv2: magnitudes 1..n (large); fc1: magnitudes 1e-6 * (1..m) < 0.5 (a wide, small FC layer)
    for name, scale in (("conv2", 1.0), ("fc1", 1e-6)):
        for part in ("weight", "bias"):
            t = state[f"{name}.{part}"]
            state[f"{name}.{part}"] = scale * torch.arange(
                1, t.numel() + 1, dtype=torch.float32
            ).reshape(t.shape)
    return state


def test_layerwise_thresholds_keep_gamma_prime_of_each_layer() -> None:
    state = _hand_state()
    maskable, dense, groups = submodel_mask_spec(build_model("cnn_s"))
    d_dense = sum(state[n].numel() for n in dense)
    gamma = 0.25
    g_eff = (gamma * D_CNN_S - d_dense) / (D_CNN_S - d_dense)
    tau = magnitude_thresholds(state, gamma, maskable, "groups", groups, dense)
    for layer, scale in (("conv2", 1.0), ("fc1", 1e-6)):
        d = state[f"{layer}.weight"].numel() + state[f"{layer}.bias"].numel()
        n_w = state[f"{layer}.weight"].numel()
        k = math.floor(g_eff * d)
        # weight magnitudes scale*(1..n_w), bias scale*(1..n_b) with n_b << k: the k-th largest
        # of the pooled layer is the weight scale*(n_w - k + 1); the bias shares the layer's τ
        assert tau[f"{layer}.weight"] == pytest.approx(scale * (n_w - k + 1), rel=1e-5)
        assert tau[f"{layer}.bias"] == tau[f"{layer}.weight"]
    assert all(tau[n] == 0.0 for n in dense)


def test_global_threshold_starves_small_magnitude_layer() -> None:
    """One τ over all maskable tensors keeps none of the small-magnitude FC layer (§7.4 'why')."""
    raw = run_config(**{"fiarse.scope": "global"})
    strategy = FiarseStrategy(parse_run_config(raw))
    strategy.global_arrays = {k: v.numpy() for k, v in _hand_state().items()}
    tau, masks = strategy.submodel(1 / 64)  # keeps ~4,978 maskable entries < conv2's 18,496
    assert len(set(tau.values())) == 1
    assert masks["fc1.weight"].sum() == 0 and masks["conv2.weight"].sum() > 0
    raw = run_config(**{"fiarse.scope": "groups"})
    strategy = FiarseStrategy(parse_run_config(raw))
    strategy.global_arrays = {k: v.numpy() for k, v in _hand_state().items()}
    _, masks = strategy.submodel(1 / 64)
    assert masks["fc1.weight"].sum() > 0 and masks["conv2.weight"].sum() > 0


# --- surrogate gradient -----------------------------------------------------------------------
def test_surrogate_gradient_matches_formula_by_finite_differences() -> None:
    """∂L/∂x = ∂L/∂x̃ · m · (1 + x·s'(x)), s(x) = (|x| − τ)/(|x| + τ), s' by central differences."""
    tau = 0.7
    x = torch.tensor(
        [-2.0, -0.7, -0.3, 0.0, 0.5, 0.7, 0.71, 1.4, 9.0], dtype=torch.float64, requires_grad=True
    )
    upstream = torch.linspace(0.5, 1.5, x.numel(), dtype=torch.float64)
    (SurrogateMask.apply(x, tau, "biased") * upstream).sum().backward()
    assert x.grad is not None

    def s(v: torch.Tensor) -> torch.Tensor:
        return (v.abs() - tau) / (v.abs() + tau)

    h = 1e-6
    xd = x.detach()
    ds = (s(xd + h) - s(xd - h)) / (2 * h)
    kept = (xd.abs() >= tau).double()
    expected = upstream * kept * (1 + xd * ds)
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-8)
    assert x.grad[1] == pytest.approx(1.5 * float(upstream[1]))  # |x| = τ: factor 1.5
    assert x.grad[2] == 0 and x.grad[3] == 0


# --- end to end -------------------------------------------------------------------------------
def test_two_rounds_update_model_and_log_per_size_metrics(fiarse_run: Any) -> None:
    strategy, _, history, _ = fiarse_run
    assert [h["round"] for h in history] == [1, 2]
    init = FiarseStrategy(parse_run_config(run_config())).global_arrays
    assert any(not np.array_equal(init[k], v) for k, v in strategy.global_arrays.items())
    for h in history:
        assert h["num-trained"] == 4 and not h["dropped"]
        sizes = [h[f"server-accuracy-g{g:g}"] for g in LADDER]
        assert h["server-accuracy"] == pytest.approx(np.mean(sizes))
        model = [h[f"model-accuracy-g{g:g}"] for g in LADDER]
        assert h["local-accuracy"] == pytest.approx(np.mean(model))  # one device per size
        assert h["train-bytes-up"] > 0 and h["train-bytes-down"] > h["train-bytes-up"]
        gammas = sorted(n["fiarse-gamma"] for n in h["nodes"])
        assert gammas == list(LADDER)
    assert_majority_shares(history, LADDER, num_classes=10)  # digits: 10 classes


def test_ledger_bytes_scale_with_gamma(fiarse_run: Any) -> None:
    _, _, history, _ = fiarse_run
    nodes = sorted(history[0]["nodes"], key=lambda n: n["fiarse-gamma"])
    full_up = 4 * D_CNN_S
    for n in nodes:
        assert n["fiarse-density"] == pytest.approx(n["fiarse-gamma"], rel=1e-3)
        assert n["payload-bytes-up"] / full_up == pytest.approx(n["fiarse-gamma"], rel=0.06)
    ups = [n["payload-bytes-up"] for n in nodes]
    assert ups == sorted(ups) and ups[-1] > 50 * ups[0]


def test_payload_bytes_match_the_formula(fiarse_run: Any) -> None:
    """Down: 4·kept + Σ⌈d_t/8⌉ + 4·d_dense; up: 4·kept + 4·d_dense (METHODS.md §7.3)."""
    strategy, grid, _, replies = fiarse_run
    maskable, dense = strategy.maskable, strategy.dense
    shapes = strategy.shapes
    d_dense = sum(int(np.prod(shapes[n])) for n in dense)
    bitmask = sum(-(-int(np.prod(shapes[n])) // 8) for n in maskable)
    train_msgs = {
        m.metadata.message_id: m
        for m in grid.sent_log
        if m.metadata.message_type == MessageType.TRAIN
    }
    checked = 0
    for reply in replies:
        sent = train_msgs.get(reply.metadata.reply_to_message_id)
        if sent is None:
            continue
        down = sent.content.array_records["arrays"]
        up = reply.content.array_records["arrays"]
        kept = sum(int(np.unpackbits(down[f"{n}::bitmask"].numpy()).sum()) for n in maskable)
        assert sum(a.numpy().nbytes for a in down.values()) == 4 * kept + bitmask + 4 * d_dense
        assert sum(a.numpy().nbytes for a in up.values()) == 4 * kept + 4 * d_dense
        assert sorted(up.keys()) == sorted([f"{n}{VALUES}" for n in maskable] + dense)
        checked += 1
    assert checked == 8


def test_smallest_device_reply_is_about_one_64th_of_dense(fiarse_run: Any) -> None:
    """The γ=1/64 reply, measured from the real ArrayRecord, vs a dense cnn_s ArrayRecord."""
    _, grid, _, replies = fiarse_run
    train_msgs = {
        m.metadata.message_id: m
        for m in grid.sent_log
        if m.metadata.message_type == MessageType.TRAIN
    }
    dense = ArrayRecord(
        array_dict={k: Array(v.numpy()) for k, v in build_model("cnn_s").state_dict().items()}
    )
    small = [
        r
        for r in replies
        if r.metadata.reply_to_message_id in train_msgs
        and NodePlan.from_json(
            str(train_msgs[r.metadata.reply_to_message_id].content.config_records["config"]["plan"])
        )
        .knobs_as(FiarseKnobs)
        .gamma
        == 1 / 64
    ]
    assert len(small) == 2
    for reply in small:
        ratio = reply.content.array_records["arrays"].count_bytes() / dense.count_bytes()
        assert 1 / 64 <= ratio <= 1.1 / 64, ratio
        # the download carries the mask on top: values + bitmask of the masked tensors
        down = train_msgs[reply.metadata.reply_to_message_id].content.array_records["arrays"]
        assert ratio < down.count_bytes() / dense.count_bytes() < 1 / 64 + 1 / 32 + 0.002


def test_thresholds_travel_in_config_and_client_mask_matches_server(fiarse_run: Any) -> None:
    """Every round-1 download, decoded by the client's own code, gives element-wise the mask the
    server computes for that device's size on the initial global model (a fresh strategy of the
    same config), and the τ the server computed."""
    from types import SimpleNamespace

    from fedhet.methods.fiarse.client import receive_submodel

    strategy, grid, _, _ = fiarse_run
    fresh = FiarseStrategy(parse_run_config(run_config()))
    ctx = SimpleNamespace(run=SimpleNamespace(shared=SimpleNamespace(model="cnn_s")))
    msgs = [
        m
        for m in grid.sent_log
        if m.metadata.message_type == MessageType.TRAIN
        and int(m.content.config_records["config"]["server-round"]) == 1
    ]
    assert len(msgs) == 4
    gammas = set()
    for msg in msgs:
        tau = json.loads(str(msg.content.config_records["config"][THRESHOLDS_KEY]))
        assert sorted(tau) == sorted(strategy.maskable)
        plan = NodePlan.from_json(str(msg.content.config_records["config"]["plan"]))
        gamma = plan.knobs_as(FiarseKnobs).gamma
        gammas.add(gamma)
        server_tau, server_masks = fresh.submodel(gamma)
        _, _, client_masks, client_tau = receive_submodel(msg, ctx, 10)  # type: ignore[arg-type]
        assert client_tau == pytest.approx(server_tau)
        for name in strategy.maskable:
            assert np.array_equal(client_masks[name], server_masks[name]), (gamma, name)
        kept = sum(int(client_masks[n].sum()) for n in strategy.maskable)
        assert kept > 0  # a real submodel, not an empty one
    assert len(gammas) == 4  # one device per ladder size


# --- aggregation ------------------------------------------------------------------------------
def test_holder_mean_and_unheld_coordinates_unchanged() -> None:
    strategy = FiarseStrategy(parse_run_config(run_config()))
    base = {k: v.copy() for k, v in strategy.global_arrays.items()}
    a, b = _node("a", 0.25, 1), _node("b", 0.25, 2)
    name = "fc1.weight"
    shape = strategy.shapes[name]
    mask_a = np.zeros(shape, bool)
    mask_b = np.zeros(shape, bool)
    mask_a.flat[[0, 1]] = True  # 0: both hold it, 1: only a, 2: nobody
    mask_b.flat[[0, 3]] = True
    masks: dict[str, dict[str, np.ndarray]] = {}
    replies = []
    for node, mask, upd in ((a, mask_a, 1.0), (b, mask_b, 3.0)):
        node_masks = {n: np.zeros(strategy.shapes[n], bool) for n in strategy.maskable}
        node_masks[name] = mask
        masks[node.device_id] = node_masks
        arrays = {
            f"{n}{VALUES}": np.full(int(m.sum()), upd, np.float32) for n, m in node_masks.items()
        }
        arrays.update({n: np.full(strategy.shapes[n], upd, np.float32) for n in strategy.dense})
        strategy._round_masks = masks
        strategy.validate_reply(node, 1, arrays, {})
        replies.append(Reply(node, arrays, {}, 10))
    strategy.aggregate(1, replies)
    new, old = strategy.global_arrays[name].reshape(-1), base[name].reshape(-1)
    assert new[0] == pytest.approx(old[0] + 2.0, abs=1e-6)  # mean of 1 and 3 over 2 holders
    assert new[1] == pytest.approx(old[1] + 1.0, abs=1e-6)  # a alone
    assert new[3] == pytest.approx(old[3] + 3.0, abs=1e-6)  # b alone
    assert new[2] == old[2]  # nobody held it: unchanged, bit for bit
    assert np.array_equal(strategy.global_arrays["conv2.weight"], base["conv2.weight"])
    np.testing.assert_allclose(
        strategy.global_arrays["conv1.weight"], base["conv1.weight"] + 2.0, atol=1e-6
    )


def test_reply_with_wrong_values_count_is_dropped() -> None:
    """One value short on fc1: the server's mask says otherwise, so the reply is dropped."""

    def truncate(node_id: int, reply: Message) -> Message:
        if node_id == 1000 and reply.metadata.message_type == MessageType.TRAIN:
            rec = reply.content.array_records["arrays"]
            rec["fc1.weight::values"] = Array(rec["fc1.weight::values"].numpy()[:-1].copy())
        return reply

    _, _, history, _ = run_grid(run_config(), rounds=1, corrupt=truncate)
    dropped = history[0]["dropped"]
    assert len(dropped) == 1 and dropped[0]["stage"] == "train"
    assert "values" in dropped[0]["reason"] and dropped[0]["device-id"] == "partition-0"
    assert history[0]["num-trained"] == 3


@pytest.mark.parametrize(("rule", "expected"), [("mask", 0.5), ("nonzero", 1.0)])
def test_holder_rule_mask_vs_nonzero(rule: str, expected: float) -> None:
    """Both devices hold coordinate 0, only a changed it: the official ``nonzero`` rule counts a
    alone (update 1), the ``mask`` rule averages over both holders (update 0.5)."""
    strategy = FiarseStrategy(parse_run_config(run_config(**{"fiarse.holders": rule})))
    base = strategy.global_arrays["fc1.bias"].copy()
    replies, masks = [], {}
    for node, upd in ((_node("a", 1.0, 1), 1.0), (_node("b", 1.0, 2), 0.0)):
        node_masks = {n: np.zeros(strategy.shapes[n], bool) for n in strategy.maskable}
        node_masks["fc1.bias"][0] = True
        masks[node.device_id] = node_masks
        arrays = {
            f"{n}{VALUES}": np.full(int(m.sum()), upd, np.float32) for n, m in node_masks.items()
        }
        arrays.update({n: np.zeros(strategy.shapes[n], np.float32) for n in strategy.dense})
        replies.append(Reply(node, arrays, {}, 10))
    strategy._round_masks = masks
    strategy.aggregate(1, replies)
    assert strategy.global_arrays["fc1.bias"][0] == pytest.approx(base[0] + expected, abs=1e-6)
