"""Int8 quantisation and the CoCoFL windowed model (METHODS.md B7; CoCoFL, arXiv 2203.05468, §3).

A CoCoFL configuration trains one contiguous window ``[a, b]`` of a model's ordered ``units``:

* units **before** the window run forward-only on real int8 kernels (``torch.ao.nn.quantized``):
  BN folded into the conv with the global running statistics, weights per-tensor symmetric int8,
  activations quint8 with scales calibrated on one calibration batch, dequantised at window entry;
* **window** units are fp32, trainable, BN in train mode with momentum 0.1;
* units **after** the window keep frozen int8-rounded weights (fake quantisation,
  ``requires_grad=False``), so only input gradients flow; those are fake-quantised to int8 with a
  per-batch scale.

The ``torch.ao`` quantised operators are deprecated upstream in favour of torchao. This module is
the only place in fedhet that touches them, so the backend can change here alone.

A unit whose layers have no int8 kernel here (residual blocks such as ``resnet_s``'s, or BN without
running statistics, which cannot be folded) falls back to fake quantisation: int8-rounded weights in
fp32 arithmetic and a quint8 fake-quantised output. Each fallback is logged.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_QMAX = 127
_PASS_THROUGH = (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.ReLU, nn.Identity)


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
        yield


def quantize_weight_symmetric(w: Tensor, scale_factor: float = 1.0) -> tuple[Tensor, float]:
    """Quantise a weight tensor to per-tensor symmetric int8.

    s = c·max|w|/127 and q = clamp(round(w/s), -127, 127) (METHODS.md B7; CoCoFL, arXiv 2203.05468,
    §3). With c = 1 the largest magnitude maps to ±127; c = 2 reproduces the official code's range.

    Parameters
    ----------
    w : Tensor
        Float weight tensor.
    scale_factor : float
        The factor c (``cocofl.weight-scale-factor``), > 0.

    Returns
    -------
    tuple[Tensor, float]
        ``(q, s)`` with ``q`` a ``torch.int8`` tensor of ``w``'s shape; ``q * s`` approximates
        ``w``.
        An all-zero ``w`` gives ``s = 1.0`` and ``q = 0``.
    """
    if scale_factor <= 0:
        raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
    w = w.detach().float()
    max_abs = float(w.abs().max()) if w.numel() else 0.0
    scale = scale_factor * max_abs / _QMAX if max_abs > 0 else 1.0
    q = torch.clamp(torch.round(w / scale), -_QMAX, _QMAX).to(torch.int8)
    return q, scale


def _int8_rounded(w: Tensor, scale_factor: float) -> Tensor:
    q, s = quantize_weight_symmetric(w, scale_factor)
    return q.float() * s


def fake_quant_int8(x: Tensor, scale: float | None = None) -> Tensor:
    """Symmetric int8 fake quantisation with a straight-through gradient.

    Forward: s·clamp(round(x/s), -127, 127) with s = max|x|/127 unless given (METHODS.md B7).
    Backward: identity (straight-through estimator).

    Parameters
    ----------
    x : Tensor
        Input tensor.
    scale : float or None
        Quantisation step; ``None`` uses the per-tensor scale max|x|/127.

    Returns
    -------
    Tensor
        The rounded tensor, same shape and dtype as ``x``.
    """
    if scale is None:
        max_abs = float(x.detach().abs().max()) if x.numel() else 0.0
        if max_abs == 0.0:
            return x
        scale = max_abs / _QMAX
    rounded = torch.clamp(torch.round(x.detach() / scale), -_QMAX, _QMAX) * scale
    return x + (rounded - x).detach()


class _QuantiseGrad(torch.autograd.Function):
    """Identity forward; backward fake-quantises the incoming gradient to int8 (per-batch scale)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return fake_quant_int8(grad)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding convolution.

    w' = w·γ/√(σ²+ε) per output channel, b' = (b − μ)·γ/√(σ²+ε) + β with the running mean μ and
    variance σ² (METHODS.md B7). The inputs are not modified.

    Parameters
    ----------
    conv : nn.Conv2d
        Convolution (with or without bias).
    bn : nn.BatchNorm2d
        BatchNorm with running statistics (``track_running_stats=True``).

    Returns
    -------
    nn.Conv2d
        A new convolution with bias, equal to ``bn(conv(x))`` in eval mode.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (static BN)")
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv_std)
        factor = gamma * inv_std
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight = nn.Parameter(conv.weight * factor.reshape(-1, 1, 1, 1))
        fused.bias = nn.Parameter((bias - bn.running_mean) * factor + beta)
    return fused


def _unit_layers(unit: nn.Module) -> list[nn.Module]:
    if isinstance(unit, nn.Sequential):
        return list(unit)
    return [unit]


def _fold_unit_layers(layers: list[nn.Module]) -> list[nn.Module] | None:
    """Fold Conv2d→BatchNorm2d pairs; ``None`` if a BN cannot be folded or a layer is unknown."""
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            if nxt.running_mean is None:
                return None
            out.append(fold_bn(layer, nxt))
            i += 2
            continue
        if isinstance(layer, (nn.Conv2d, nn.Linear, *_PASS_THROUGH)):
            out.append(copy.deepcopy(layer))
            i += 1
            continue
        return None
    return out


def _affine_qparams(x: Tensor) -> tuple[float, int]:
    """quint8 scale and zero point covering [min(x, 0), max(x, 0)]."""
    lo = min(float(x.min()), 0.0)
    hi = max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero_point = int(min(255, max(0, round(-lo / scale))))
    return scale, zero_point


class _FakeQuantUnit(nn.Module):
    """Frozen fp32 unit with int8-rounded weights (BN folded where it has running statistics)."""

    def __init__(self, unit: nn.Module, scale_factor: float, out_qparams: bool) -> None:
        super().__init__()
        layers = _fold_unit_layers(_unit_layers(unit))
        self.body: nn.Module = nn.Sequential(*layers) if layers is not None else copy.deepcopy(unit)
        with torch.no_grad():
            for module in self.body.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    module.weight.copy_(_int8_rounded(module.weight, scale_factor))
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.eval()
        self.quantise_output = out_qparams
        self.out_scale = 1.0
        self.out_zero_point = 0

    def calibrate(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.quantise_output:
            self.out_scale, self.out_zero_point = _affine_qparams(out)
        return self.forward(x)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_quantized:
            x = x.dequantize()
        out = self.body(x)
        if self.quantise_output:
            out = torch.fake_quantize_per_tensor_affine(
                out, self.out_scale, self.out_zero_point, 0, 255
            )
        return out

    def train(self, mode: bool = True) -> _FakeQuantUnit:
        super().train(mode)
        self.body.eval()
        return self


class _Int8Unit(nn.Module):
    """Forward-only unit on ``torch.ao.nn.quantized`` kernels; quint8 in, quint8 out."""

    def __init__(self, ops: list[nn.Module], in_scale: float, in_zero_point: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.in_scale = in_scale
        self.in_zero_point = in_zero_point

    def forward(self, x: Tensor) -> Tensor:
        with _quiet_deprecation():
            if not x.is_quantized:
                x = torch.quantize_per_tensor(x, self.in_scale, self.in_zero_point, torch.quint8)
            for op in self.ops:
                x = op(x)
        return x


def _quantised_op(
    float_op: nn.Conv2d | nn.Linear, relu: bool, scale_factor: float, x_float: Tensor
) -> nn.Module:
    """Int8 kernel for a folded conv/linear, output qparams calibrated on input ``x_float``."""
    with torch.no_grad():
        ref = float_op(x_float)
        if relu:
            ref = torch.relu(ref)
    out_scale, out_zp = _affine_qparams(ref)
    weight = float_op.weight.detach()
    q_int, w_scale = quantize_weight_symmetric(weight, scale_factor)
    bias = float_op.bias.detach().clone() if float_op.bias is not None else None
    with _quiet_deprecation():
        q_weight = torch.quantize_per_tensor(q_int.float() * w_scale, w_scale, 0, torch.qint8)
        op: nn.Module
        if isinstance(float_op, nn.Conv2d):
            cls = nniq.ConvReLU2d if relu else nnq.Conv2d
            op = cls(
                float_op.in_channels,
                float_op.out_channels,
                float_op.kernel_size,
                stride=float_op.stride,
                padding=float_op.padding,
                dilation=float_op.dilation,
                groups=float_op.groups,
                bias=bias is not None,
            )
        else:
            assert isinstance(float_op, nn.Linear)
            if relu:
                op = nniq.LinearReLU(
                    float_op.in_features, float_op.out_features, bias=bias is not None
                )
            else:
                op = nnq.Linear(float_op.in_features, float_op.out_features, bias_=bias is not None)
        op.set_weight_bias(q_weight, bias)  # type: ignore[operator]
    op.scale = out_scale
    op.zero_point = out_zp
    return op


def _int8_supported(layers: list[nn.Module]) -> bool:
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                return False
        elif not isinstance(layer, (nn.Linear, *_PASS_THROUGH)):
            return False
    return True


def _build_int8_unit(
    unit: nn.Module, x: Tensor, scale_factor: float
) -> tuple[_Int8Unit, Tensor] | None:
    """Convert ``unit`` to int8 kernels, calibrating on input ``x`` (float or quint8).

    Returns the unit and its quint8 output on ``x``, or ``None`` when a layer has no int8 kernel.
    """
    layers = _fold_unit_layers(_unit_layers(unit))
    if layers is None or not _int8_supported(layers):
        return None
    if x.is_quantized:
        in_scale, in_zp = float(x.q_scale()), int(x.q_zero_point())
        q = x
    else:
        in_scale, in_zp = _affine_qparams(x)
        with _quiet_deprecation():
            q = torch.quantize_per_tensor(x, in_scale, in_zp, torch.quint8)
    ops: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Conv2d | nn.Linear):
            relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
            op = _quantised_op(layer, relu, scale_factor, q.dequantize())
            i += 2 if relu else 1
        else:
            op = layer
            i += 1
        with _quiet_deprecation():
            q = op(q)
        ops.append(op)
    return _Int8Unit(ops, in_scale, in_zp), q


class WindowedModel(nn.Module):
    """A model cut into a CoCoFL configuration around the trained window (METHODS.md B7).

    Units before the window: real int8 forward-only (``torch.ao.nn.quantized``, BN folded,
    activations quint8 with scales calibrated on a calibration batch, dequantised at window entry);
    units without an int8 kernel fall back to fake quantisation. Window: fp32, trainable, BN in
    train mode (momentum 0.1). Units after: frozen int8-rounded weights (fake quantisation,
    ``requires_grad=False``), input gradients fake-quantised to int8 per batch (``quant_backward``).
    Build it with :func:`build_windowed_model`; ``train()``/``eval()`` only affect the window.

    Parameters
    ----------
    front, window_units, back : nn.ModuleList
        The converted units before, in and after the window.
    window : tuple[int, int]
        Global unit indices ``(a, b)`` of the window, inclusive.
    quant_backward : bool
        Fake-quantise the input gradient of every unit after the window.
    """

    def __init__(
        self,
        front: nn.ModuleList,
        window_units: nn.ModuleList,
        back: nn.ModuleList,
        window: tuple[int, int],
        quant_backward: bool = True,
    ) -> None:
        super().__init__()
        self.front = front
        self.window_units = window_units
        self.back = back
        self.window = window
        self.quant_backward = quant_backward

    def forward(self, x: Tensor) -> Tensor:
        """Front units without autograd (int8 where available), the fp32 window, then the frozen
        back units with int8 fake-quantised input gradients when ``quant_backward``."""
        with torch.no_grad():
            for unit in self.front:
                x = unit(x)
            if x.is_quantized:
                x = x.dequantize()
        for unit in self.window_units:
            x = unit(x)
        for unit in self.back:
            if self.quant_backward and x.requires_grad:
                x = _QuantiseGrad.apply(x)
            x = unit(x)
        return x

    def train(self, mode: bool = True) -> WindowedModel:
        """Set the window's training mode; the frozen front and back units stay in eval mode."""
        super().train(mode)
        self.front.eval()
        self.back.eval()
        return self

    def window_named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Window parameters and buffers under global names ``units.{i}.…``."""
        a, _ = self.window
        for j, unit in enumerate(self.window_units):
            for key, tensor in unit.state_dict(keep_vars=True).items():
                yield f"units.{a + j}.{key}", tensor


def _check_window(model: nn.Module, window: tuple[int, int]) -> int:
    units = getattr(model, "units", None)
    if not isinstance(units, nn.ModuleList):
        raise TypeError("model must expose its ordered units as `model.units` (nn.ModuleList)")
    a, b = window
    if not 0 <= a <= b < len(units):
        raise ValueError(f"window {window} outside units 0..{len(units) - 1} (need a <= b)")
    return len(units)


def build_windowed_model(
    model: nn.Module,
    window: tuple[int, int],
    calib_batch: Tensor,
    *,
    real_int8: bool = True,
    quant_backward: bool = True,
    weight_scale_factor: float = 1.0,
) -> WindowedModel:
    """Cut ``model`` into a CoCoFL configuration that trains units ``window[0]..window[1]``.

    METHODS.md B7; CoCoFL, arXiv 2203.05468, §3. The original model is deep-copied, never modified.

    Parameters
    ----------
    model : nn.Module
        Model exposing ``model.units`` (an ``nn.ModuleList`` run in order).
    window : tuple[int, int]
        Inclusive unit indices ``(a, b)``, ``a <= b``.
    calib_batch : Tensor
        Input batch used to calibrate the quint8 activation scales of the units before the window.
    real_int8 : bool
        Use ``torch.ao.nn.quantized`` kernels before the window; ``False`` fakes them everywhere.
    quant_backward : bool
        Fake-quantise input gradients to int8 (per-batch scale) after the window.
    weight_scale_factor : float
        Weight quantisation factor c in s = c·max|w|/127.

    Returns
    -------
    WindowedModel
        In train mode; only the window's parameters require gradients.
    """
    _check_window(model, window)
    a, b = window
    units = model.units
    assert isinstance(units, nn.ModuleList)

    front: list[nn.Module] = []
    with torch.no_grad():
        x: Tensor = calib_batch.detach().float()
        for i in range(a):
            built = _build_int8_unit(units[i], x, weight_scale_factor) if real_int8 else None
            if built is not None:
                unit, x = built
                front.append(unit)
                continue
            if real_int8:
                logger.info(
                    "unit %d (%s) has no int8 kernel here (residual add, static BN or unknown "
                    "layer): fake quantisation before the window",
                    i,
                    type(units[i]).__name__,
                )
            fake = _FakeQuantUnit(units[i], weight_scale_factor, out_qparams=True)
            x = fake.calibrate(x.dequantize() if x.is_quantized else x)
            front.append(fake)

    window_units = nn.ModuleList(copy.deepcopy(units[i]) for i in range(a, b + 1))
    for module in window_units.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    for p in window_units.parameters():
        p.requires_grad_(True)

    back = [
        _FakeQuantUnit(units[i], weight_scale_factor, out_qparams=False)
        for i in range(b + 1, len(units))
    ]
    wmodel = WindowedModel(nn.ModuleList(front), window_units, nn.ModuleList(back), window)
    wmodel.quant_backward = quant_backward
    return wmodel.train()


def window_state_keys(model: nn.Module, window: tuple[int, int]) -> list[str]:
    """State-dict keys of the window's parameters and buffers, in ``model.state_dict()`` order.

    Parameters
    ----------
    model : nn.Module
        Model exposing ``model.units``.
    window : tuple[int, int]
        Inclusive unit indices ``(a, b)``.

    Returns
    -------
    list[str]
        Global names ``units.{i}.…`` for ``a <= i <= b`` (BN running statistics and
        ``num_batches_tracked`` included).
    """
    _check_window(model, window)
    a, b = window
    prefixes = tuple(f"units.{i}." for i in range(a, b + 1))
    return [key for key in model.state_dict() if key.startswith(prefixes)]


def trained_state(wmodel: WindowedModel) -> dict[str, Tensor]:
    """Detached copies of the window's tensors under global key names, ready to upload.

    Parameters
    ----------
    wmodel : WindowedModel
        A (trained) windowed model.

    Returns
    -------
    dict[str, Tensor]
        ``{"units.{i}.…": tensor}`` for every parameter and buffer of the window.
    """
    return {key: t.detach().clone() for key, t in wmodel.window_named_tensors()}


def module_tensor_bytes(module: nn.Module) -> int:
    """Bytes held by a module's tensors, int8 kernels' packed weights counted at 1 B per weight."""
    total = sum(t.numel() * t.element_size() for t in module.parameters())
    total += sum(t.numel() * t.element_size() for t in module.buffers())
    for m in module.modules():
        if isinstance(m, nnq.Conv2d | nnq.Linear):
            with _quiet_deprecation():
                weight, bias = m.weight(), m.bias()
            total += weight.numel()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


__all__ = [
    "WindowedModel",
    "build_windowed_model",
    "fake_quant_int8",
    "fold_bn",
    "module_tensor_bytes",
    "quantize_weight_symmetric",
    "trained_state",
    "window_state_keys",
]
