"""Seeded label-based partitioners for simulated federations (METHODS.md B11).

Every partitioner takes integer labels and returns one sorted index array per client; the arrays
are disjoint. The same arguments always give the same split (NumPy ``default_rng`` seeded from
``seed``), so a ClientApp that runs as a fresh process per message rebuilds its own part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from fedhet.data.catalog import PARTITIONS

__all__ = [
    "GROUP_HOMES",
    "PARTITIONERS",
    "balanced_dirichlet",
    "class_histogram",
    "dirichlet",
    "dirichlet_shards",
    "group_correlated",
    "iid",
    "partition",
    "pathological",
]

log = logging.getLogger(__name__)

#: Partitioner names, from :data:`fedhet.data.catalog.PARTITIONS`.
PARTITIONERS: tuple[str, ...] = PARTITIONS

_MAX_DIRICHLET_TRIES = 1000

#: Home classes of each device class for ``group-correlated`` (METHODS.md §6.6, split C2).
GROUP_HOMES: dict[str, tuple[int, ...]] = {
    "strong": (0, 1, 2),
    "medium": (3, 4, 5),
    "weak": (6, 7, 8, 9),
}
#: Share of a class kept in its home device class (METHODS.md §6.6: 80 %).
GROUP_HOME_SHARE = 0.8


def _as_labels(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


def _check_clients(num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")


def _class_pools(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled indices of each class ``0..max(labels)``."""
    num_classes = int(labels.max()) + 1 if labels.size else 0
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` proportional to ``weights`` (Hamilton's method)."""
    w = np.asarray(weights, dtype=np.float64)
    if total == 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def _finish(parts: list[list[np.ndarray]] | list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for part in parts:
        if isinstance(part, list):
            arr = np.concatenate(part) if part else np.zeros(0, dtype=np.int64)
        else:
            arr = part
        out.append(np.sort(arr.astype(np.int64, copy=False)))
    return out


def class_histogram(labels: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """Count samples per class.

    Parameters
    ----------
    labels : array of int
        Labels in ``[0, num_classes)``.
    num_classes : int
        Length of the histogram.

    Returns
    -------
    np.ndarray
        int64 counts, shape ``(num_classes,)``.
    """
    arr = _as_labels(labels)
    if arr.size and arr.max() >= num_classes:
        raise ValueError(f"label {int(arr.max())} outside [0, {num_classes})")
    return np.bincount(arr, minlength=num_classes).astype(np.int64)


def iid(labels: np.ndarray | Sequence[int], num_clients: int, seed: int) -> list[np.ndarray]:
    """Split uniformly at random into ``num_clients`` parts whose sizes differ by at most one.

    Parameters
    ----------
    labels : array of int
        One label per sample (only the count is used).
    num_clients : int
        Number of parts.
    seed : int
        Seed of the permutation.

    Returns
    -------
    list of np.ndarray
        Sorted, disjoint index arrays covering every sample.
    """
    arr = _as_labels(labels)
    _check_clients(num_clients)
    rng = np.random.default_rng(seed)
    return _finish(list(np.array_split(rng.permutation(arr.size), num_clients)))


def _dirichlet_counts(
    pools: list[np.ndarray], num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Per class c, shares p_c ~ Dir(alpha·1_K) over the K clients, rounded to counts; (C, K)."""
    counts = np.zeros((len(pools), num_clients), dtype=np.int64)
    for c, pool in enumerate(pools):
        shares = rng.dirichlet(np.full(num_clients, alpha))
        counts[c] = _largest_remainder(len(pool), shares)
    return counts


def dirichlet(
    labels: np.ndarray | Sequence[int],
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label-skewed split: each class is shared among clients with Dir(alpha) proportions.

    For every class c, shares p_c ~ Dir(alpha·1_K) over the K clients and client k gets
    round(p_{c,k}·n_c) of class c's samples (Yurochkin et al., "Bayesian Nonparametric Federated
    Learning of Neural Networks", ICML 2019, §5; Wang et al., FedMA, ICLR 2020, §4). The draw is
    repeated until every client holds at least ``min_size`` samples. Small alpha gives few classes
    per client and very unequal sizes; large alpha tends to IID.

    Parameters
    ----------
    labels : array of int
        One label per sample.
    num_clients : int
        Number of clients K.
    alpha : float
        Dirichlet concentration (> 0).
    seed : int
        Seed of all draws.
    min_size : int, default 1
        Smallest acceptable client size.

    Returns
    -------
    list of np.ndarray
        Sorted, disjoint index arrays covering every sample.

    Raises
    ------
    ValueError
        ``alpha <= 0``, or no draw met ``min_size`` within 1000 tries.
    """
    arr = _as_labels(labels)
    _check_clients(num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if num_clients * min_size > arr.size:
        raise ValueError(
            f"{num_clients} clients x min_size {min_size} exceeds the {arr.size} samples"
        )
    rng = np.random.default_rng(seed)
    pools = _class_pools(arr, rng)
    for attempt in range(1, _MAX_DIRICHLET_TRIES + 1):
        counts = _dirichlet_counts(pools, num_clients, alpha, rng)
        if counts.sum(axis=0).min() >= min_size:
            if attempt > 1:
                log.debug("dirichlet(alpha=%s): accepted draw %d", alpha, attempt)
            break
    else:
        raise ValueError(
            f"dirichlet(alpha={alpha}): no draw gave every one of {num_clients} clients "
            f">= {min_size} samples in {_MAX_DIRICHLET_TRIES} tries; raise alpha or lower min_size"
        )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, pool in enumerate(pools):
        bounds = np.concatenate([[0], np.cumsum(counts[c])])
        for k in range(num_clients):
            parts[k].append(pool[bounds[k] : bounds[k + 1]])
    return _finish(parts)


def balanced_dirichlet(
    labels: np.ndarray | Sequence[int],
    num_clients: int,
    alpha: float,
    n_per_client: int,
    seed: int,
) -> list[np.ndarray]:
    """Equal-size clients whose class mix follows a Dir(alpha) prior.

    Client k draws a class prior q_k ~ Dir(alpha·1_C) (Hsu et al., "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification", arXiv 1909.06335, §3)
    and receives ``n_per_client`` samples, drawn without replacement, with class counts
    ~ Multinomial(n, q_k). When a class runs out, the surplus is redrawn from q_k restricted to
    the classes that still have samples (from their remaining sizes if q_k puts no mass there).

    Parameters
    ----------
    labels : array of int
        One label per sample.
    num_clients : int
        Number of clients.
    alpha : float
        Dirichlet concentration (> 0).
    n_per_client : int
        Samples per client; ``num_clients * n_per_client`` must not exceed the data size.
    seed : int
        Seed of all draws.

    Returns
    -------
    list of np.ndarray
        Sorted, disjoint index arrays, each of length ``n_per_client``.
    """
    arr = _as_labels(labels)
    _check_clients(num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if n_per_client < 1:
        raise ValueError(f"n_per_client must be >= 1, got {n_per_client}")
    if num_clients * n_per_client > arr.size:
        raise ValueError(
            f"{num_clients} clients x {n_per_client} samples exceeds the {arr.size} samples"
        )
    rng = np.random.default_rng(seed)
    pools = _class_pools(arr, rng)
    num_classes = len(pools)
    remaining = np.array([len(p) for p in pools], dtype=np.int64)
    taken = np.zeros(num_classes, dtype=np.int64)
    parts: list[list[np.ndarray]] = []
    for _ in range(num_clients):
        prior = rng.dirichlet(np.full(num_classes, alpha))
        counts = np.zeros(num_classes, dtype=np.int64)
        need = n_per_client
        while need > 0:
            room = remaining - counts
            weights = np.where(room > 0, prior, 0.0)
            if weights.sum() <= 0:
                weights = room.astype(np.float64)
            draw = rng.multinomial(need, weights / weights.sum())
            counts += np.minimum(draw, room)
            need = n_per_client - int(counts.sum())
        parts.append([pools[c][taken[c] : taken[c] + counts[c]] for c in range(num_classes)])
        taken += counts
        remaining -= counts
    return _finish(parts)


def dirichlet_shards(
    labels: np.ndarray | Sequence[int], num_clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Dirichlet allocation, then equal-size contiguous shards.

    Each class is allocated to clients with Dir(alpha) shares as in :func:`dirichlet`; the
    samples are laid out client by client (classes in order within a client) and the sequence is
    cut into ``num_clients`` shards of ``floor(N / num_clients)`` samples (CoCoFL, arXiv
    2203.05468, §5 non-IID setup). Sizes are equal, label skew follows the allocation; the
    ``N mod num_clients`` trailing samples are unused.

    Parameters
    ----------
    labels : array of int
        One label per sample.
    num_clients : int
        Number of clients.
    alpha : float
        Dirichlet concentration (> 0).
    seed : int
        Seed of all draws.

    Returns
    -------
    list of np.ndarray
        Sorted, disjoint index arrays of equal length.
    """
    arr = _as_labels(labels)
    _check_clients(num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    pools = _class_pools(arr, rng)
    counts = _dirichlet_counts(pools, num_clients, alpha, rng)
    starts = np.zeros(len(pools), dtype=np.int64)
    order: list[np.ndarray] = []
    for k in range(num_clients):
        for c, pool in enumerate(pools):
            order.append(pool[starts[c] : starts[c] + counts[c, k]])
            starts[c] += counts[c, k]
    sequence = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    size = arr.size // num_clients
    return _finish([sequence[k * size : (k + 1) * size] for k in range(num_clients)])


def _assign_classes(
    num_classes: int, num_clients: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """k distinct classes per client, each pick among the classes with fewest holders so far."""
    holders = np.zeros(num_classes, dtype=np.int64)
    chosen = []
    for _ in range(num_clients):
        tie_break = rng.random(num_classes)
        picks = np.lexsort((tie_break, holders))[:k]
        holders[picks] += 1
        chosen.append(np.sort(picks))
    return chosen


def pathological(
    labels: np.ndarray | Sequence[int], num_clients: int, k: int, seed: int
) -> list[np.ndarray]:
    """Pathological split: every client holds exactly ``k`` classes.

    Classes are assigned so that holder counts differ by at most one across classes (ties broken
    at random). Each (client, held class) pair draws a weight s ~ U(0.4, 0.6); class c is divided
    among its holders in proportion s / Σ_holders s (METHODS.md B11). A class nobody holds (when
    ``num_clients * k`` < number of classes) is left out.

    Parameters
    ----------
    labels : array of int
        One label per sample.
    num_clients : int
        Number of clients.
    k : int
        Classes per client, ``1 <= k <= number of classes``.
    seed : int
        Seed of all draws.

    Returns
    -------
    list of np.ndarray
        Sorted, disjoint index arrays.
    """
    arr = _as_labels(labels)
    _check_clients(num_clients)
    rng = np.random.default_rng(seed)
    pools = _class_pools(arr, rng)
    num_classes = len(pools)
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}], got {k}")
    chosen = _assign_classes(num_classes, num_clients, k, rng)
    weights = np.zeros((num_classes, num_clients))
    for client, classes in enumerate(chosen):
        weights[classes, client] = rng.uniform(0.4, 0.6, size=len(classes))
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, pool in enumerate(pools):
        holders = np.flatnonzero(weights[c] > 0)
        if holders.size == 0:
            continue
        counts = _largest_remainder(len(pool), weights[c, holders])
        if len(pool) >= holders.size:
            for i in np.flatnonzero(counts == 0):
                counts[np.argmax(counts)] -= 1
                counts[i] = 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for j, holder in enumerate(holders):
            parts[holder].append(pool[bounds[j] : bounds[j + 1]])
    return _finish(parts)


def group_correlated(
    labels: np.ndarray | Sequence[int],
    group_of_client: list[int],
    home_classes: dict[int, list[int]],
    home_share: float = 0.8,
    seed: int = 0,
) -> list[np.ndarray]:
    """Label skew correlated with device class (METHODS.md §6.6, split C2).

    Each class gives ``home_share`` of its samples to the clients of its home group and
    ``(1 - home_share) / (G - 1)`` to each of the other G - 1 groups; a class with no home is
    spread evenly over all groups. Within a group, a class's samples are split equally
    (differing by at most one) among the group's clients, in random order.

    Parameters
    ----------
    labels : array of int
        One label per sample.
    group_of_client : list of int
        Group (device class) of each client; its length is the number of clients.
    home_classes : dict of int to list of int
        Group -> the classes whose home it is; a class may have at most one home.
    home_share : float, default 0.8
        Fraction of a class kept in its home group, in ``[0, 1]``.
    seed : int, default 0
        Seed of all draws.

    Returns
    -------
    list of np.ndarray
        Sorted, disjoint index arrays covering every sample.
    """
    arr = _as_labels(labels)
    _check_clients(len(group_of_client))
    if not 0.0 <= home_share <= 1.0:
        raise ValueError(f"home_share must be in [0, 1], got {home_share}")
    groups = sorted(set(group_of_client))
    home_of: dict[int, int] = {}
    for group, classes in home_classes.items():
        if group not in groups:
            raise ValueError(f"home group {group} has no clients (groups: {groups})")
        for c in classes:
            if c in home_of:
                raise ValueError(f"class {c} has two home groups: {home_of[c]} and {group}")
            home_of[c] = group
    members = {g: np.flatnonzero(np.asarray(group_of_client) == g) for g in groups}
    rng = np.random.default_rng(seed)
    pools = _class_pools(arr, rng)
    parts: list[list[np.ndarray]] = [[] for _ in group_of_client]
    for c, pool in enumerate(pools):
        if c in home_of and len(groups) > 1:
            other = (1.0 - home_share) / (len(groups) - 1)
            shares = np.array([home_share if g == home_of[c] else other for g in groups])
        else:
            shares = np.ones(len(groups))
        group_counts = _largest_remainder(len(pool), shares)
        bounds = np.concatenate([[0], np.cumsum(group_counts)])
        for gi, g in enumerate(groups):
            chunk = pool[bounds[gi] : bounds[gi + 1]]
            clients = rng.permutation(members[g])
            for client, piece in zip(clients, np.array_split(chunk, len(clients)), strict=True):
                parts[client].append(piece)
    return _finish(parts)


def _partition_iid(
    labels: np.ndarray, num_clients: int, *, alpha: float, k: int, n_per_client: int, seed: int
) -> list[np.ndarray]:
    return iid(labels, num_clients, seed)


def _partition_dirichlet(
    labels: np.ndarray, num_clients: int, *, alpha: float, k: int, n_per_client: int, seed: int
) -> list[np.ndarray]:
    return dirichlet(labels, num_clients, alpha, seed)


def _partition_balanced(
    labels: np.ndarray, num_clients: int, *, alpha: float, k: int, n_per_client: int, seed: int
) -> list[np.ndarray]:
    return balanced_dirichlet(labels, num_clients, alpha, n_per_client, seed)


def _partition_shards(
    labels: np.ndarray, num_clients: int, *, alpha: float, k: int, n_per_client: int, seed: int
) -> list[np.ndarray]:
    return dirichlet_shards(labels, num_clients, alpha, seed)


def _partition_pathological(
    labels: np.ndarray, num_clients: int, *, alpha: float, k: int, n_per_client: int, seed: int
) -> list[np.ndarray]:
    return pathological(labels, num_clients, k, seed)


def _partition_group_correlated(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float,
    k: int,
    n_per_client: int,
    seed: int,
    groups: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """:func:`group_correlated` with device-class names as groups and :data:`GROUP_HOMES`.

    A device class absent from ``groups`` has no home: its classes are spread evenly over the
    present ones (logged).
    """
    if groups is None or len(groups) != num_clients:
        raise ValueError(
            "partition 'group-correlated' needs the device class of every client "
            f"(got {None if groups is None else len(groups)} for {num_clients} clients)"
        )
    names = sorted(set(groups))
    ids = [names.index(g) for g in groups]
    homes = {names.index(g): list(cs) for g, cs in GROUP_HOMES.items() if g in names}
    absent = [g for g in GROUP_HOMES if g not in names]
    if absent:
        log.info("group-correlated: no %s devices; their home classes are spread evenly", absent)
    return group_correlated(labels, ids, homes, home_share=GROUP_HOME_SHARE, seed=seed)


_Partitioner = Callable[..., list[np.ndarray]]

_REGISTRY: dict[str, _Partitioner] = {
    "iid": _partition_iid,
    "dirichlet": _partition_dirichlet,
    "balanced-dirichlet": _partition_balanced,
    "dirichlet-shards": _partition_shards,
    "pathological": _partition_pathological,
    "group-correlated": _partition_group_correlated,
}


def partition(
    labels: np.ndarray | Sequence[int],
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    k: int = 2,
    n_per_client: int | None = None,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Split by the partitioner named ``scheme`` (one of :data:`PARTITIONERS`).

    Parameters
    ----------
    labels : array of int
        One label per sample.
    num_clients : int
        Number of clients.
    scheme : str
        ``iid``, ``dirichlet``, ``balanced-dirichlet``, ``dirichlet-shards``, ``pathological``
        or ``group-correlated``.
    alpha : float, default 0.5
        Dirichlet concentration (Dirichlet schemes).
    k : int, default 2
        Classes per client (``pathological``).
    n_per_client : int, optional
        Samples per client (``balanced-dirichlet``); default ``len(labels) // num_clients``.
    seed : int, default 0
        Seed of all draws.
    groups : sequence of str, optional
        Device class of every client (``group-correlated`` only, required there).

    Returns
    -------
    list of np.ndarray
        Sorted, disjoint index arrays, one per client.

    Raises
    ------
    ValueError
        Unknown scheme (the message lists :data:`PARTITIONERS`).
    """
    if scheme not in _REGISTRY:
        raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {PARTITIONERS}")
    arr = _as_labels(labels)
    _check_clients(num_clients)
    n = n_per_client if n_per_client is not None else arr.size // num_clients
    extra = {"groups": groups} if scheme == "group-correlated" else {}
    return _REGISTRY[scheme](arr, num_clients, alpha=alpha, k=k, n_per_client=n, seed=seed, **extra)
