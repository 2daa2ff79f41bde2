"""HeteroFL (static) and FedRolex (rolling) width baselines (METHODS.md B12, §7.6).

End-to-end tests run the real ClientApp handlers through :class:`fedhet.sim.LocalGrid` on sklearn
digits with 4 devices and tiny settings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType

from fedhet.methods import get_method, parse_run_config
from fedhet.methods.width.client import has_norm_layers, label_mask, width_scaler
from fedhet.methods.width.plan import WidthKnobs
from fedhet.methods.width.strategy import WidthStrategy
from fedhet.models import build_model
from fedhet.plan import NodePlan
from fedhet.sim import LocalGrid, simulated_node_configs
from tests.methods.helpers import assert_majority_shares, sized_run_config

LADDER = (1 / 64, 1 / 16, 1 / 4, 1.0)


run_config = sized_run_config


def run_grid(
    raw: dict[str, Any], corrupt: Any = None
) -> tuple[WidthStrategy, LocalGrid, list[dict[str, Any]]]:
    from client_app.app import app

    torch.set_num_threads(1)
    grid = LocalGrid(app, simulated_node_configs(4), raw)
    grid.corrupt = corrupt
    strategy = get_method(raw["method"]).strategy_cls(parse_run_config(raw), None)
    strategy.start(grid)
    history = strategy.history
    return strategy, grid, history


@pytest.mark.parametrize("method", ["heterofl", "fedrolex"])
def test_two_rounds_with_per_size_metrics_and_offsets(method: str) -> None:
    _, _, history = run_grid(run_config(method))
    assert [h["num-trained"] for h in history] == [4, 4]
    for h in history:
        assert not h["dropped"]
        assert h["server-accuracy"] == pytest.approx(
            np.mean([h[f"server-accuracy-g{g:g}"] for g in LADDER])
        )
        assert set(h) >= {f"model-accuracy-g{g:g}" for g in LADDER} | {"local-accuracy"}
        betas = sorted(n["width-beta"] for n in h["nodes"])
        assert betas == pytest.approx([math.sqrt(g) for g in LADDER])
        ups = [n["payload-bytes-up"] for n in sorted(h["nodes"], key=lambda n: n["width-beta"])]
        assert ups == sorted(ups)
    assert_majority_shares(history, LADDER, num_classes=10)  # digits: 10 classes
    expected = {1: 0, 2: 1 if method == "fedrolex" else 0}
    offsets = [(h["round"], n["width-offset"]) for h in history for n in h["nodes"]]
    assert offsets and all(off == expected[rnd] for rnd, off in offsets)


def test_small_slice_payload_is_dense_and_about_gamma() -> None:
    _, _, history = run_grid(run_config("heterofl", **{"num-server-rounds": 1}))
    full = 4 * 421_642
    small = next(n for n in history[0]["nodes"] if n["width-beta"] == 0.125)
    # cnn_s at width 1/8: 40 + 296 + 6,288 + 170 = 6,794 parameters, sent dense
    width_model = build_model("cnn_s", width=0.125).state_dict()
    assert sum(v.numel() for v in width_model.values()) == 6794
    dense_slice = ArrayRecord(array_dict={k: Array(v.numpy()) for k, v in width_model.items()})
    assert small["train-payload-bytes-down"] == dense_slice.count_bytes()
    assert small["payload-bytes-up"] == pytest.approx(full / 64, rel=0.1)


@pytest.mark.parametrize("method", ["heterofl", "fedrolex"])
def test_unheld_coordinates_stay_unchanged(method: str) -> None:
    """All devices at γ = 1/64 (β = 1/8): units outside every slice keep their initial values;
    FedRolex's round-2 window (offset 1) leaves unit 0 unheld in that round."""
    raw = run_config(method, **{f"{method}.gamma": 1 / 64, f"{method}.ladder": "0.015625"})
    raw["num-server-rounds"] = 1
    strategy, _, _ = run_grid(raw)
    init = get_method(method).strategy_cls(parse_run_config(raw), None).global_arrays
    w1 = strategy.global_arrays["conv1.weight"]
    assert np.array_equal(w1[4:], init["conv1.weight"][4:])  # ⌈32/8⌉ = 4 units held
    assert not np.array_equal(w1[:4], init["conv1.weight"][:4])
    assert np.array_equal(strategy.global_arrays["fc2.weight"][:, 16:], init["fc2.weight"][:, 16:])
    if method == "fedrolex":
        after_round1 = {k: v.copy() for k, v in strategy.global_arrays.items()}
        strategy.current.extras.clear()
        from client_app.app import app

        raw2 = {**raw, "num-server-rounds": 2}
        strategy.shared = parse_run_config(raw2).shared
        grid = LocalGrid(app, simulated_node_configs(4), raw2)
        strategy.nodes.clear()
        strategy.run_round(grid, 2)
        w2 = strategy.global_arrays["conv1.weight"]
        assert np.array_equal(w2[0], after_round1["conv1.weight"][0])  # unit 0 not in (1..4)
        assert not np.array_equal(w2[4], after_round1["conv1.weight"][4])


def test_reply_with_wrong_shape_is_dropped() -> None:
    def bad(node_id: int, reply: Message) -> Message:
        if node_id == 1001 and reply.metadata.message_type == MessageType.TRAIN:
            rec = reply.content.array_records["arrays"]
            rec["fc1.weight"] = Array(rec["fc1.weight"].numpy()[:-1].copy())
        return reply

    raw = {**run_config("heterofl"), "num-server-rounds": 1}
    _, _, history = run_grid(raw, corrupt=bad)
    dropped = history[0]["dropped"]
    assert len(dropped) == 1 and "shape" in dropped[0]["reason"]
    assert dropped[0]["device-id"] == "partition-1"
    assert history[0]["num-trained"] == 3


def test_beta_reaches_the_device_only_in_its_plan() -> None:
    _, grid, history = run_grid({**run_config("fedrolex"), "num-server-rounds": 1})
    sent = [
        (m.metadata.message_type, dict(m.content.config_records["config"]))
        for m in grid.sent_log
        if m.metadata.message_type in (MessageType.TRAIN, MessageType.EVALUATE)
    ]
    assert sent and all("width-beta" not in c and "width-offset" not in c for _, c in sent)
    train = [c for kind, c in sent if kind == MessageType.TRAIN]
    betas = sorted(NodePlan.from_json(c["plan"]).knobs_as(WidthKnobs).beta for c in train)
    assert betas == pytest.approx([0.125, 0.25, 0.5, 1.0])
    # the server logs each node's plan in metrics.jsonl; devices echo nothing back
    for n in history[0]["nodes"]:
        assert n["plan"]["beta"] == pytest.approx(n["width-beta"])
        assert not any(k.startswith("plan-") for k in n)


def test_width_scaler_is_a_no_op_without_normalisation_layers() -> None:
    """cnn_s has no norm layer: scaling its slices by 1/β diverges at lr 0.1 (issue 14 run)."""
    torch.manual_seed(0)
    model = build_model("cnn_s", width=0.25)
    assert not has_norm_layers(model)
    x = torch.randn(2, 1, 28, 28)
    model.train()
    ref = model(x)
    with width_scaler(model, 0.25, enabled=True):
        torch.testing.assert_close(model(x), ref)


def test_width_scaler_hand_computed() -> None:
    """x = 1 through Linear(w=2, b=1) → BatchNorm → ReLU → Linear: the first layer's output 3
    becomes 3 / 0.5 = 6 in training with the scaler at β = 0.5 (seen right after the layer), is
    unchanged in eval, and the hook is gone afterwards."""
    model = torch.nn.Sequential(
        torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1), torch.nn.ReLU(), torch.nn.Linear(1, 1)
    )
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(1.0)
    assert has_norm_layers(model)
    x = torch.ones(2, 1)
    seen: list[float] = []
    with width_scaler(model, 0.5, enabled=True):
        model[0].register_forward_hook(lambda _m, _a, out: seen.append(float(out[0, 0])))
        model.train()
        model(x)
        model.eval()
        model(x)
    model.train()
    model(x)
    assert seen == pytest.approx([6.0, 3.0, 3.0])


def test_width_defaults_follow_the_papers() -> None:
    for method in ("heterofl", "fedrolex"):
        mcfg = parse_run_config(run_config(method)).method
        assert mcfg.width_scaler is True and mcfg.label_mask is True  # type: ignore[attr-defined]


def test_label_mask_hand_computed() -> None:
    """Logits (1, 2, 3), classes {0, 2} present, target 0: loss = −log(e¹ / (e¹ + e³)) =
    log(1 + e²); the absent class's row gets exactly zero gradient; eval logits are unmasked."""
    head = torch.nn.Linear(1, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
        head.bias.zero_()
    x = torch.ones(1, 1)
    with label_mask(head, [0, 2], enabled=True):
        head.train()
        logits = head(x)
        assert logits[0, 1].item() == float("-inf")
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
        assert loss.item() == pytest.approx(math.log(1 + math.e**2))
        loss.backward()
        assert head.weight.grad is not None
        assert head.weight.grad[1].abs().sum().item() == 0.0
        assert head.weight.grad[0].abs().sum().item() > 0
        head.eval()
        assert head(x)[0].tolist() == pytest.approx([1.0, 2.0, 3.0])


def _reply(device_id: str, arrays: dict[str, np.ndarray], classes: Any) -> Any:
    from types import SimpleNamespace

    from fedhet.server.strategy import Reply

    metrics = {"num-examples": 10, "train-loss": 1.0}
    if classes is not None:
        metrics["label-classes"] = classes
    return Reply(SimpleNamespace(device_id=device_id), arrays, metrics, 10)  # type: ignore[arg-type]


def test_label_mask_classifier_rows_averaged_over_class_holders() -> None:
    """Two full-width devices upload fc2 filled with 1 (classes {0, 1}) and 3 (classes {1, 2}):
    row 0 → 1, row 1 → (1 + 3) / 2 = 2, row 2 → 3, rows 3–9 keep their values; without the label
    mask every row would be 2."""
    from fedhet.core.width import width_indices
    from fedhet.server.validate import ReplyError

    strategy = get_method("heterofl").strategy_cls(parse_run_config(run_config("heterofl")), None)
    base = {k: v.copy() for k, v in strategy.global_arrays.items()}
    full = {k: torch.from_numpy(np.asarray(v)) for k, v in base.items()}
    idx = width_indices(full, "cnn_s", 1.0)
    strategy._round_indices = {"a": idx, "b": idx}
    ups = []
    for device, fill, classes in (("a", 1.0, [0, 1]), ("b", 3.0, [1, 2])):
        arrays = {k: v.copy() for k, v in base.items()}
        arrays["fc2.weight"] = np.full_like(base["fc2.weight"], fill)
        arrays["fc2.bias"] = np.full_like(base["fc2.bias"], fill)
        ups.append(_reply(device, arrays, classes))
    strategy.aggregate(1, ups)
    w, b = strategy.global_arrays["fc2.weight"], strategy.global_arrays["fc2.bias"]
    np.testing.assert_allclose(w[0], 1.0)
    np.testing.assert_allclose(w[1], 2.0)
    np.testing.assert_allclose(w[2], 3.0)
    np.testing.assert_array_equal(w[3:], base["fc2.weight"][3:])
    np.testing.assert_allclose(b[:3], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(b[3:], base["fc2.bias"][3:])
    np.testing.assert_array_equal(strategy.global_arrays["fc1.weight"], base["fc1.weight"])
    for bad in (None, [], [0, 10], [1, 1], [0.5]):
        with pytest.raises(ReplyError, match="label-classes"):
            strategy.reply_classes(_reply("a", {}, bad).metrics)
