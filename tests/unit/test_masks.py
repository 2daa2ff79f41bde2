"""Tests for fedhet.core.masks: B3 thresholds and budgets, B4 surrogate mask, FIARSE (§7)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from fedhet.core.masks import (
    SurrogateMask,
    apply_submodel_parametrization,
    cnn_s_mask_spec,
    effective_gamma,
    magnitude_thresholds,
    masked_weight,
    masks_from_thresholds,
    realised_density,
    remove_submodel_parametrization,
    select_layers_by_budget,
    topk_threshold,
    train_submodel,
)
from fedhet.models import build_model

# --- B3: topk_threshold -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gamma", "tau"),
    [(0.2, 0.5), (0.4, 0.5), (0.6, 0.3), (0.8, 0.2), (0.01, 0.5), (1.0, 0.0), (3.0, 0.0)],
)
def test_topk_threshold_hand_values(gamma: float, tau: float) -> None:
    scores = torch.tensor([0.1, 0.5, 0.3, 0.5, 0.2])
    assert topk_threshold(scores, gamma) == pytest.approx(tau)


def test_topk_threshold_ties_are_kept_downstream() -> None:
    scores = torch.tensor([0.1, 0.5, 0.3, 0.5, 0.2])
    tau = topk_threshold(scores, 0.2)  # k = 1, but two entries equal the top score
    assert int((scores >= tau).sum()) == 2


def test_topk_threshold_keeps_at_least_one() -> None:
    scores = torch.tensor([3.0, 1.0, 2.0])
    tau = topk_threshold(scores, 1e-6)  # floor(γ·d) = 0 -> k = 1
    assert tau == 3.0
    assert int((scores >= tau).sum()) == 1


def test_topk_threshold_floor_is_robust_to_binary_error() -> None:
    # 0.29 * 100 = 28.999999999999996 in binary; k must still be 29, i.e. τ = 71.
    assert topk_threshold(torch.arange(100.0), 0.29) == 71.0


def test_topk_threshold_pools_a_sequence() -> None:
    assert topk_threshold([torch.tensor([1.0, 9.0]), torch.tensor([[5.0, 7.0]])], 0.5) == 7.0


@pytest.mark.parametrize("gamma", [0.0, -0.5])
def test_topk_threshold_rejects_nonpositive_gamma(gamma: float) -> None:
    with pytest.raises(ValueError):
        topk_threshold(torch.ones(3), gamma)


# --- B3 / §7.2: magnitude_thresholds, global vs groups, budget with dense tensors ---------------


def _two_layer_state() -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.tensor([4.0, -3.0, 2.0, -1.0]),
        "a.bias": torch.tensor([5.0, -0.5]),
        "b.weight": torch.tensor([[40.0, -30.0], [20.0, -10.0]]),
    }


def test_global_scope_one_threshold_over_all_maskable() -> None:
    state = _two_layer_state()
    th = magnitude_thresholds(state, 0.5, list(state), scope="global")
    # 10 magnitudes {40,30,20,10,5,4,3,2,1,0.5}: k = 5 -> τ = 5
    assert th == {"a.weight": 5.0, "a.bias": 5.0, "b.weight": 5.0}
    masks = masks_from_thresholds(state, th)
    assert masks["a.weight"].tolist() == [False, False, False, False]
    assert masks["a.bias"].tolist() == [True, False]
    assert masks["b.weight"].all()


def test_group_scope_default_groups_are_modules() -> None:
    state = _two_layer_state()
    th = magnitude_thresholds(state, 0.5, list(state), scope="groups")
    # group a = a.weight + a.bias, {5,4,3,2,1,0.5}: k = 3 -> τ = 3; group b {40,30,20,10}: k = 2
    assert th == {"a.weight": 3.0, "a.bias": 3.0, "b.weight": 30.0}


def test_group_scope_explicit_groups() -> None:
    state = _two_layer_state()
    groups = {"weights": ["a.weight", "b.weight"], "biases": ["a.bias"]}
    th = magnitude_thresholds(state, 0.5, list(state), scope="groups", groups=groups)
    # weights {40,30,20,10,4,3,2,1}: k = 4 -> 10; biases {5, 0.5}: k = 1 -> 5
    assert th == {"a.weight": 10.0, "b.weight": 10.0, "a.bias": 5.0}


def test_groups_must_partition_maskable() -> None:
    state = _two_layer_state()
    with pytest.raises(ValueError, match="partition"):
        magnitude_thresholds(state, 0.5, list(state), scope="groups", groups={"a": ["a.weight"]})
    with pytest.raises(ValueError, match="both maskable and dense"):
        magnitude_thresholds(state, 0.5, ["a.weight"], dense=["a.weight"])
    with pytest.raises(ValueError, match="scope"):
        magnitude_thresholds(state, 0.5, ["a.weight"], scope="layer")


def _dense_budget_state() -> dict[str, torch.Tensor]:
    return {
        "m.weight": torch.arange(1.0, 11.0) * torch.tensor([1.0, -1.0] * 5),
        "d.weight": torch.full((10,), 0.001),
    }


def test_budget_counts_dense_tensors() -> None:
    state = _dense_budget_state()
    # d = 20, γ·d = 14, minus 10 dense -> γ' = 4/10 -> k = 4 on |m| = 1..10 -> τ = 7
    assert effective_gamma(0.7, 10, 10) == pytest.approx(0.4)
    th = magnitude_thresholds(state, 0.7, ["m.weight"], dense=["d.weight"])
    assert th == {"m.weight": 7.0, "d.weight": 0.0}
    masks = masks_from_thresholds(state, th)
    assert int(masks["m.weight"].sum()) == 4
    assert masks["d.weight"].all()
    assert realised_density(masks, state) == pytest.approx(0.7)


def test_budget_below_dense_share_keeps_one_entry() -> None:
    state = _dense_budget_state()
    assert 0 < effective_gamma(0.3, 10, 10) < 0.1
    th = magnitude_thresholds(state, 0.3, ["m.weight"], dense=["d.weight"])
    assert th["m.weight"] == 10.0


def test_budget_gamma_one_keeps_everything() -> None:
    state = _dense_budget_state()
    th = magnitude_thresholds(state, 1.0, ["m.weight"], dense=["d.weight"])
    assert th == {"m.weight": 0.0, "d.weight": 0.0}


def test_realised_density_counts_unmasked_tensors_as_held_and_skips_buffers() -> None:
    state = {
        "w": torch.ones(6),
        "norm.weight": torch.ones(2),
        "norm.running_mean": torch.zeros(2),
        "norm.num_batches_tracked": torch.tensor(3),
    }
    masks = {"w": torch.tensor([True, True, False, False, False, False])}
    assert realised_density(masks, state) == pytest.approx(4 / 8)


def test_cnn_s_default_spec_hits_the_budget() -> None:
    torch.manual_seed(0)
    state = build_model("cnn_s").state_dict()
    maskable, dense, groups = cnn_s_mask_spec()
    assert sorted(maskable + dense) == sorted(state)
    for gamma in (1 / 64, 1 / 16, 1 / 4):
        th = magnitude_thresholds(state, gamma, maskable, "groups", groups, dense)
        assert th["conv2.weight"] == th["conv2.bias"] > 0
        assert th["fc1.weight"] == th["fc1.bias"] > 0
        assert th["conv1.weight"] == th["fc2.bias"] == 0.0
        kept = realised_density(masks_from_thresholds(state, th), state) * 421_642
        assert abs(kept - gamma * 421_642) <= 3  # one floor per group, no ties at random init


# --- B4: surrogate-gradient mask ----------------------------------------------------------------


def _grad(x: torch.Tensor, tau: float, surrogate: str = "biased") -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    masked_weight(x, tau, surrogate).sum().backward()
    assert x.grad is not None
    return x.grad


def test_forward_is_hard_mask_with_ties_kept() -> None:
    x = torch.tensor([0.5, -0.5, 0.4, -2.0, 0.0])
    out = SurrogateMask.apply(x, 0.5, "biased")
    assert torch.equal(out, torch.tensor([0.5, -0.5, 0.0, -2.0, 0.0]))


def test_biased_factor_at_chosen_points() -> None:
    x = torch.tensor([0.5, -0.5, -2.0, 3.0, 0.4, -0.1, 0.0], dtype=torch.float64)
    g = _grad(x, 0.5)
    # 1.5 at |x| = τ; 1 + 2·0.5·2/2.5² = 1.32; 1 + 2·0.5·3/3.5² = 1 + 3/12.25; masked -> 0
    expected = [1.5, 1.5, 1.32, 1 + 3 / 12.25, 0.0, 0.0, 0.0]
    assert g.tolist() == pytest.approx(expected)


def test_biased_factor_tends_to_one_and_is_one_at_tau_zero() -> None:
    g = _grad(torch.tensor([1e4], dtype=torch.float64), 0.5)
    assert 1 < g.item() < 1 + 1e-3
    x = torch.tensor([0.0, 1e-9, -0.3, 7.0])
    g0 = _grad(x, 0.0)
    assert torch.equal(g0, torch.ones(4))


def test_biased_factor_scales_the_upstream_gradient() -> None:
    x = torch.tensor([1.0, -1.0, 0.2], requires_grad=True)
    upstream = torch.tensor([2.0, -3.0, 5.0])
    masked_weight(x, 1.0).backward(upstream)
    assert x.grad is not None
    assert x.grad.tolist() == pytest.approx([3.0, -4.5, 0.0])


def test_biased_gradient_matches_finite_differences_of_the_smooth_surrogate() -> None:
    tau, h = 0.5, 1e-6
    x = torch.tensor([0.6, 1.0, -1.7, 5.0, -0.52], dtype=torch.float64)

    def smooth(v: torch.Tensor) -> torch.Tensor:
        return (v.abs() - tau) / (v.abs() + tau)

    # d/dx [x · s(x)] with s's value replaced by m = 1 on kept entries: 1 + x·s'(x)
    fd = 1 + x * (smooth(x + h) - smooth(x - h)) / (2 * h)
    assert torch.allclose(_grad(x, tau), fd, atol=1e-6)


def test_ste_factor_is_one_on_kept_entries() -> None:
    x = torch.tensor([0.5, -2.0, 0.4, 30.0])
    assert _grad(x, 0.5, "ste").tolist() == [1.0, 1.0, 0.0, 1.0]


def test_unknown_surrogate_rejected() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        masked_weight(torch.ones(2), 0.5, "linear")


# --- B3: select_layers_by_budget ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rho", "expected"),
    [
        (0.6, ["a", "c"]),  # budget 72: a 50, b -> 90 skip, c -> 70, d -> 80 skip
        (0.75, ["a", "b"]),  # budget 90: a, b (= 90), c and d overflow
        (1.0, ["a", "b", "c", "d"]),
        (0.05, []),
    ],
)
def test_select_layers_by_budget_hand(rho: float, expected: list[str]) -> None:
    scores = {"d": 0.1, "b": 0.8, "a": 0.9, "c": 0.5}
    sizes = {"a": 50, "b": 40, "c": 20, "d": 10}
    assert select_layers_by_budget(scores, sizes, rho) == expected


def test_select_layers_by_budget_skips_and_continues() -> None:
    # the top layer alone is over budget; the next ones still fit
    assert select_layers_by_budget(
        {"x": 3.0, "y": 2.0, "z": 1.0}, {"x": 9, "y": 1, "z": 1}, 0.2
    ) == [
        "y",
        "z",
    ]


# --- parametrization and local training (§7.2 step 4) ------------------------------------------


def test_parametrization_masks_forward_and_removal_restores_plain_parameters() -> None:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.9, -0.1, 0.5], [0.2, -0.7, 0.05]]))
        lin.bias.copy_(torch.tensor([0.3, -0.3]))
    apply_submodel_parametrization(lin, {"weight": 0.5, "bias": 0.0})
    assert parametrize.is_parametrized(lin, "weight")
    assert not parametrize.is_parametrized(lin, "bias")  # τ = 0 is the identity
    expected = torch.tensor([[0.9, 0.0, 0.5], [0.0, -0.7, 0.0]])
    assert torch.allclose(lin.weight, expected)
    with pytest.raises(ValueError, match="already"):
        apply_submodel_parametrization(lin, {"weight": 0.5})
    remove_submodel_parametrization(lin)
    assert not parametrize.is_parametrized(lin)
    assert isinstance(lin.weight, nn.Parameter)
    assert torch.allclose(lin.weight, torch.tensor([[0.9, -0.1, 0.5], [0.2, -0.7, 0.05]]))
    assert set(lin.state_dict()) == {"weight", "bias"}


def test_weight_that_falls_below_tau_stays_out() -> None:
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.55)
    apply_submodel_parametrization(lin, {"weight": 0.5})
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    values = []
    for _ in range(3):
        opt.zero_grad()
        lin.weight.sum().backward()
        opt.step()
        values.append(lin.parametrizations.weight.original.item())  # type: ignore[union-attr]
    factor = 1 + 2 * 0.5 * 0.55 / 1.05**2
    assert values[0] == pytest.approx(0.55 - 0.1 * factor)
    assert values[1] == values[2] == values[0]  # below τ: zero gradient, never re-enters


def _toy_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 2
    x = 0.1 * torch.randn(n, 1, 28, 28, generator=g)
    x[y == 0, :, :14] += 1.0
    x[y == 1, :, 14:] += 1.0
    return x, y


def _masked_loss(state: dict[str, torch.Tensor], th: dict[str, float]) -> float:
    masks = masks_from_thresholds(state, th)
    model = build_model("cnn_s")
    model.load_state_dict({k: v * masks[k] for k, v in state.items()})
    x, y = _toy_batch()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def test_train_submodel_keeps_outside_at_zero_and_lowers_loss() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    full = build_model("cnn_s").state_dict()
    maskable, dense, groups = cnn_s_mask_spec()
    th = magnitude_thresholds(full, 1 / 16, maskable, "groups", groups, dense)
    received = masks_from_thresholds(full, th)
    model = build_model("cnn_s")
    model.load_state_dict({k: v * received[k] for k, v in full.items()})
    start = {k: v.clone() for k, v in model.state_dict().items()}

    loss_before = _masked_loss(start, th)
    batches = [_toy_batch()] * 15
    state, metrics = train_submodel(model, th, batches, lr=0.1)

    assert set(state) == set(full)
    assert not parametrize.is_parametrized(model)
    for name in maskable:
        assert torch.all(state[name][~received[name]] == 0), name
    assert not torch.equal(state["fc1.weight"], start["fc1.weight"])
    assert not torch.equal(state["fc2.weight"], start["fc2.weight"])
    assert set(metrics) == {"train-loss", "train-seconds"}
    assert math.isfinite(metrics["train-loss"]) and metrics["train-seconds"] > 0
    loss_after = _masked_loss(state, th)
    assert loss_after < 0.5 * loss_before


def _two_by_two() -> nn.Linear:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.2], [0.3, -2.0]]))
        model.bias.zero_()
    return model


def test_train_submodel_ste_at_positive_tau() -> None:
    """τ = 0.5 masks 0.2 and 0.3. One SGD step with STE = the plain gradient of the masked model
    on kept entries (factor 1), masked entries unchanged; the biased surrogate differs (its
    factor 1 + 2τ|x|/(|x|+τ)² is 1.444 at |x| = 1 and 1.32 at |x| = 2)."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([1, 0])
    lr = 0.1
    w = torch.tensor([[1.0, 0.2], [0.3, -2.0]], requires_grad=True)
    mask = (w.abs() >= 0.5).float()
    nn.functional.cross_entropy(x @ (w * mask).T, y).backward()
    assert w.grad is not None
    g = w.grad * mask
    expected = (w - lr * g).detach()
    ste, _ = train_submodel(_two_by_two(), {"weight": 0.5}, [(x, y)], lr=lr, surrogate="ste")
    torch.testing.assert_close(ste["weight"], expected)
    assert ste["weight"][0, 1] == 0.2 and ste["weight"][1, 0] == pytest.approx(0.3)
    biased, _ = train_submodel(_two_by_two(), {"weight": 0.5}, [(x, y)], lr=lr)
    factor = torch.tensor([[1 + 1 / 2.25, 0.0], [0.0, 1 + 2 / 6.25]])
    torch.testing.assert_close(biased["weight"], (w - lr * w.grad * factor).detach())
    assert not torch.allclose(biased["weight"], ste["weight"])


def test_train_submodel_empty_input() -> None:
    model = _two_by_two()
    with pytest.raises(ValueError, match="no batches"):
        train_submodel(model, {"weight": 0.0}, [], lr=0.1)
    assert not parametrize.is_parametrized(model)
