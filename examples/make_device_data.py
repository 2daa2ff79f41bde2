"""Write a device's own training data as ``.npz`` (``x``: N×28×28 uint8, ``y``: N int64).

Here the samples come from Fashion-MNIST restricted to some classes, standing in for a machine that
only sees some product types; on a real device, write your own images and labels the same way.
See docs/data-format.md for the CSV and image-folder formats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedhet.data.images import default_fmnist_dir, read_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = default_fmnist_dir()
    x = read_idx(root / "train-images-idx3-ubyte.gz")
    y = read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
    keep = np.flatnonzero(np.isin(y, [int(c) for c in args.classes.split(",")]))
    pick = np.random.default_rng(args.seed).choice(
        keep, size=min(args.samples, keep.size), replace=False
    )
    np.savez_compressed(args.out, x=x[pick], y=y[pick])
    print(f"wrote {pick.size} samples of classes {args.classes} to {args.out}")


if __name__ == "__main__":
    main()
