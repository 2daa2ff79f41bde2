"""Model registry: build any fedhet model by name.

``build_model("cnn_s", num_classes=10)``; image models take ``width`` (submodel width ratio) where
they support it. Text models (Hugging Face) are built by the FL-TAC/FedIT methods themselves.
Model names live in :mod:`fedhet.models.catalog` (no torch import); the model classes are
imported on first use, so ``import fedhet.models.catalog`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedhet.models.catalog import IMAGE_MODELS

if TYPE_CHECKING:
    from torch import nn

    from fedhet.models.cnn import CNNB, CNNS, AFMNet, ResNetS


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the image model ``name`` (one of :data:`IMAGE_MODELS`).

    Raises
    ------
    ValueError
        On an unknown name (the message lists the known ones).
    """
    from fedhet.models import cnn

    if name not in IMAGE_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(IMAGE_MODELS)}")
    if name in cnn.AFM_ARCHS:
        return cnn.AFMNet(name, **kwargs)
    builders: dict[str, type[nn.Module]] = {
        "cnn_s": cnn.CNNS,
        "cnn_b": cnn.CNNB,
        "resnet_s": cnn.ResNetS,
    }
    return builders[name](**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def __getattr__(name: str) -> Any:
    """The model classes, imported on first use (PEP 562)."""
    if name in ("CNNB", "CNNS", "AFMNet", "ResNetS"):
        from fedhet.models import cnn

        return getattr(cnn, name)
    raise AttributeError(f"module 'fedhet.models' has no attribute {name!r}")


__all__ = ["CNNB", "CNNS", "IMAGE_MODELS", "AFMNet", "ResNetS", "build_model", "count_parameters"]
