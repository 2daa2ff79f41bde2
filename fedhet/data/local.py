"""Per-client post-processing of a partition: sample caps and local test sets (METHODS.md §0).

Seeded like :mod:`fedhet.data.partition`, so a ClientApp that runs as a fresh process per message
rebuilds the same subsets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedhet.data.partition import _as_labels, _largest_remainder, class_histogram

__all__ = ["cap_per_client", "local_test_indices"]

log = logging.getLogger(__name__)


def cap_per_client(parts: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """Keep at most ``n`` samples per client, chosen uniformly without replacement.

    Parameters
    ----------
    parts : list of np.ndarray
        Index arrays, one per client.
    n : int
        Cap (>= 1).
    seed : int
        Seed; client k uses the stream ``(seed, k)``, so a client's draw does not depend on others.

    Returns
    -------
    list of np.ndarray
        Sorted index arrays, each a subset of its input.
    """
    if n < 1:
        raise ValueError(f"cap n must be >= 1, got {n}")
    out = []
    for k, part in enumerate(parts):
        arr = np.asarray(part, dtype=np.int64)
        if arr.size > n:
            arr = np.random.default_rng([seed, k]).choice(arr, size=n, replace=False)
        out.append(np.sort(arr))
    return out


def local_test_indices(
    test_labels: np.ndarray | Sequence[int],
    train_labels: np.ndarray | Sequence[int],
    size: int,
    num_classes: int,
    seed: int,
) -> np.ndarray:
    """Draw a client's local test set from the global test split (METHODS.md §0, Evaluation).

    Class counts are ``size`` times the client's training class proportions, rounded by largest
    remainder; samples are drawn without replacement within each class. If the test split has
    too few samples of a class, the shortfall is redistributed over the client's other classes
    in proportion to their training share (a warning is logged if the set still ends up smaller).

    Parameters
    ----------
    test_labels : array of int
        Labels of the global test split.
    train_labels : array of int
        Labels of the client's training samples (non-empty).
    size : int
        Target local test size (>= 1).
    num_classes : int
        Number of classes.
    seed : int
        Seed of the draw.

    Returns
    -------
    np.ndarray
        Sorted indices into the test split.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    train_hist = class_histogram(train_labels, num_classes)
    if train_hist.sum() == 0:
        raise ValueError("train_labels is empty: cannot derive local test class proportions")
    test = _as_labels(test_labels)
    test_hist = class_histogram(test, num_classes)
    counts = np.minimum(_largest_remainder(size, train_hist), test_hist)
    while counts.sum() < size:
        room = test_hist - counts
        weights = np.where(room > 0, train_hist, 0)
        if weights.sum() == 0:
            log.warning(
                "local test set has %d samples, fewer than the %d asked: the client's classes "
                "are exhausted in the test split",
                int(counts.sum()),
                size,
            )
            break
        counts += np.minimum(_largest_remainder(size - int(counts.sum()), weights), room)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(test == c), size=int(counts[c]), replace=False)
        for c in range(num_classes)
        if counts[c] > 0
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
