"""K-means, nearest centroid and purity (METHODS.md B9)."""

from __future__ import annotations

import numpy as np
import pytest

from fedhet.core.cluster import cluster_purity, kmeans_labels, nearest_centroid


def _planted(n_per: int = 8, groups: int = 3, dim: int = 40, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    truth = np.repeat(np.arange(groups), n_per)
    rows = centres[truth] + noise * rng.normal(size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return rows[order].astype(np.float32), truth[order]


@pytest.mark.parametrize("normalise", [False, True])
def test_kmeans_recovers_planted_groups(normalise: bool) -> None:
    rows, truth = _planted()
    labels, centroids = kmeans_labels(rows, k=3, seed=0, normalise=normalise)
    assert labels.shape == (24,)
    assert centroids.shape == (3, 40) and centroids.dtype == np.float32
    assert cluster_purity(labels, truth) == 1.0
    if normalise:
        norms = np.linalg.norm(centroids, axis=1)  # means of unit rows: just inside the sphere
        assert np.all((norms > 0.99) & (norms <= 1.0 + 1e-6))


def test_kmeans_is_seeded() -> None:
    rows, _ = _planted(noise=1.5, seed=3)
    a = kmeans_labels(rows, 3, seed=7)
    b = kmeans_labels(rows, 3, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_at_most_k_rows_are_their_own_clusters(n: int) -> None:
    rows = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 1
    labels, centroids = kmeans_labels(rows, k=3, seed=0)
    np.testing.assert_array_equal(labels, np.arange(n))
    np.testing.assert_array_equal(centroids, rows)
    _, normed = kmeans_labels(rows, k=3, seed=0, normalise=True)
    np.testing.assert_allclose(
        normed, rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-6
    )


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        kmeans_labels(np.zeros(5), 2, 0)
    with pytest.raises(ValueError, match="k must"):
        kmeans_labels(np.zeros((5, 2)), 0, 0)


def test_purity_by_hand() -> None:
    # contingency (pred x true): c0 {a:2}, c1 {a:1, b:1}, c2 {b:2}; best matching c0->a, c2->b
    assert cluster_purity([0, 0, 1, 1, 2, 2], ["a", "a", "a", "b", "b", "b"]) == pytest.approx(
        4 / 6
    )
    assert cluster_purity([2, 2, 0, 0, 1], [0, 0, 1, 1, 2]) == 1.0  # relabelled
    # one-to-one: a single cluster can match only one group -> 3/6, not a majority-vote 1.0
    assert cluster_purity([0] * 6, [0, 0, 0, 1, 1, 2]) == pytest.approx(3 / 6)
    # c0 {x:3, y:2}, c1 {x:2}: greedy c0->x gives 3 + 0; the optimum c0->y, c1->x gives 2 + 2
    pred = [0, 0, 0, 0, 0, 1, 1]
    true = ["x", "x", "x", "y", "y", "x", "x"]
    assert cluster_purity(pred, true) == pytest.approx(4 / 7)


def test_purity_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError):
        cluster_purity([0, 1], [0])


def test_nearest_centroid_cosine_vs_euclidean() -> None:
    centroids = np.array([[10.0, 1.0], [0.5, 0.5]])
    v = np.array([1.0, 0.0])
    assert nearest_centroid(v, centroids, "cosine") == 0  # cos 0.995 vs 0.707
    assert nearest_centroid(v, centroids, "euclidean") == 1  # 9.06 vs 0.71
    assert nearest_centroid(v, centroids) == 0  # default cosine
    with pytest.raises(ValueError, match="metric"):
        nearest_centroid(v, centroids, "manhattan")
    with pytest.raises(ValueError):
        nearest_centroid(v, np.zeros((2, 3)))


def test_kmeans_accepts_63_bit_seeds():
    """fedhet derives 63-bit seeds; scikit-learn only takes [0, 2**32)."""
    from fedhet.core.cluster import kmeans_labels
    from fedhet.core.seeding import derive_seed

    rows = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]], dtype=np.float32)
    seed = derive_seed(0, 1, "kmeans")
    assert seed >= 2**32
    labels, _ = kmeans_labels(rows, 2, seed)
    assert labels[0] == labels[1] != labels[2] == labels[3]
