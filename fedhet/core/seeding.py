"""Stable seeds: every random draw derives from (run seed, device id, round, purpose) (METHODS.md §0)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across processes and machines."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rng(*parts: object) -> np.random.Generator:
    """NumPy generator seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: object) -> torch.Generator:
    """Torch CPU generator seeded by :func:`derive_seed`."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g
