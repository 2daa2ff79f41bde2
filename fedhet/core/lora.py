"""LoRA adapters through peft and their flat state (METHODS.md B8; FL-TAC, arXiv 2404.15384).

Adapter state = LoRA A/B of the target modules plus the classification head, which peft keeps in
``modules_to_save``. Keys are those of ``get_peft_model_state_dict`` (adapter name stripped),
sorted; that order is used for every flattening, so the K-means input of FL-TAC never silently
permutes (METHODS.md §4.7).

Multi-slot devices (FL-TAC) keep one backbone with one trainable peft adapter and swap slot states
in and out with :func:`set_adapter_state`, instead of one named peft adapter per slot. Why: memory
and the forward graph stay the same whatever the number of slots, FL-TAC and FedIT share one code
path, and a slot state is exactly what travels on the wire, so nothing can drift between the
resident copy and the sent one. The seeded initial state v⁰ is a second, frozen named adapter
(:data:`fedhet.models.text.INITIAL_ADAPTER`); every function here takes the adapter name.
The models themselves are built by :func:`fedhet.models.text.text_lora_model`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

logger = logging.getLogger(__name__)

_LORA_MARKERS = (".lora_A.", ".lora_B.")


def _adapter(peft_model: PeftModel, adapter_name: str | None) -> str:
    return str(peft_model.active_adapter) if adapter_name is None else adapter_name


def get_adapter_state(
    peft_model: PeftModel, adapter_name: str | None = None
) -> dict[str, torch.Tensor]:
    """Adapter state in canonical form (METHODS.md B8).

    Parameters
    ----------
    peft_model : peft.PeftModel
    adapter_name : str, optional
        A named peft adapter; ``None`` is the active one.

    Returns
    -------
    dict of str to torch.Tensor
        ``get_peft_model_state_dict(adapter_name=...)`` with keys sorted, tensors detached,
        cloned, on CPU.
    """
    name = _adapter(peft_model, adapter_name)
    state = get_peft_model_state_dict(peft_model, adapter_name=name)
    left = re.compile(rf"\.(lora_A|lora_B|modules_to_save)\.{re.escape(name)}\.")
    if any(left.search(k) for k in state):
        raise RuntimeError(f"peft left adapter name {name!r} in state keys")
    return {k: state[k].detach().cpu().clone() for k in sorted(state)}


def set_adapter_state(
    peft_model: PeftModel, state: Mapping[str, torch.Tensor], adapter_name: str | None = None
) -> None:
    """Load a canonical adapter state into a named adapter (METHODS.md B8).

    Parameters
    ----------
    peft_model : peft.PeftModel
    state : mapping of str to torch.Tensor
        Exactly the keys and shapes :func:`get_adapter_state` returns for this model.
    adapter_name : str, optional
        A named peft adapter; ``None`` is the active one.

    Raises
    ------
    ValueError
        Naming missing keys, unexpected keys and shape mismatches.
    """
    name = _adapter(peft_model, adapter_name)
    reference = get_peft_model_state_dict(peft_model, adapter_name=name)
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    mismatched = [
        f"{k}: expected {tuple(reference[k].shape)}, got {tuple(state[k].shape)}"
        for k in sorted(set(reference) & set(state))
        if tuple(reference[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatch {mismatched}")
    if problems:
        raise ValueError(f"adapter state for {name!r}: " + "; ".join(problems))
    converted = {
        k: torch.as_tensor(v).to(dtype=reference[k].dtype, device=reference[k].device)
        for k, v in state.items()
    }
    set_peft_model_state_dict(peft_model, converted, adapter_name=name)


def _is_lora_key(key: str) -> bool:
    return any(m in key for m in _LORA_MARKERS)


def lora_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """LoRA A/B keys of an adapter state, in canonical (sorted) order."""
    return sorted(k for k in state if _is_lora_key(k))


def head_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Head (``modules_to_save``) keys of an adapter state, in canonical (sorted) order."""
    return sorted(k for k in state if not _is_lora_key(k))


def flatten_lora(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """LoRA A/B tensors concatenated in canonical order as one float32 row (METHODS.md B9, §4.2).

    The head is excluded (``fltac.cluster-on`` = LoRA A/B, our choice); values are unscaled.
    """
    keys = lora_keys(state)
    if not keys:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(
        [state[k].detach().cpu().to(torch.float32).reshape(-1).numpy() for k in keys]
    ).astype(np.float32, copy=False)


def count_trainable(peft_model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (LoRA A/B + head for a LoRA model)."""
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def mask_logits(logits: torch.Tensor, num_classes_task: int) -> torch.Tensor:
    """Set logits of classes ``>= num_classes_task`` to −∞ (METHODS.md §4.4, C_max-way head).

    Parameters
    ----------
    logits : torch.Tensor
        Shape (..., C_max).
    num_classes_task : int
        Classes of the current task, 1 … C_max.

    Returns
    -------
    torch.Tensor
        A new tensor; the input is not modified.
    """
    c_max = logits.shape[-1]
    if not 1 <= num_classes_task <= c_max:
        raise ValueError(f"num_classes_task must be in [1, {c_max}], got {num_classes_task}")
    if num_classes_task == c_max:
        return logits
    absent = torch.arange(c_max, device=logits.device) >= num_classes_task
    return logits.masked_fill(absent, float("-inf"))


def _forward_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits


def _check_labels(labels: torch.Tensor, num_classes_task: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes_task):
        raise ValueError(
            f"labels must lie in [0, {num_classes_task}), got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def train_adapter(
    peft_model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    lr: float,
    num_classes_task: int,
) -> dict[str, float]:
    """One local training pass over ``batches`` (METHODS.md §4.2 client).

    A fresh AdamW over the trainable parameters (never reused across slots or calls, METHODS.md
    §0, §4.7), one step per batch, cross-entropy on masked logits.

    Parameters
    ----------
    peft_model : torch.nn.Module
        The LoRA model; only parameters with ``requires_grad`` are updated.
    batches : iterable of dict
        ``input_ids``, ``attention_mask``, ``labels``.
    lr : float
        AdamW learning rate.
    num_classes_task : int
        Classes of the task these batches belong to.

    Returns
    -------
    dict of str to float
        ``train-loss`` (sample-weighted mean of the per-step losses; 0.0 without batches) and
        ``train-seconds``.
    """
    start = time.perf_counter()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr)
    peft_model.train()
    loss_sum, seen = 0.0, 0
    for batch in batches:
        labels = batch["labels"].long()
        _check_labels(labels, num_classes_task)
        logits = mask_logits(_forward_logits(peft_model, batch), num_classes_task)
        loss = F.cross_entropy(logits, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_sum += float(loss.detach()) * len(labels)
        seen += len(labels)
    if seen == 0:
        logger.warning("train_adapter called without batches; nothing trained")
    return {
        "train-loss": loss_sum / seen if seen else 0.0,
        "train-seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def evaluate_adapter(
    peft_model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    num_classes_task: int,
) -> tuple[int, int, float]:
    """Correct predictions, items and summed cross-entropy on masked logits (METHODS.md §0).

    Accuracy is ``correct / total`` over all items, never a mean of batch accuracies.

    Returns
    -------
    tuple of (int, int, float)
        ``(correct, total, loss_sum)``.
    """
    peft_model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for batch in batches:
        labels = batch["labels"].long()
        _check_labels(labels, num_classes_task)
        logits = mask_logits(_forward_logits(peft_model, batch), num_classes_task)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
        total += len(labels)
    return correct, total, loss_sum


__all__ = [
    "count_trainable",
    "evaluate_adapter",
    "flatten_lora",
    "get_adapter_state",
    "head_keys",
    "lora_keys",
    "mask_logits",
    "set_adapter_state",
    "train_adapter",
]
