"""One simulated client's share of a dataset: training part plus local test set.

A deployed ClientApp is a fresh process per message, so the partition index lists are computed
once and cached on disk (one ``.npz`` per argument hash); every later call loads its own part. A
process that serves many simulated devices (Flower's simulation workers, the in-process grid)
reads that file once and keeps the index lists in memory (:data:`_PARTS`, a few bytes per sample),
instead of re-reading every partition's arrays on every message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedhet.data.base import TensorData
from fedhet.data.images import IMAGE_DATASETS, load_image_dataset
from fedhet.data.local import cap_per_client, local_test_indices
from fedhet.data.partition import partition

__all__ = ["ClientSplit", "default_cache_dir", "federated_split", "global_test"]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
#: Partition index lists already read in this process, by cache file (see the module docstring).
_PARTS: dict[Path, tuple[list[np.ndarray], list[np.ndarray]]] = {}
#: Label fingerprints of loaded datasets, by the label arrays' identity (hashing 60k labels per
#: message costs more than the lookup it keys).
_FINGERPRINTS: dict[int, tuple[object, str]] = {}


@dataclass
class ClientSplit:
    """A client's data.

    Attributes
    ----------
    train : TensorData
        The client's training samples.
    test : TensorData
        Its local test set, drawn from the global test split with the training class
        proportions (METHODS.md §0).
    partition_id : int
        Index of the client's partition.
    """

    train: TensorData
    test: TensorData
    partition_id: int


def default_cache_dir() -> Path:
    """Return ``~/.cache/fedhet/partitions`` (honours ``XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedhet" / "partitions"


def global_test(dataset: str, data_dir: str | None = None) -> TensorData:
    """Return the full test split of ``dataset`` (for server-side evaluation).

    Parameters
    ----------
    dataset : str
        One of :data:`fedhet.data.images.IMAGE_DATASETS`.
    data_dir : str, optional
        Data folder, see :func:`fedhet.data.images.load_image_dataset`.

    Returns
    -------
    TensorData
        The test split.
    """
    return _load(dataset, data_dir)[1]


def federated_split(
    dataset: str,
    num_partitions: int,
    partition_id: int,
    *,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    k: int = 2,
    seed: int = 0,
    max_train: int = 0,
    local_test_size: int = 500,
    data_dir: str | None = None,
    cache_dir: str | Path | None = None,
    groups: Sequence[str] | None = None,
) -> ClientSplit:
    """Return partition ``partition_id`` of ``dataset`` split ``num_partitions`` ways.

    Deterministic in its arguments. The training split is partitioned with
    :func:`fedhet.data.partition.partition`; ``max_train`` > 0 then caps each client's part
    (seeded). For ``balanced-dirichlet`` the equal per-client size is ``max_train`` when set,
    else ``N // num_partitions``. The local test set has ``local_test_size`` samples drawn
    from the global test split with the client's training class proportions (METHODS.md §0);
    ``local_test_size`` <= 0 gives the whole global test split.

    Parameters
    ----------
    dataset : str
        One of :data:`fedhet.data.images.IMAGE_DATASETS`.
    num_partitions : int
        Number of clients.
    partition_id : int
        This client's index in ``[0, num_partitions)``.
    scheme : str, default "dirichlet"
        Partitioner name (:data:`fedhet.data.partition.PARTITIONERS`).
    alpha : float, default 0.5
        Dirichlet concentration.
    k : int, default 2
        Classes per client for ``pathological``.
    seed : int, default 0
        Seed of the partition, the cap and the local test draw.
    max_train : int, default 0
        Training samples per client at most (0: no cap).
    local_test_size : int, default 500
        Local test set size.
    data_dir : str, optional
        Data folder, see :func:`fedhet.data.images.load_image_dataset`.
    cache_dir : str or pathlib.Path, optional
        Folder of the index cache; default :func:`default_cache_dir`.
    groups : sequence of str, optional
        Device class of every partition id (``group-correlated`` only; required there).

    Returns
    -------
    ClientSplit
        The client's training part and local test set.

    Raises
    ------
    ValueError
        ``partition_id`` out of range, unknown dataset or scheme.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition_id {partition_id} outside [0, num_partitions={num_partitions})"
        )
    train, test = _load(dataset, data_dir)
    train_labels = train.y.numpy()
    test_labels = test.y.numpy()
    settings = {
        "version": _CACHE_VERSION,
        "dataset": dataset,
        "num_partitions": num_partitions,
        "scheme": scheme,
        "alpha": float(alpha),
        "k": int(k),
        "seed": int(seed),
        "max_train": int(max_train),
        "local_test_size": int(local_test_size),
        "train_labels": _fingerprint(train.y, train_labels),
        "test_labels": _fingerprint(test.y, test_labels),
    }
    if scheme == "group-correlated":
        settings["groups"] = list(groups or [])
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{dataset}-{num_partitions}-{key}.npz"
    parts = _PARTS.get(path) or _read_cache(path, num_partitions)
    if parts is None:
        parts = _compute_parts(
            train_labels,
            test_labels,
            train.num_classes,
            num_partitions,
            scheme=scheme,
            alpha=alpha,
            k=k,
            seed=seed,
            max_train=max_train,
            local_test_size=local_test_size,
            groups=groups,
        )
        _write_cache(path, parts, settings)
    _PARTS[path] = parts
    train_idx, test_idx = parts[0][partition_id], parts[1][partition_id]
    tag = f"[{partition_id}/{num_partitions}]"
    client_train = train.subset(train_idx)
    client_train.name = train.name + tag
    if local_test_size > 0:
        local_test = test.subset(test_idx)
        local_test.name = test.name + tag
    else:
        local_test = TensorData(test.x, test.y, test.num_classes, test.name)
    return ClientSplit(train=client_train, test=local_test, partition_id=partition_id)


def _load(dataset: str, data_dir: str | None) -> tuple[TensorData, TensorData]:
    if dataset not in IMAGE_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {IMAGE_DATASETS}")
    return load_image_dataset(dataset, data_dir)


def _fingerprint(owner: object, labels: np.ndarray) -> str:
    """SHA-1 of ``labels``, remembered for ``owner`` (the label tensor, cached by the loaders)."""
    known = _FINGERPRINTS.get(id(owner))
    if known is not None and known[0] is owner:
        return known[1]
    digest = hashlib.sha1(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()
    _FINGERPRINTS[id(owner)] = (owner, digest)
    return digest


def _derived_seed(seed: int, purpose: int, *extra: int) -> int:
    return int(np.random.SeedSequence([seed, purpose, *extra]).generate_state(1)[0])


def _compute_parts(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    num_partitions: int,
    *,
    scheme: str,
    alpha: float,
    k: int,
    seed: int,
    max_train: int,
    local_test_size: int,
    groups: Sequence[str] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    n_per_client = max_train if scheme == "balanced-dirichlet" and max_train > 0 else None
    train_parts = partition(
        train_labels,
        num_partitions,
        scheme,
        alpha=alpha,
        k=k,
        n_per_client=n_per_client,
        seed=seed,
        groups=groups,
    )
    if max_train > 0:
        train_parts = cap_per_client(train_parts, max_train, _derived_seed(seed, 1))
    test_parts = []
    for pid, part in enumerate(train_parts):
        if local_test_size > 0 and part.size > 0:
            test_parts.append(
                local_test_indices(
                    test_labels,
                    train_labels[part],
                    local_test_size,
                    num_classes,
                    _derived_seed(seed, 2, pid),
                )
            )
        else:
            test_parts.append(np.zeros(0, dtype=np.int64))
    sizes = [p.size for p in train_parts]
    log.info(
        "partitioned %d training samples into %d clients with %s (sizes min %d, max %d)",
        train_labels.size,
        num_partitions,
        scheme,
        min(sizes),
        max(sizes),
    )
    return train_parts, test_parts


def _read_cache(
    path: Path, num_partitions: int
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            train = [data[f"train_{i}"] for i in range(num_partitions)]
            test = [data[f"test_{i}"] for i in range(num_partitions)]
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable partition cache %s (%s)", path, exc)
        return None
    log.debug("partition cache hit %s", path)
    return train, test


def _write_cache(
    path: Path, parts: tuple[list[np.ndarray], list[np.ndarray]], settings: dict[str, object]
) -> None:
    arrays: dict[str, np.ndarray] = {"settings": np.array(json.dumps(settings, sort_keys=True))}
    for i, (tr, te) in enumerate(zip(*parts, strict=True)):
        arrays[f"train_{i}"] = tr
        arrays[f"test_{i}"] = te
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("could not write partition cache %s (%s); continuing without it", path, exc)
