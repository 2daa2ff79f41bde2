"""K-means over adapter vectors, nearest centroid, cluster purity (METHODS.md B9; FL-TAC §4.2)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

_EPS = 1e-12


def _l2_normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, _EPS)


def kmeans_labels(
    rows: np.ndarray, k: int, seed: int, normalise: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster flattened adapter rows (METHODS.md B9).

    scikit-learn ``KMeans(n_clusters=k, n_init=10, random_state=seed)`` on float32 rows; with
    ``normalise`` the rows are L2-normalised first (cosine K-means). With at most ``k`` rows no
    clustering is done: each row is its own cluster (FL-TAC §4.2 step 3).

    Parameters
    ----------
    rows : numpy.ndarray
        Shape (n, d), one flattened adapter per row, canonical order.
    k : int
        Number of clusters (K = N tasks for FL-TAC).
    seed : int
        ``random_state`` of K-means (any int; reduced modulo 2**32 for scikit-learn).
    normalise : bool
        L2-normalise rows before clustering.

    Returns
    -------
    tuple of (numpy.ndarray, numpy.ndarray)
        ``labels`` (n,) int64 and ``centroids``: (k, d) float32, or the (normalised) rows
        themselves, (n, d), when n <= k.
    """
    data = np.asarray(rows, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"rows must be 2-D (n, d), got shape {data.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if normalise:
        data = _l2_normalise(data)
    n = data.shape[0]
    if n <= k:
        return np.arange(n, dtype=np.int64), data.copy()
    # scikit-learn takes seeds in [0, 2**32); fedhet's derived seeds are 63-bit
    model = KMeans(n_clusters=k, n_init=10, random_state=seed % 2**32).fit(data)
    return model.labels_.astype(np.int64), model.cluster_centers_.astype(np.float32)


def nearest_centroid(v: np.ndarray, centroids: np.ndarray, metric: str = "cosine") -> int:
    """Index of the centroid nearest to ``v`` (METHODS.md B9; FL-TAC ``fltac.stale=nearest``).

    Parameters
    ----------
    v : numpy.ndarray
        Shape (d,).
    centroids : numpy.ndarray
        Shape (k, d).
    metric : {"cosine", "euclidean"}
        Cosine: largest cosine similarity; Euclidean: smallest L2 distance. Ties go to the lowest
        index.

    Returns
    -------
    int
    """
    vec = np.asarray(v, dtype=np.float64).reshape(-1)
    cents = np.asarray(centroids, dtype=np.float64)
    if cents.ndim != 2 or cents.shape[1] != vec.shape[0] or cents.shape[0] == 0:
        raise ValueError(f"centroids must be (k, {vec.shape[0]}), got {cents.shape}")
    if metric == "cosine":
        sims = _l2_normalise(cents) @ (vec / max(float(np.linalg.norm(vec)), _EPS))
        return int(np.argmax(sims))
    if metric == "euclidean":
        return int(np.argmin(np.linalg.norm(cents - vec, axis=1)))
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def cluster_purity(labels_pred: np.ndarray, labels_true: np.ndarray) -> float:
    """Fraction of items whose cluster maps to their true group under the best one-to-one matching.

    Clusters and true groups are matched by the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment`` maximising the contingency counts, METHODS.md B9);
    items in an unmatched cluster count as wrong. 1.0 means the clustering equals the ground truth
    up to relabelling.

    Parameters
    ----------
    labels_pred, labels_true : numpy.ndarray
        Shape (n,), any hashable labels.

    Returns
    -------
    float
        In [0, 1]; 1.0 for empty input.
    """
    pred = np.asarray(labels_pred).reshape(-1)
    true = np.asarray(labels_true).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"label arrays differ in length: {pred.shape} vs {true.shape}")
    if pred.size == 0:
        return 1.0
    pred_ids = np.unique(pred, return_inverse=True)[1]
    true_ids = np.unique(true, return_inverse=True)[1]
    counts = np.zeros((pred_ids.max() + 1, true_ids.max() + 1), dtype=np.int64)
    np.add.at(counts, (pred_ids, true_ids), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / pred.size)


__all__ = ["cluster_purity", "kmeans_labels", "nearest_centroid"]
