"""LoRA adapters through peft and their flat state (METHODS.md B8; FL-TAC, arXiv 2404.15384).

Adapter state = LoRA A/B of the target modules plus the classification head, which peft keeps in
``modules_to_save``. Keys are those of ``get_peft_model_state_dict`` (adapter name stripped),
sorted; that order is used for every flattening, so the K-means input of FL-TAC never silently
permutes (METHODS.md §4.7).

Multi-slot devices (FL-TAC) keep one backbone with one peft adapter and swap slot states in and
out with :func:`set_adapter_state`, instead of one named peft adapter per slot. Why: memory and
the forward graph stay the same whatever the number of slots, FL-TAC and FedIT share one code path,
and a slot state is exactly what travels on the wire, so nothing can drift between the resident
copy and the sent one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from torch import nn

logger = logging.getLogger(__name__)

_LORA_MARKERS = (".lora_A.", ".lora_B.")


def _head_module_names(base: nn.Module) -> list[str]:
    for name in ("classifier", "score"):
        if isinstance(getattr(base, name, None), nn.Module):
            return [name]
    raise ValueError(
        f"{type(base).__name__} has no 'classifier' or 'score' head to keep in modules_to_save"
    )


def build_lora_model(
    base: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    seed: int,
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap a sequence classifier with one LoRA adapter (METHODS.md B8).

    ``get_peft_model(LoraConfig(r, lora_alpha, lora_dropout, target_modules))`` with the head in
    ``modules_to_save``; the backbone is frozen. LoRA A gets peft's random (Kaiming-uniform)
    init drawn from ``seed``, B = 0 (FL-TAC §4.2 step 1). ``base`` is modified in place.

    Parameters
    ----------
    base : torch.nn.Module
        A ``*ForSequenceClassification`` model with a ``classifier`` (or ``score``) head.
    rank, alpha, dropout : int, float, float
        LoRA rank r, ``lora_alpha`` (scaling alpha/r) and dropout.
    target_modules : list of str
        Module names to adapt, e.g. ``["query", "value"]``.
    seed : int
        Seed of the LoRA A init; the global torch RNG is left as it was.
    adapter_name : str
        peft adapter name.

    Returns
    -------
    peft.PeftModel
    """
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # annotated int; peft scales by alpha / r
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=_head_module_names(base),
        task_type="SEQ_CLS",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config, adapter_name=adapter_name)
    logger.debug("LoRA r=%d on %s: %d trainable", rank, target_modules, count_trainable(model))
    return model


def get_adapter_state(
    peft_model: PeftModel, adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """Adapter state in canonical form (METHODS.md B8).

    Parameters
    ----------
    peft_model : peft.PeftModel
    adapter_name : str

    Returns
    -------
    dict of str to torch.Tensor
        ``get_peft_model_state_dict(adapter_name=...)`` with keys sorted, tensors detached,
        cloned, on CPU.
    """
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    marker = f".{adapter_name}."
    if any(marker in k for k in state):
        raise RuntimeError(f"peft left adapter name {adapter_name!r} in state keys")
    return {k: state[k].detach().cpu().clone() for k in sorted(state)}


def set_adapter_state(
    peft_model: PeftModel, state: Mapping[str, torch.Tensor], adapter_name: str = "default"
) -> None:
    """Load a canonical adapter state into ``adapter_name`` (METHODS.md B8).

    Parameters
    ----------
    peft_model : peft.PeftModel
    state : mapping of str to torch.Tensor
        Exactly the keys and shapes :func:`get_adapter_state` returns for this model.
    adapter_name : str

    Raises
    ------
    ValueError
        Naming missing keys, unexpected keys and shape mismatches.
    """
    reference = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
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
        raise ValueError(f"adapter state for {adapter_name!r}: " + "; ".join(problems))
    converted = {
        k: torch.as_tensor(v).to(dtype=reference[k].dtype, device=reference[k].device)
        for k, v in state.items()
    }
    set_peft_model_state_dict(peft_model, converted, adapter_name=adapter_name)


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
    "build_lora_model",
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
