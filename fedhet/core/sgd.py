"""Plain SGD (momentum, weight decay) without ``torch.optim`` (issue 13, lean ClientApp start).

With ``torch.optim.SGD`` the first training step of a fresh process imports ``torch._dynamo``
(≈ 820 modules; measured 13 s for cnn_s on the loaded 2-core host, torch 2.13), which every
``flwr-clientapp`` process would pay inside its first step. :class:`SGD` applies the
same update as ``torch.optim.SGD``'s single-tensor CPU path (dampening 0, no Nesterov):
``g ← ∇ + λ·w``; ``b ← g`` on the first step, else ``b ← μ·b + g``; ``w ← w − η·b``, with the
same tensor operations in the same order, so results are bitwise equal
(``tests/unit/test_sgd.py``). Robbins & Monro (1951); momentum as in Sutskever et al. (2013)
and PyTorch's ``torch.optim.SGD``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch


class StepOptimizer(Protocol):
    """What fedhet's training loops need from an optimiser."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients."""

    def step(self) -> None:
        """One update."""


class SGD:
    """SGD with momentum and weight decay over a fixed list of parameters.

    Parameters
    ----------
    params : Iterable[torch.nn.Parameter]
        The parameters to update (those without a gradient at a step are skipped).
    lr : float
        Learning rate η.
    momentum : float
        Momentum μ (0: none).
    weight_decay : float
        L2 coefficient λ added to the gradient.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (``None``, or zeros when ``set_to_none`` is False)."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self._buffers[i]
                if buf is None:
                    buf = torch.clone(grad).detach()
                    self._buffers[i] = buf
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1.0)
                grad = buf
            param.add_(grad, alpha=-self.lr)


__all__ = ["SGD", "StepOptimizer"]
