"""CoCoFL's local training step: train one window of a partly frozen, partly int8 model.

METHODS.md B7 and §6.2 step 3–5; CoCoFL, arXiv 2203.05468, §3. The model is cut with
:func:`fedhet.core.quant.build_windowed_model`; only the window's tensors are returned, under the
global model's key names, so the server's zero-fill average (B2) aligns them.

Memory is *counted*, not sampled from the allocator (``tracemalloc`` does not see torch's
allocations and CPU RSS is too coarse): bytes of the windowed model's parameters and buffers
(packed int8 weights at 1 B each) + gradients of the window's parameters + every distinct tensor
autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``, deduplicated
by storage, parameters and buffers excluded), or, when larger, the *front's transient peak*: the
units before the window run forward-only and keep nothing for backward, but while each of their
layers runs, the unit's input, the layer's input and its output are alive together (quint8 at 1 B
on the int8 path), and at the window's entry the last quint8 output and its fp32 dequantised copy
are. The front finishes before the window saves anything, so the two never coexist and the peak
counts the larger. The total is the live training memory at its peak for an SGD step without
momentum; transient kernel workspace is ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fedhet.core.quant import (
    WindowedModel,
    build_windowed_model,
    module_tensor_bytes,
    trained_state,
)
from fedhet.core.sgd import SGD, StepOptimizer

logger = logging.getLogger(__name__)


class _SavedTensorBytes:
    """Sums distinct storages autograd saves for backward, ignoring the ones in ``exclude``."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: Tensor) -> Tensor:
        if not t.is_quantized and t.layout == torch.strided:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.exclude and ptr not in self.seen:
                self.seen.add(ptr)
                self.bytes += storage.nbytes()
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t


def _tensor_bytes(*tensors: object) -> int:
    """Bytes of distinct tensors (by data pointer); quantised tensors at their 1 B elements."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if isinstance(t, Tensor) and t.layout == torch.strided and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class _FrontTransient:
    """Largest set of activations alive at one time while the front (units before the window) runs.

    Sequential front: during layer ℓ of unit u, alive are u's input (held by the caller), ℓ's input
    and ℓ's output; at the window's entry, the front's last output and its fp32 dequantised copy.
    """

    def __init__(self, front: nn.ModuleList) -> None:
        self.peak = 0
        self.unit_input: Tensor | None = None
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for i, unit in enumerate(front):
            self.handles.append(unit.register_forward_pre_hook(self._enter))
            self.handles.append(
                unit.register_forward_hook(self._exit_last if i == len(front) - 1 else self._exit)
            )
            for module in unit.modules():
                if module is not unit:
                    self.handles.append(module.register_forward_hook(self._layer))

    def _enter(self, _unit: nn.Module, args: tuple[object, ...]) -> None:
        self.unit_input = args[0] if args and isinstance(args[0], Tensor) else None

    def _layer(self, _m: nn.Module, args: tuple[object, ...], out: object) -> None:
        self.peak = max(self.peak, _tensor_bytes(self.unit_input, *args[:1], out))

    def _exit(self, _unit: nn.Module, _args: tuple[object, ...], out: object) -> None:
        self.peak = max(self.peak, _tensor_bytes(self.unit_input, out))

    def _exit_last(self, unit: nn.Module, args: tuple[object, ...], out: object) -> None:
        self._exit(unit, args, out)
        if isinstance(out, Tensor) and out.is_quantized:  # dequantised at the window's entry
            self.peak = max(self.peak, _tensor_bytes(out) + 4 * out.numel())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def training_step(
    wmodel: WindowedModel,
    optimizer: StepOptimizer,
    x: Tensor,
    y: Tensor,
    *,
    count_memory: bool = False,
) -> tuple[float, int]:
    """One forward + backward + optimiser step of a windowed model on a batch.

    Parameters
    ----------
    wmodel : WindowedModel
        Model built by :func:`~fedhet.core.quant.build_windowed_model`, in train mode.
    optimizer : StepOptimizer
        Optimiser over the window's parameters.
    x, y : Tensor
        Input batch and integer class labels.
    count_memory : bool
        Also count the step's peak training memory (see the module docstring); adds hook overhead.

    Returns
    -------
    tuple[float, int]
        Cross-entropy loss of the batch, and the counted peak bytes (0 when not counted).
    """
    optimizer.zero_grad(set_to_none=True)
    if not count_memory:
        loss = nn.functional.cross_entropy(wmodel(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), 0
    params = [p for p in wmodel.parameters()]
    exclude = {t.untyped_storage().data_ptr() for t in [*params, *wmodel.buffers()]}
    counter = _SavedTensorBytes(exclude)
    front = _FrontTransient(wmodel.front)
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            loss = nn.functional.cross_entropy(wmodel(x), y)
    finally:
        front.remove()
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    peak = module_tensor_bytes(wmodel) + grad_bytes + max(counter.bytes, front.peak)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), peak


def train_window(
    model: nn.Module,
    window: tuple[int, int],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    lr: float,
    weight_decay: float = 1e-3,
    real_int8: bool = True,
    quant_backward: bool = True,
    weight_scale_factor: float = 1.0,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Train the window ``[a, b]`` of ``model`` for one SGD step per batch (METHODS.md §6.2).

    The windowed model is built on a copy of ``model`` (never modified), with activation scales
    calibrated on the first batch; the optimiser is a fresh SGD without momentum.

    Parameters
    ----------
    model : nn.Module
        Global model exposing ``model.units``.
    window : tuple[int, int]
        Inclusive unit indices of the trained window.
    batches : Iterable[tuple[Tensor, Tensor]]
        ``(inputs, labels)`` batches; one step each.
    lr, weight_decay : float
        SGD learning rate and L2 weight decay (CoCoFL default wd 1e-3, METHODS.md §6.4).
    real_int8, quant_backward, weight_scale_factor
        As in :func:`~fedhet.core.quant.build_windowed_model`.

    Returns
    -------
    tuple[dict[str, Tensor], dict[str, float]]
        The window's parameters and buffers under global keys, and metrics ``train-loss`` (mean
        over steps), ``train-seconds`` (wall time including the build) and ``peak-mem-bytes``
        (counted on the first step, see the module docstring).
    """
    start = time.perf_counter()
    wmodel: WindowedModel | None = None
    optimizer: StepOptimizer | None = None
    losses: list[float] = []
    peak = 0
    for x, y in batches:
        if wmodel is None:
            wmodel = build_windowed_model(
                model,
                window,
                x,
                real_int8=real_int8,
                quant_backward=quant_backward,
                weight_scale_factor=weight_scale_factor,
            )
            optimizer = SGD(
                [p for p in wmodel.parameters() if p.requires_grad],
                lr=lr,
                momentum=0.0,
                weight_decay=weight_decay,
            )
        assert optimizer is not None
        loss, step_peak = training_step(wmodel, optimizer, x, y, count_memory=not losses)
        peak = max(peak, step_peak)
        losses.append(loss)
    if wmodel is None:
        raise ValueError("train_window needs at least one batch")
    metrics: dict[str, float] = {
        "train-loss": sum(losses) / len(losses),
        "train-seconds": time.perf_counter() - start,
        "peak-mem-bytes": float(peak),
    }
    logger.debug("window %s: %d steps, %s", window, len(losses), metrics)
    return trained_state(wmodel), metrics


__all__ = ["train_window", "training_step"]
