"""Width-scaled submodels: HeteroFL (static) and FedRolex (rolling) extraction, METHODS.md B12.

A width ratio β keeps ⌈β·C⌉ output units of every hidden layer with C units; the input side of a
layer follows the units kept by the previous layer; the classifier keeps all classes. ``static``
(HeteroFL, ICLR 2021) keeps units 0…⌈βC⌉−1; ``rolling`` (FedRolex, NeurIPS 2022) keeps
(t + k) mod C, k = 0…⌈βC⌉−1, in round t. When a conv output is flattened into an FC layer, each kept
channel brings its H·W block of FC inputs. Pure PyTorch; no Flower import.

Supported models: ``cnn_s`` and ``cnn_b`` (a plain chain of layers; BN tensors follow their conv).
``resnet_s`` and the pFedAFM CNNs are not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

WIDTH_MODES: tuple[str, ...] = ("static", "rolling")


@dataclass(frozen=True)
class _Layer:
    """One parameterised layer of a chain: its module prefix and its norm layer's prefix."""

    prefix: str
    norm: str | None = None


_CHAINS: dict[str, tuple[_Layer, ...]] = {
    "cnn_s": (_Layer("conv1"), _Layer("conv2"), _Layer("fc1"), _Layer("fc2")),
    "cnn_b": (
        *(_Layer(f"units.{i}.0", norm=f"units.{i}.1") for i in range(5)),
        _Layer("units.5"),
    ),
}

WIDTH_MODELS: tuple[str, ...] = tuple(_CHAINS)


def kept_units(channels: int, beta: float, mode: str = "static", round_idx: int = 0) -> Tensor:
    """Indices of the units a width-β submodel keeps out of ``channels`` (METHODS.md B12).

    ``static``: 0…⌈βC⌉−1 (HeteroFL). ``rolling``: (t + k) mod C for k = 0…⌈βC⌉−1 in round t
    (FedRolex), in that order, so the window wraps around. ⌈βC⌉ is at least 1 and uses the same
    expression as ``fedhet.models`` so extracted slices load into ``build_model(name, width=β)``.
    """
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    if mode not in WIDTH_MODES:
        raise ValueError(f"mode must be one of {WIDTH_MODES}, got {mode!r}")
    keep = max(1, math.ceil(beta * channels))
    k = torch.arange(keep)
    if mode == "static":
        return k
    return (round_idx + k) % channels


def width_indices(
    full_state: dict[str, Tensor],
    model_name: str,
    beta: float,
    mode: str = "static",
    round_idx: int = 0,
) -> dict[str, list[Tensor]]:
    """Kept indices along every dimension of every tensor of a width-β submodel (METHODS.md B12).

    Parameters
    ----------
    full_state : dict[str, Tensor]
        State dict of the full-width model (shapes are read from it).
    model_name : str
        One of :data:`WIDTH_MODELS`.
    beta : float
        Width ratio in (0, 1].
    mode : {"static", "rolling"}
        HeteroFL static slice or FedRolex rolling window.
    round_idx : int
        Round t, used by ``rolling``.

    Returns
    -------
    dict[str, list[Tensor]]
        Per tensor, one int64 index tensor per dimension (empty list for 0-dim tensors such as
        ``num_batches_tracked``). Dimensions that are not sliced (kernel, the first layer's input
        channels, the classifier's classes) hold the full range.
    """
    try:
        chain = _CHAINS[model_name]
    except KeyError:
        raise ValueError(
            f"width extraction supports {', '.join(WIDTH_MODELS)}; got {model_name!r}"
        ) from None
    indices: dict[str, list[Tensor]] = {}
    prev_out: Tensor | None = None
    prev_channels = 0
    for pos, layer in enumerate(chain):
        weight = full_state[f"{layer.prefix}.weight"]
        out_channels, in_features = weight.shape[0], weight.shape[1]
        is_classifier = pos == len(chain) - 1
        out_idx = (
            torch.arange(out_channels)
            if is_classifier
            else kept_units(out_channels, beta, mode, round_idx)
        )
        if prev_out is None:
            in_idx = torch.arange(in_features)
        else:
            if in_features % prev_channels:
                raise ValueError(
                    f"{layer.prefix}: {in_features} inputs are not a multiple of the previous "
                    f"layer's {prev_channels} channels"
                )
            block = in_features // prev_channels
            in_idx = (prev_out[:, None] * block + torch.arange(block)).reshape(-1)
        indices[f"{layer.prefix}.weight"] = [
            out_idx,
            in_idx,
            *(torch.arange(n) for n in weight.shape[2:]),
        ]
        owners = [layer.prefix] + ([layer.norm] if layer.norm else [])
        for key, tensor in full_state.items():
            owner, _, attr = key.rpartition(".")
            if owner not in owners or key in indices:
                continue
            if tensor.dim() > 1 or (tensor.dim() == 1 and tensor.shape[0] != out_channels):
                raise ValueError(f"{key}: unexpected shape {tuple(tensor.shape)} for {attr}")
            indices[key] = [out_idx] if tensor.dim() == 1 else []
        prev_out, prev_channels = out_idx, out_channels
    unknown = sorted(set(full_state) - set(indices))
    if unknown:
        raise ValueError(f"{model_name}: tensors outside the known layer chain: {unknown}")
    return indices


def extract_submodel(
    full_state: dict[str, Tensor], indices: dict[str, list[Tensor]]
) -> dict[str, Tensor]:
    """Slice every tensor to its kept indices (METHODS.md B12).

    The result loads into ``build_model(name, width=β)`` for the β and model the indices were
    built with. Tensors are fresh copies.
    """
    missing = sorted(set(full_state) - set(indices))
    if missing:
        raise KeyError(f"no indices for {missing}")
    sub: dict[str, Tensor] = {}
    for key, tensor in full_state.items():
        out = tensor
        for dim, idx in enumerate(indices[key]):
            out = out.index_select(dim, idx)
        sub[key] = out.clone()
    return sub


def scatter_submodel(
    sub_state: dict[str, Tensor],
    indices: dict[str, list[Tensor]],
    full_state: dict[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Place a submodel's tensors back at their full-model coordinates (METHODS.md B12, B2).

    Parameters
    ----------
    sub_state : dict[str, Tensor]
        Submodel tensors (e.g. a device's update), shaped like :func:`extract_submodel`'s output.
    indices : dict[str, list[Tensor]]
        The indices the submodel was extracted with.
    full_state : dict[str, Tensor]
        Full model, for shapes and dtypes only.

    Returns
    -------
    values : dict[str, Tensor]
        Full-shape tensors, zero outside the kept coordinates.
    holders : dict[str, Tensor]
        Bool masks of the kept coordinates (input to B2 ``holders`` averaging).
    """
    values: dict[str, Tensor] = {}
    holders: dict[str, Tensor] = {}
    for key, sub in sub_state.items():
        full = full_state[key]
        idx = indices[key]
        expected = tuple(len(i) for i in idx)
        if tuple(sub.shape) != expected:
            raise ValueError(f"{key}: got shape {tuple(sub.shape)}, expected {expected}")
        out = torch.zeros_like(full)
        held = torch.zeros(full.shape, dtype=torch.bool)
        if idx:
            grid = torch.meshgrid(*idx, indexing="ij")
            out.index_put_(grid, sub.to(full.dtype))
            held.index_put_(grid, torch.ones(expected, dtype=torch.bool))
        else:
            out.copy_(sub)
            held.fill_(True)
        values[key] = out
        holders[key] = held
    return values, holders


def classifier_keys(model_name: str) -> tuple[str, ...]:
    """State keys of the classifier (last layer of the chain) of ``model_name``: its weight and,
    if the model has one, its bias. Rows are classes."""
    try:
        last = _CHAINS[model_name][-1].prefix
    except KeyError:
        raise ValueError(
            f"width extraction supports {', '.join(WIDTH_MODELS)}; got {model_name!r}"
        ) from None
    return (f"{last}.weight", f"{last}.bias")


def restrict_to_classes(
    held: dict[str, Tensor], keys: tuple[str, ...], classes: list[int]
) -> dict[str, Tensor]:
    """Holder masks with the classifier rows of classes outside ``classes`` not held.

    HeteroFL's label split (Diao et al., ICLR 2021, §3 and its non-IID experiments; kept by
    FedRolex, Alam et al., NeurIPS 2022): a device trains with the logits of classes absent from
    its labels masked, so its classifier rows of those classes carry no update; the server
    averages each class's row over the devices that hold the class. Keys in ``keys`` that are not
    in ``held`` are skipped; other masks are returned unchanged (not copied).
    """
    out = dict(held)
    for key in keys:
        if key not in out:
            continue
        rows = torch.zeros(out[key].shape[0], dtype=torch.bool)
        rows[torch.as_tensor(classes, dtype=torch.long)] = True
        out[key] = out[key] & rows.reshape(-1, *([1] * (out[key].dim() - 1)))
    return out


__all__ = [
    "WIDTH_MODELS",
    "WIDTH_MODES",
    "classifier_keys",
    "extract_submodel",
    "kept_units",
    "restrict_to_classes",
    "scatter_submodel",
    "width_indices",
]
