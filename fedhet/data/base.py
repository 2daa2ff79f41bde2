"""In-memory tensor datasets shared by every fedhet data source.

Image data in fedhet is small enough (Fashion-MNIST: 60,000 x 28 x 28) to live in memory as one
pair of tensors, so a dataset is a dataclass around ``x`` and ``y`` instead of a
``torch.utils.data.Dataset`` plus ``DataLoader``. Batching is explicit and seeded, which keeps CPU
runs bit-reproducible (METHODS.md §0, "Seeds").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DatasetUnavailable", "TensorData"]


class DatasetUnavailable(RuntimeError):
    """A dataset's files are not installed or cannot be found.

    The message says how to install the data or where to point ``FEDHET_DATA_DIR``.
    """


@dataclass
class TensorData:
    """A labelled dataset held as two tensors.

    Attributes
    ----------
    x : torch.Tensor
        Inputs, float32, shape ``(N, C, H, W)``, already normalised.
    y : torch.Tensor
        Labels, int64, shape ``(N,)``, values in ``[0, num_classes)``.
    num_classes : int
        Number of classes of the task (not only those present in ``y``).
    name : str
        Human-readable name, e.g. ``"fashion-mnist/train"``.
    """

    x: Tensor
    y: Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"{self.name}: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}"
            )
        if self.y.ndim != 1:
            raise ValueError(f"{self.name}: y must be 1-D, got shape {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> TensorData:
        """Return the rows ``idx`` as a new dataset (a copy, in the given order).

        Parameters
        ----------
        idx : np.ndarray
            Integer row indices.

        Returns
        -------
        TensorData
            Same ``num_classes`` and ``name``.
        """
        index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return TensorData(
            x=self.x.index_select(0, index),
            y=self.y.index_select(0, index),
            num_classes=self.num_classes,
            name=self.name,
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate once over the data in mini-batches.

        Parameters
        ----------
        batch_size : int
            Rows per batch (the last batch may be smaller unless ``drop_last``).
        shuffle : bool
            Visit rows in a random order drawn from ``seed``; otherwise in stored order.
        seed : int, default 0
            Seed of the permutation when ``shuffle`` is true.
        drop_last : bool, default False
            Skip a final batch smaller than ``batch_size``.

        Yields
        ------
        tuple of torch.Tensor
            ``(x_batch, y_batch)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = _permutation(n, seed) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                yield self.x[start:end], self.y[start:end]
            else:
                rows = order[start:end]
                yield self.x[rows], self.y[rows]

    def sample_batches(
        self, batch_size: int, steps: int, seed: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield exactly ``steps`` full-size mini-batches, cycling through reshuffled epochs.

        Epoch ``e`` uses a permutation seeded from ``(seed, e)``; a batch never straddles two
        epochs, so every batch has ``min(batch_size, len(self))`` distinct rows. This is the
        "K local steps of batch B" training of METHODS.md (§6.6, §7.6).

        Parameters
        ----------
        batch_size : int
            Rows per batch; capped at ``len(self)`` for a client with fewer samples.
        steps : int
            Number of batches to yield (0 yields nothing).
        seed : int
            Base seed of the epoch permutations.

        Yields
        ------
        tuple of torch.Tensor
            ``(x_batch, y_batch)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        n = len(self)
        if steps > 0 and n == 0:
            raise ValueError(f"{self.name}: cannot sample batches from an empty dataset")
        size = min(batch_size, n)
        done = 0
        epoch = 0
        while done < steps:
            order = _permutation(n, seed, epoch)
            for start in range(0, n - size + 1, size):
                rows = order[start : start + size]
                yield self.x[rows], self.y[rows]
                done += 1
                if done == steps:
                    return
            epoch += 1


def _permutation(n: int, *seed: int) -> Tensor:
    rng = np.random.default_rng(list(seed))
    return torch.from_numpy(rng.permutation(n).astype(np.int64))
