"""Majority-class share: how far a classifier has collapsed onto one class (no torch, no Flower).

A submodel whose accuracy sits at chance may be predicting one class for everything (FedRolex's
smallest slice in the FIARSE benchmark's quick tier: 10.00 % global accuracy on a balanced
10-class test set). Its majority-class share, the fraction of its predictions that fall on its
most-predicted class, says so directly: 1.0 for a constant prediction, about ``1/C`` for a healthy
model on a balanced ``C``-class test set. The devices of the image methods report their
predictions per class (:data:`PREDICTED_KEY`); the server pools the counts per submodel size
(METHODS.md §7.2 step 7's per-size metrics) and computes the share of the pooled counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: Evaluate-reply metric of the image methods: local-test samples predicted as each class
#: (written by the devices, checked and pooled by the server; both import the name from here).
PREDICTED_KEY = "eval-predicted"


def majority_share(counts: Sequence[int] | np.ndarray) -> float | None:
    """Fraction of the predictions that fall on the single most-predicted class.

    1.0 means the model predicts one class for every sample; a healthy model on a balanced
    ``C``-class test set is near ``1/C``. The share is never below ``1/C`` (pigeonhole), so
    ``[1/C, 1]`` is its range. Pool counts over devices before calling this (a pooled share,
    not a mean of per-device shares).

    Parameters
    ----------
    counts : Sequence[int] | np.ndarray
        Number of predictions per class.

    Returns
    -------
    float | None
        ``max(counts) / sum(counts)``; ``None`` when there are no predictions.
    """
    arr = np.asarray(counts, dtype=np.int64)
    if arr.size == 0 or int(arr.sum()) <= 0:
        return None
    if int(arr.min()) < 0:
        raise ValueError(f"negative prediction count in {arr.tolist()}")
    return float(arr.max() / arr.sum())


def pool_counts(counts: Iterable[Sequence[int]]) -> np.ndarray:
    """Element-wise sum of per-device prediction counts (shorter lists padded with zeros)."""
    rows = [np.asarray(c, dtype=np.int64) for c in counts]
    out = np.zeros(max((r.size for r in rows), default=0), dtype=np.int64)
    for r in rows:
        out[: r.size] += r
    return out
