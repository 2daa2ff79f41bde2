"""Plain local training and evaluation loops (pure PyTorch, no Flower import).

Used by the devices of the image methods (through :mod:`fedhet.client.training`) and by the
server's global-test evaluation, so both score a model the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fedhet.core.sgd import SGD


def train_sgd(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    params: Iterable[nn.Parameter] | None = None,
) -> dict[str, float]:
    """One SGD step per batch with a fresh optimiser (METHODS.md §0: never reuse optimiser state).

    Returns ``{"train-loss": mean loss over steps, "train-seconds": wall time, "train-steps": n}``.
    """
    model.train()
    opt = SGD(
        list(params) if params is not None else model.parameters(),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    start = time.perf_counter()
    total, steps = 0.0, 0
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        steps += 1
    return {
        "train-loss": total / max(steps, 1),
        "train-seconds": time.perf_counter() - start,
        "train-steps": float(steps),
    }


def evaluate_model(model: nn.Module, data: Any, batch_size: int = 256) -> tuple[int, int, float]:
    """``(correct, total, summed loss)`` of ``model`` on a TensorData; accuracy = correct / total."""
    correct, total, loss, _ = evaluate_predictions(model, data, batch_size)
    return correct, total, loss


@torch.no_grad()
def evaluate_predictions(
    model: nn.Module, data: Any, batch_size: int = 256
) -> tuple[int, int, float, list[int]]:
    """:func:`evaluate_model` plus how many samples the model predicted as each class.

    Returns
    -------
    tuple[int, int, float, list[int]]
        ``(correct, total, summed loss, counts)``; ``counts[k]`` is the number of samples whose
        arg-max logit is class ``k`` (one entry per logit, so ``sum(counts) == total``).
    """
    model.eval()
    correct, total, loss = 0, 0, 0.0
    counts: torch.Tensor | None = None
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size]
        y = data.y[start : start + batch_size]
        logits = model(x)
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(1)
        correct += int((pred == y).sum())
        total += int(y.numel())
        batch_counts = torch.bincount(pred, minlength=logits.shape[1])
        counts = batch_counts if counts is None else counts + batch_counts
    return correct, total, loss, [] if counts is None else [int(c) for c in counts]
