"""CoCoFL's local training step: train one window of a partly frozen, partly int8 model.

METHODS.md B7 and §6.2 step 3–5; CoCoFL, arXiv 2203.05468, §3. The model is cut with
:func:`fedhet.core.quant.build_windowed_model`; only the window's tensors are returned, under the
global model's key names, so the server's zero-fill average (B2) aligns them.

Memory is *counted*, not sampled from the allocator (``tracemalloc`` does not see torch's
allocations and CPU RSS is too coarse): bytes of the windowed model's parameters and buffers
(packed int8 weights at 1 B each) + gradients of the window's parameters + every distinct tensor
autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``, deduplicated
by storage, parameters and buffers excluded). Their sum is the live training memory at the end of
the forward pass, the peak of an SGD step without momentum; transient kernel workspace is ignored.
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
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        loss = nn.functional.cross_entropy(wmodel(x), y)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    peak = module_tensor_bytes(wmodel) + grad_bytes + counter.bytes
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
