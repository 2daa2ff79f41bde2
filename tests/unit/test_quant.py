"""Int8 quantisation, BN folding, the CoCoFL windowed model and train_window (METHODS.md B7, §6)."""

from __future__ import annotations

import copy
import functools
import logging

import pytest
import torch
from torch import nn

from fedhet.core.freeze import train_window
from fedhet.core.quant import (
    build_windowed_model,
    fake_quant_int8,
    fold_bn,
    quantize_weight_symmetric,
    trained_state,
    window_state_keys,
)
from fedhet.models import build_model


@functools.cache
def _cnn_b_template() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn_b")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    return model.eval()


def _cnn_b_with_stats() -> nn.Module:
    """cnn_b whose BN running statistics have moved away from (0, 1) (a fresh copy)."""
    return copy.deepcopy(_cnn_b_template())


def _is_torch_ao(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn")


# --- weight and tensor quantisation ------------------------------------------------------------


def test_quantize_weight_symmetric_by_hand() -> None:
    w = torch.tensor([0.8, -2.54, 0.4, 0.0])
    q, s = quantize_weight_symmetric(w)  # s = 2.54 / 127 = 0.02
    assert s == pytest.approx(0.02)
    assert q.dtype == torch.int8
    assert q.tolist() == [40, -127, 20, 0]

    q4, s4 = quantize_weight_symmetric(w, scale_factor=4.0)  # s = 0.08
    assert s4 == pytest.approx(0.08)
    assert q4.tolist() == [10, -32, 5, 0]

    q_half, _ = quantize_weight_symmetric(w, scale_factor=0.5)  # s = 0.01: -254 clips to -127
    assert q_half.tolist() == [80, -127, 40, 0]


def test_quantize_weight_symmetric_zero_and_bad_factor() -> None:
    q, s = quantize_weight_symmetric(torch.zeros(3, 3))
    assert s == 1.0
    assert torch.equal(q, torch.zeros(3, 3, dtype=torch.int8))
    with pytest.raises(ValueError):
        quantize_weight_symmetric(torch.ones(2), scale_factor=0.0)


def test_fake_quant_int8_values_and_straight_through() -> None:
    x = torch.tensor([0.8, -2.54, 0.4, 0.011], requires_grad=True)
    y = fake_quant_int8(x)  # s = 0.02; 0.011/0.02 = 0.55 -> 1
    assert torch.allclose(y, torch.tensor([0.8, -2.54, 0.4, 0.02]), atol=1e-6)
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))

    fixed = fake_quant_int8(torch.tensor([0.8, -2.54, 0.04, 20.0]), scale=0.1)
    assert torch.allclose(fixed, torch.tensor([0.8, -2.5, 0.0, 12.7]), atol=1e-6)


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_bn_equals_conv_then_bn_in_eval(conv_bias: bool) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=conv_bias)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    conv_w = conv.weight.detach().clone()
    bn.eval()
    x = torch.randn(4, 3, 8, 8)
    fused = fold_bn(conv, bn)
    assert fused.bias is not None
    assert torch.allclose(fused(x), bn(conv(x)), atol=1e-5)
    assert torch.equal(conv.weight, conv_w)  # inputs untouched


def test_fold_bn_refuses_static_bn() -> None:
    with pytest.raises(ValueError):
        fold_bn(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))


# --- windowed model ----------------------------------------------------------------------------


def test_int8_frozen_forward_close_to_fp32() -> None:
    model = _cnn_b_with_stats()
    calib = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    fresh = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    wmodel = build_windowed_model(model, (5, 5), calib).eval()
    # units 0..4 must really run on int8 kernels
    assert sum(_is_torch_ao(m) for m in wmodel.front.modules()) == 5
    with torch.no_grad():
        ref, out = model(fresh), wmodel(fresh)
    rel = float((out - ref).norm() / ref.norm())
    # measured ~2e-3 (torch 2.13, x86 engine); bound with 10x margin
    assert rel < 0.02
    assert rel > 0.0  # it really is quantised


def test_fake_int8_everywhere_when_real_int8_off() -> None:
    model = _cnn_b_with_stats()
    wmodel = build_windowed_model(model, (3, 3), torch.randn(8, 1, 28, 28), real_int8=False)
    assert not any(_is_torch_ao(m) for m in wmodel.modules())
    with torch.no_grad():
        x = torch.randn(16, 1, 28, 28)
        rel = (wmodel.eval()(x) - model(x)).norm() / model(x).norm()
    assert float(rel) < 0.02


@pytest.mark.parametrize("window", [(0, 0), (2, 3), (5, 5), (0, 5)])
def test_gradients_reach_only_window_params(window: tuple[int, int]) -> None:
    model = _cnn_b_with_stats()
    wmodel = build_windowed_model(model, window, torch.randn(8, 1, 28, 28))
    wmodel(torch.randn(8, 1, 28, 28)).sum().backward()
    window_ids = {id(p) for p in wmodel.window_units.parameters()}
    assert window_ids
    for name, p in wmodel.named_parameters():
        if id(p) in window_ids:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_modes_and_window_bn_momentum() -> None:
    wmodel = build_windowed_model(_cnn_b_with_stats(), (1, 2), torch.randn(8, 1, 28, 28))
    wmodel.train()
    assert all(m.training for m in wmodel.window_units.modules())
    assert not any(m.training for m in wmodel.back.modules())
    bns = [m for m in wmodel.window_units.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and all(bn.momentum == 0.1 for bn in bns)


def test_input_gradients_after_window_are_int8() -> None:
    model = _cnn_b_with_stats()
    x = torch.randn(8, 1, 28, 28)
    grads: dict[bool, torch.Tensor] = {}
    for quant_backward in (True, False):
        wmodel = build_windowed_model(model, (0, 4), x, quant_backward=quant_backward)
        seen: list[torch.Tensor] = []

        def keep_grad(_m: nn.Module, _i: object, out: torch.Tensor, seen: list = seen) -> None:
            out.register_hook(seen.append)

        wmodel.window_units[-1].register_forward_hook(keep_grad)
        wmodel(x).logsumexp(1).sum().backward()
        grads[quant_backward] = seen[0]
    for quant_backward, g in grads.items():
        steps = g / (g.abs().max() / 127)
        on_grid = torch.allclose(steps, steps.round(), atol=1e-3)
        assert on_grid == quant_backward


def test_window_state_keys_and_trained_state() -> None:
    model = build_model("cnn_b")
    keys = window_state_keys(model, (4, 5))
    assert keys == [
        "units.4.0.weight",
        "units.4.1.weight",
        "units.4.1.bias",
        "units.4.1.running_mean",
        "units.4.1.running_var",
        "units.4.1.num_batches_tracked",
        "units.5.weight",
        "units.5.bias",
    ]
    full = model.state_dict()
    for window in [(0, 0), (1, 3), (4, 5), (0, 5)]:
        state = trained_state(build_windowed_model(model, window, torch.randn(4, 1, 28, 28)))
        assert list(state) == window_state_keys(model, window)
        assert all(state[k].shape == full[k].shape for k in state)
    with pytest.raises(ValueError):
        window_state_keys(model, (3, 2))
    with pytest.raises(ValueError):
        window_state_keys(model, (0, 6))


def test_resnet_s_falls_back_to_fake_quant_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = build_model("resnet_s")
    x = torch.randn(8, 1, 28, 28)
    with caplog.at_level(logging.INFO, logger="fedhet.core.quant"):
        wmodel = build_windowed_model(model, (4, 4), x)
    fallback = [r for r in caplog.records if "fake quantisation" in r.getMessage()]
    assert len(fallback) == 4  # stem (static BN) and three residual blocks
    wmodel(x).sum().backward()
    trained = {n for n, p in wmodel.named_parameters() if p.grad is not None}
    assert trained == {"window_units.0.2.weight", "window_units.0.2.bias"}
    with torch.no_grad():
        rel = (wmodel.eval()(x) - model.eval()(x)).norm() / model(x).norm()
    assert float(rel) < 0.05


# --- train_window ------------------------------------------------------------------------------


def _separable_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    y = torch.arange(32) % 2
    x = 0.3 * torch.randn(32, 1, 28, 28, generator=gen)
    x[y == 0, :, :14] += 1.0
    x[y == 1, :, 14:] += 1.0
    return [(x, y)] * steps


def test_train_window_lowers_loss_and_leaves_model_untouched() -> None:
    model = _cnn_b_with_stats()
    before = copy.deepcopy(model.state_dict())
    batches = _separable_batches(30)
    window = (3, 5)
    _, first = train_window(model, window, batches[:1], lr=0.1)
    state, metrics = train_window(model, window, batches, lr=0.1)
    assert set(metrics) == {"train-loss", "train-seconds", "peak-mem-bytes"}
    assert metrics["train-loss"] < 0.5 * first["train-loss"]
    assert metrics["train-seconds"] > 0 and metrics["peak-mem-bytes"] > 0
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key]), key
    assert list(state) == window_state_keys(model, window)
    assert any(not torch.equal(state[k], before[k]) for k in state)

    assert (
        int(state["units.3.1.num_batches_tracked"])
        == int(before["units.3.1.num_batches_tracked"]) + 30
    )

    x, y = batches[0]
    trained = copy.deepcopy(model)
    trained.load_state_dict(state, strict=False)
    with torch.no_grad():  # batch statistics: running ones still carry the stale start values
        assert (trained.train()(x).argmax(1) == y).float().mean() > 0.9


def test_train_window_needs_a_batch() -> None:
    with pytest.raises(ValueError):
        train_window(build_model("cnn_b"), (0, 0), [], lr=0.1)
