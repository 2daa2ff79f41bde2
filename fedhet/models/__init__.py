"""Model registry: build any fedhet model by name.

``build_model("cnn_s", num_classes=10)``; image models take ``width`` (submodel width ratio) where
they support it. Text models (Hugging Face) are built by the FL-TAC/FedIT methods themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fedhet.models.cnn import AFM_ARCHS, CNNB, CNNS, AFMNet, ResNetS

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cnn_s": CNNS,
    "cnn_b": CNNB,
    "resnet_s": ResNetS,
    **{name: (lambda name=name, **kw: AFMNet(name, **kw)) for name in AFM_ARCHS},
}

IMAGE_MODELS: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the image model ``name`` (one of :data:`IMAGE_MODELS`)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(IMAGE_MODELS)}") from None
    return builder(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["CNNB", "CNNS", "IMAGE_MODELS", "AFMNet", "ResNetS", "build_model", "count_parameters"]
