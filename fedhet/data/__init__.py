"""fedhet's data layer: offline image datasets, partitioners and a device's own data.

Dataset and partitioner names live in :mod:`fedhet.data.catalog` (no torch import), so the run
config can check them cheaply; the loaders below are imported on first use (PEP 562), so
``import fedhet.data.catalog`` does not pull in torch. Text tasks live in :mod:`fedhet.data.text` and a device's
tokenised task slots in :mod:`fedhet.data.text_slots` (imported on demand, not from here).
The partitioner dispatcher is ``fedhet.data.partition.partition`` (the submodule's name shadows it
here).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedhet.data.base import DatasetUnavailable, TensorData
    from fedhet.data.federated import (
        ClientSplit,
        default_cache_dir,
        federated_split,
        global_test,
    )
    from fedhet.data.images import FMNIST_MEAN, FMNIST_STD, load_image_dataset, read_idx
    from fedhet.data.local import cap_per_client, local_test_indices
    from fedhet.data.partition import (
        PARTITIONERS,
        balanced_dirichlet,
        class_histogram,
        dirichlet,
        dirichlet_shards,
        group_correlated,
        iid,
        pathological,
    )
    from fedhet.data.user import load_user_data

from fedhet.data.catalog import IMAGE_DATASETS

_LAZY: dict[str, str] = {
    "DatasetUnavailable": "base",
    "TensorData": "base",
    "ClientSplit": "federated",
    "default_cache_dir": "federated",
    "federated_split": "federated",
    "global_test": "federated",
    "FMNIST_MEAN": "images",
    "FMNIST_STD": "images",
    "load_image_dataset": "images",
    "read_idx": "images",
    "PARTITIONERS": "partition",
    "balanced_dirichlet": "partition",
    "cap_per_client": "local",
    "class_histogram": "partition",
    "dirichlet": "partition",
    "dirichlet_shards": "partition",
    "group_correlated": "partition",
    "iid": "partition",
    "local_test_indices": "local",
    "pathological": "partition",
    "load_user_data": "user",
}


def __getattr__(name: str) -> Any:
    """Import the loader that defines ``name`` on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedhet.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedhet.data.{module}"), name)


__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGE_DATASETS",
    "PARTITIONERS",
    "ClientSplit",
    "DatasetUnavailable",
    "TensorData",
    "balanced_dirichlet",
    "cap_per_client",
    "class_histogram",
    "default_cache_dir",
    "dirichlet",
    "dirichlet_shards",
    "federated_split",
    "global_test",
    "group_correlated",
    "iid",
    "load_image_dataset",
    "load_user_data",
    "local_test_indices",
    "pathological",
    "read_idx",
]
