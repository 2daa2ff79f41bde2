"""fedhet's data layer: offline image datasets, partitioners and a device's own data.

Text tasks live in :mod:`fedhet.data.text` and a device's tokenised task slots in
:mod:`fedhet.data.text_slots` (imported on demand, not from here).
"""

from fedhet.data.base import DatasetUnavailable, TensorData
from fedhet.data.federated import ClientSplit, default_cache_dir, federated_split, global_test
from fedhet.data.images import (
    FMNIST_MEAN,
    FMNIST_STD,
    IMAGE_DATASETS,
    load_image_dataset,
    read_idx,
)
from fedhet.data.partition import (
    PARTITIONERS,
    balanced_dirichlet,
    cap_per_client,
    class_histogram,
    dirichlet,
    dirichlet_shards,
    group_correlated,
    iid,
    local_test_indices,
    partition,
    pathological,
)
from fedhet.data.user import load_user_data

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
    "partition",
    "pathological",
    "read_idx",
]
