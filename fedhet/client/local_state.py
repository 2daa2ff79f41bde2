"""A device's own model in ``context.state``: tensors under one key, its architecture under another.

pFedAFM (ω_k, α_k) and the Standalone baseline both keep a per-device model of the architecture
their plan chose (METHODS.md §5.2); it survives across rounds in the ClientApp's
``context.state`` and is never uploaded. One pair of functions stores and reads it for both.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict


def store_local(
    state: RecordDict, key: str, meta_key: str, arch: str, tensors: Mapping[str, torch.Tensor]
) -> None:
    """Store a detached copy of ``tensors`` under ``key`` and ``arch`` under ``meta_key``."""
    state[key] = ArrayRecord(torch_state_dict={k: v.detach().clone() for k, v in tensors.items()})
    state[meta_key] = ConfigRecord({"arch": arch})


def stored_local(
    state: RecordDict, key: str, meta_key: str
) -> tuple[str | None, dict[str, torch.Tensor] | None]:
    """The stored architecture and tensors (each None when absent)."""
    arch = str(state.config_records[meta_key]["arch"]) if meta_key in state.config_records else None
    tensors = (
        dict(state.array_records[key].to_torch_state_dict()) if key in state.array_records else None
    )
    return arch, tensors
