"""pFedAFM (arXiv 2404.17847; METHODS.md §5) and its Standalone baseline.

Unit tests of the mixture and its two stages on small tensors, then end-to-end runs through the
real ClientApp handlers on real Flower Messages (:class:`fedhet.sim.LocalGrid`, sklearn digits).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from torch import nn

from fedhet.client.runtime import ClientContext
from fedhet.config import ConfigError
from fedhet.methods import parse_run_config
from fedhet.methods.pfedafm import client as afm_client
from fedhet.methods.pfedafm import wire
from fedhet.methods.pfedafm.mixture import (
    FeatureMixture,
    StageSettings,
    evaluate_mixture,
    train_round,
    train_stage1,
    train_stage2,
)
from fedhet.methods.pfedafm.plan import PfedafmKnobs, plan_knobs
from fedhet.methods.pfedafm.strategy import PfedafmStrategy
from fedhet.models.afm import (
    afm_arch_params,
    afm_extractor_params,
    build_afm,
    build_extractor,
    choose_arch,
)
from fedhet.models.cnn import AFM_ARCHS, AFMExtractor
from fedhet.plan import CLASS_BUDGETS, Budget, NodePlan, PlanError
from tests.methods.helpers import make, tiny_config

G_PARAMS = 520_248


# --- models and plans ---------------------------------------------------------------------------
def test_family_parameter_counts_match_methods_section_8() -> None:
    counts = {a: sum(p.numel() for p in build_afm(a).parameters()) for a in AFM_ARCHS}
    assert counts == {a: afm_arch_params(a) for a in AFM_ARCHS}
    # METHODS.md §8: 2.04 / 1.53 / 1.03 / 0.83 / 0.53 M; G = CNN-5 extractor, 520,248
    assert [round(c / 1e6, 2) for c in counts.values()] == [2.04, 1.53, 1.03, 0.83, 0.53]
    assert sum(p.numel() for p in build_extractor("afm_cnn5").parameters()) == G_PARAMS
    assert afm_extractor_params("afm_cnn5") == G_PARAMS


def test_budget_rule_gives_the_standard_fleet_three_architectures() -> None:
    arch = {c: choose_arch(t, m).arch for c, (t, m, _, _) in CLASS_BUDGETS.items()}
    assert arch == {"strong": "afm_cnn1", "medium": "afm_cnn3", "weak": "afm_cnn5"}
    assert choose_arch(0.75, 1.0).arch == "afm_cnn2"  # 0.746 of CNN-1 fits 0.75
    assert choose_arch(1.0, 0.5).arch == "afm_cnn4"  # memory limits: 0.505 > 0.5
    assert choose_arch(0.1, 1.0).arch == "afm_cnn5"  # slow but can hold it: smallest
    assert choose_arch(1.0, 1.0, declared="afm_cnn4").arch == "afm_cnn4"  # declared wins
    assert [choose_arch(1, 1, assignment="index", index=i).arch for i in range(6)] == [
        *AFM_ARCHS,
        "afm_cnn1",
    ]
    nothing = choose_arch(1.0, 0.2)
    assert nothing.arch is None and "memory" in nothing.reason
    with pytest.raises(ValueError, match="afm_cnn9"):
        choose_arch(1.0, 1.0, declared="afm_cnn9")


def test_unknown_architecture_in_a_plan_is_a_clear_error() -> None:
    knobs = plan_knobs("budget", 1, 1, index=0, declared=None)
    plan = NodePlan(
        node_id=1,
        device_id="d",
        device_class="strong",
        budget=Budget(time=1, memory=1, upload_min=1, upload_max=1),
        knobs=knobs.model_dump(by_alias=True),
    )
    assert plan.knobs_as(PfedafmKnobs).arch == "afm_cnn1"
    bad = plan.model_copy(update={"knobs": {"arch": "resnet9", "rule": "declared"}})
    with pytest.raises(PlanError, match=r"PfedafmKnobs.*'resnet9'.*afm_cnn1"):
        bad.knobs_as(PfedafmKnobs)


# --- the mixture ----------------------------------------------------------------------------
def _mixture(seed: int = 0, **kw: Any) -> FeatureMixture:
    torch.manual_seed(seed)
    local = build_afm("afm_cnn5")
    return FeatureMixture(local.extractor, local.header, build_extractor("afm_cnn5"), **kw)


def _batches(n: int = 3, seed: int = 1, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 1, 28, 28, generator=gen), torch.randint(0, 10, (size,), generator=gen))
        for _ in range(n)
    ]


def _params(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_alpha_starts_at_one_and_weights_local_features() -> None:
    mix = _mixture()
    assert mix.alpha.shape == (500,) and bool((mix.alpha == 1).all())
    x = torch.randn(4, 1, 28, 28)
    # α = 1: purely local; α = 0: purely G
    assert torch.allclose(mix(x), mix.header(mix.local_extractor(x)))
    with torch.no_grad():
        mix.alpha.zero_()
    assert torch.allclose(mix(x), mix.forward_g(x))


def test_alpha_clipped_to_unit_interval_before_and_after_every_step() -> None:
    mix = _mixture()
    with torch.no_grad():
        mix.alpha.copy_(torch.linspace(-2.0, 3.0, 500))  # outside [0, 1] before the first step
    seen: list[tuple[float, float]] = []
    original = mix.forward

    def spy(x: torch.Tensor) -> torch.Tensor:  # α as the forward pass of each step sees it
        seen.append((float(mix.alpha.detach().min()), float(mix.alpha.detach().max())))
        return original(x)

    mix.forward = spy  # type: ignore[method-assign]
    train_stage1(mix, _batches(4), StageSettings(lr_alpha=50.0))  # huge steps push α out
    assert len(seen) == 4 and all(lo >= 0.0 and hi <= 1.0 for lo, hi in seen)
    assert float(mix.alpha.detach().min()) >= 0.0 and float(mix.alpha.detach().max()) <= 1.0


def test_stage1_trains_omega_and_alpha_with_separate_optimisers_g_frozen() -> None:
    mix = _mixture(alpha_init=0.5)
    g0, w0, a0 = _params(mix.g_parameters()), _params(mix.local_parameters()), mix.alpha.clone()
    train_stage1(mix, _batches(), StageSettings(lr=0.05, lr_alpha=1e-12, weight_decay=0.0))
    assert _same(g0, _params(mix.g_parameters()))  # θ frozen in stage 1
    assert not _same(w0, _params(mix.local_parameters()))
    assert torch.allclose(mix.alpha, a0, atol=1e-9)  # α follows its own (tiny) lr
    mix = _mixture(alpha_init=0.5)
    w0 = _params(mix.local_parameters())
    train_stage1(mix, _batches(), StageSettings(lr=1e-12, lr_alpha=1.0, weight_decay=0.0))
    assert not torch.allclose(mix.alpha, a0)
    assert all(
        torch.allclose(a, b, atol=1e-9) for a, b in zip(w0, mix.local_parameters(), strict=True)
    )


def test_stage1_clips_omega_gradient_norm() -> None:
    mix = _mixture()
    w0 = torch.cat([p.detach().flatten() for p in mix.local_parameters()])
    clip, lr = 1e-3, 1.0
    train_stage1(
        mix,
        _batches(1),
        StageSettings(lr=lr, momentum=0.0, weight_decay=0.0, grad_clip=clip, train_alpha=False),
    )
    w1 = torch.cat([p.detach().flatten() for p in mix.local_parameters()])
    assert float((w1 - w0).norm()) <= lr * clip * 1.001  # one step: ‖Δω‖ = lr·‖clipped grad‖


def test_stage2_trains_g_through_frozen_local_header_with_pure_g_features() -> None:
    s = StageSettings(lr=0.1, weight_decay=0.0)
    mix = _mixture()  # α = 1: the mixture would give G no gradient at all
    w0, g0 = _params(mix.local_parameters()), _params(mix.g_parameters())
    train_stage2(mix, _batches(), s)
    assert _same(w0, _params(mix.local_parameters()))  # header and f_k frozen
    assert bool((mix.alpha == 1).all())
    assert not _same(g0, _params(mix.g_parameters()))  # trained through h_k(G(x)), α unused
    mix = _mixture()
    g0 = _params(mix.g_parameters())
    train_stage2(mix, _batches(), StageSettings(lr=0.1, weight_decay=0.0, stage2="mixture"))
    assert _same(g0, _params(mix.g_parameters()))  # through R with α = 1: zero gradient


def test_nonfinite_alpha_is_reset_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    mix = _mixture(alpha_init=1.0)
    with torch.no_grad():
        mix.alpha[3] = float("nan")
    with caplog.at_level(logging.WARNING, logger="fedhet.pfedafm"):
        metrics = train_round(mix, _batches(2), _batches(2, seed=2), StageSettings())
    assert metrics["alpha-resets"] == 1.0
    assert bool(torch.isfinite(mix.alpha).all())
    assert "non-finite" in caplog.text


def test_feature_dim_mismatch_errors_unless_projection() -> None:
    local = AFMExtractor(32, 500, feat=300)
    g = build_extractor("afm_cnn5")
    with pytest.raises(ValueError, match=r"300.*500.*pfedafm.projection"):
        FeatureMixture(local, nn.Linear(300, 10), g)
    mix = FeatureMixture(local, nn.Linear(300, 10), g, projection=True)
    assert mix.alpha.shape == (300,)
    assert mix(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert any(p is mix.proj.weight for p in mix.local_parameters())  # per-device, not uploaded


def test_accuracy_is_correct_over_total_not_a_mean_of_batches() -> None:
    mix = _mixture()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        pred = mix(x).argmax(1)
    y = pred.clone()
    y[4] = (pred[4] + 1) % 10  # batches of 4 and 1: batch accuracies 1.0 and 0.0
    res = evaluate_mixture(mix, x, y, batch_size=4)
    assert (res.correct, res.total) == (4, 5) and res.accuracy == 0.8  # batch mean: 0.5


# --- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_tier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict], Path]:
    tmp = tmp_path_factory.mktemp("afm")
    strategy, grid = make("pfedafm", tmp)
    replies: list[Message] = []

    def capture(node_id: int, reply: Message) -> Message:
        replies.append(reply)
        return reply

    grid.corrupt = capture
    strategy.start(grid)
    history = strategy.history
    strategy.replies = replies
    return strategy, history, tmp / "t-pfedafm"


def test_three_tier_fleet_runs_at_least_two_architectures(three_tier: Any) -> None:
    _, _, run = three_tier
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        by_class = {n["device-class"]: n["arch"] for n in line["nodes"]}
        assert by_class == {"strong": "afm_cnn1", "medium": "afm_cnn3", "weak": "afm_cnn5"}
        for n in line["nodes"]:
            assert 0.0 <= n["alpha-mean"] <= 1.0
            assert len(n["alpha-hist"]) == wire.ALPHA_BINS and sum(n["alpha-hist"]) == 500
            assert 0.0 <= n["eval-g-accuracy"] <= 1.0
        accs = [n["eval-accuracy"] for n in line["nodes"]]
        assert line["eval-accuracy"] == pytest.approx(sum(accs) / len(accs))  # mean of devices
        assert {"alpha-mean", "eval-g-accuracy", "eval-accuracy-afm_cnn1"} <= set(line)
    plans = [json.loads(x) for x in (run / "plans.jsonl").read_text().splitlines()]
    assert len({p["knobs"]["arch"] for p in plans}) >= 2


def test_only_g_travels(three_tier: Any) -> None:
    strategy, history, _ = three_tier
    g_names = set(build_extractor("afm_cnn5").state_dict())
    assert set(strategy.global_arrays) == g_names  # no classifier in G
    assert sum(v.size for v in strategy.global_arrays.values()) == G_PARAMS
    for h in history:
        for n in h["nodes"]:
            assert n["status"] == "trained"
            # G's fp32 buffers plus the record's names/shapes (< 2 kB); a header (500x10+10
            # params, 20 kB) or any local tensor would not fit in that slack
            assert 4 * G_PARAMS <= n["payload-bytes-up"] < 4 * G_PARAMS + 2_000
            assert 4 * G_PARAMS <= n["train-payload-bytes-down"] < 4 * G_PARAMS + 2_000
    trained = [r for r in strategy.replies if r.metadata.message_type == MessageType.TRAIN]
    assert trained and all(set(r.content.array_records["arrays"]) == g_names for r in trained)
    evals = [r for r in strategy.replies if r.metadata.message_type == MessageType.EVALUATE]
    assert evals and all(not len(r.content.array_records.get("arrays", [])) for r in evals)


def _ctx(raw: dict[str, Any], partition: int, num: int = 6) -> ClientContext:
    context = Context(
        run_id=1,
        node_id=1000 + partition,
        node_config={"partition-id": partition, "num-partitions": num},
        state=RecordDict(),
        run_config=raw,
    )
    return ClientContext.from_context(context)


def _train_msg(
    ctx: ClientContext, server_round: int, g: dict[str, np.ndarray], arch: str
) -> Message:
    plan = NodePlan(
        node_id=ctx.context.node_id,
        device_id=ctx.device_id,
        device_class="strong",
        budget=Budget(time=1, memory=1, upload_min=1, upload_max=1),
        knobs={"arch": arch, "rule": "declared", "infeasible": ""},
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict={k: torch.from_numpy(v) for k, v in g.items()}),
            "config": ConfigRecord(
                {"server-round": server_round, "device-id": ctx.device_id, "plan": plan.to_json()}
            ),
        }
    )
    return Message(content, dst_node_id=ctx.context.node_id, message_type=MessageType.TRAIN)


def _own_state(ctx: ClientContext) -> dict[str, np.ndarray]:
    rec = ctx.context.state.array_records[wire.STATE_KEY]
    return {k: v.numpy().copy() for k, v in rec.items()}


def test_devices_trained_in_alternation_keep_their_own_alpha_and_state(tmp_path: Path) -> None:
    """The official code's defect (METHODS.md §5.7 items 1–2) cannot occur: A's state after
    A, B, A equals A's state after A, A alone, bit for bit, and B's α is its own."""
    torch.set_num_threads(1)
    raw = tiny_config("pfedafm", tmp_path, **{"pfedafm.lr-alpha": 0.5, "pfedafm.alpha-init": 0.9})
    g = {k: v.numpy() for k, v in build_extractor("afm_cnn5").state_dict().items()}
    a, b, solo = _ctx(raw, 0), _ctx(raw, 3), _ctx(raw, 0)
    afm_client.train(_train_msg(a, 1, g, "afm_cnn1"), a)
    afm_client.train(_train_msg(b, 1, g, "afm_cnn5"), b)
    afm_client.train(_train_msg(a, 2, g, "afm_cnn1"), a)
    afm_client.train(_train_msg(solo, 1, g, "afm_cnn1"), solo)
    afm_client.train(_train_msg(solo, 2, g, "afm_cnn1"), solo)
    sa, sb, ss = _own_state(a), _own_state(b), _own_state(solo)
    assert set(sa) == set(ss) and all(np.array_equal(sa[k], ss[k]) for k in sa)
    assert not np.array_equal(sa["alpha"], sb["alpha"])
    assert float(sa["alpha"].mean()) < 0.9 or float(sb["alpha"].mean()) < 0.9  # α did learn
    assert not any(k.startswith("g.") for k in sa)  # G is not kept: it comes from the server
    # nothing but ω_k, α_k and the architecture is kept: no optimiser state exists to leak
    assert set(a.context.state.array_records) == {wire.STATE_KEY}
    assert dict(a.context.state.config_records[wire.STATE_META]) == {"arch": "afm_cnn1"}


def test_nonfinite_alpha_in_device_state_is_reset(tmp_path: Path) -> None:
    raw = tiny_config("pfedafm", tmp_path)
    g = {k: v.numpy() for k, v in build_extractor("afm_cnn5").state_dict().items()}
    ctx = _ctx(raw, 1)
    afm_client.train(_train_msg(ctx, 1, g, "afm_cnn5"), ctx)
    state = ctx.context.state.array_records[wire.STATE_KEY].to_torch_state_dict()
    state["alpha"][:] = float("inf")
    ctx.context.state[wire.STATE_KEY] = ArrayRecord(torch_state_dict=dict(state))
    reply = afm_client.train(_train_msg(ctx, 2, g, "afm_cnn5"), ctx)
    metrics = dict(reply.metric_records["metrics"])
    assert metrics["alpha-resets"] == 1.0 and 0.0 <= metrics["alpha-mean"] <= 1.0


def test_unknown_architecture_in_plan_fails_on_the_device(tmp_path: Path) -> None:
    ctx = _ctx(tiny_config("pfedafm", tmp_path), 0)
    g = {k: v.numpy() for k, v in build_extractor("afm_cnn5").state_dict().items()}
    with pytest.raises(PlanError, match="afm_cnn9"):
        afm_client.train(_train_msg(ctx, 1, g, "afm_cnn9"), ctx)


def test_device_whose_memory_fits_nothing_replies_infeasible(tmp_path: Path) -> None:
    strategy, grid = make("pfedafm", tmp_path, num_nodes=3, num_server_rounds=1)
    victim = sorted(grid.contexts)[2]
    grid.contexts[victim].node_config["mem-frac"] = 0.2
    strategy.start(grid)
    history = strategy.history
    node = next(n for n in history[0]["nodes"] if n["node-id"] == victim)
    assert node["status"] == "infeasible" and node["arch"] is None
    assert history[0]["num-trained"] == 2 and not history[0]["dropped"]


def test_declared_arch_wins_and_unknown_declared_arch_is_left_out(tmp_path: Path) -> None:
    strategy, grid = make("pfedafm", tmp_path, num_nodes=3, num_server_rounds=1)
    ids = sorted(grid.contexts)
    grid.contexts[ids[0]].node_config["arch"] = "afm_cnn2"
    grid.contexts[ids[1]].node_config["arch"] = "vgg16"
    strategy.start(grid)
    history = strategy.history
    by_id = {n["node-id"]: n for n in history[0]["nodes"]}
    assert by_id[ids[0]]["arch"] == "afm_cnn2"
    assert ids[1] not in by_id  # never sampled
    assert "vgg16" in strategy.nodes[ids[1]].plan.reason


def test_model_outside_the_family_is_a_config_error(tmp_path: Path) -> None:
    raw = tiny_config("pfedafm", tmp_path, model="cnn_s")
    with pytest.raises(ConfigError, match=r"model.*cnn_s.*pfedafm.*afm_cnn5"):
        parse_run_config(raw)
    cfg = parse_run_config(tiny_config("pfedafm", tmp_path))
    assert cfg.shared.model == "afm_cnn5"  # 'auto' → the registry's default (G = CNN-5)
    cfg = cfg.model_copy(update={"shared": cfg.shared.model_copy(update={"model": "cnn_s"})})
    with pytest.raises(ConfigError, match=r"'model' = 'cnn_s'.*pfedafm"):
        PfedafmStrategy(cfg)  # the strategy checks too, for configs built by hand


def test_standalone_sends_no_parameters_and_keeps_its_model(tmp_path: Path) -> None:
    strategy, grid = make("standalone", tmp_path, num_nodes=3)
    strategy.start(grid)
    history = strategy.history
    for h in history:
        assert h["payload-bytes-up"] == 0 and h["payload-bytes-down"] == 0
        assert {n["arch"] for n in h["nodes"]} == {"afm_cnn1", "afm_cnn3", "afm_cnn5"}
    ctx = grid.contexts[sorted(grid.contexts)[0]]
    assert "standalone-local" in ctx.state.array_records  # the model stays on the device


def test_fedavg_baseline_on_cnn5_runs(tmp_path: Path) -> None:
    """The FedAvg row of §5.6: the existing ``fedavg`` on ``afm_cnn5`` (every device holds it)."""
    strategy, grid = make("fedavg", tmp_path, num_nodes=3, num_server_rounds=1, model="afm_cnn5")
    strategy.start(grid)
    history = strategy.history
    assert history[0]["num-trained"] == 3
    assert sum(v.size for v in strategy.global_arrays.values()) == afm_arch_params("afm_cnn5")
