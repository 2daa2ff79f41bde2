"""Names of fedhet's models, defined once (no torch import).

The method registry declares which of these each method accepts, and the run config checks a
chosen ``model`` against that list at start; :func:`fedhet.models.build_model` builds them.
"""

from __future__ import annotations

#: pFedAFM's five local CNNs (METHODS.md §8): name → (second conv channels, first hidden width).
AFM_ARCHS: dict[str, tuple[int, int]] = {
    "afm_cnn1": (32, 2000),
    "afm_cnn2": (16, 2000),
    "afm_cnn3": (32, 1000),
    "afm_cnn4": (32, 800),
    "afm_cnn5": (32, 500),
}
#: Image models that expose freezable ``model.units`` (CoCoFL, GENE-FL; METHODS.md §8).
UNIT_MODELS: tuple[str, ...] = ("cnn_b", "resnet_s")
#: Image models :mod:`fedhet.core.width` can slice by width (HeteroFL, FedRolex; METHODS.md B12).
WIDTH_MODELS: tuple[str, ...] = ("cnn_s", "cnn_b")
#: Every image model :func:`fedhet.models.build_model` builds.
IMAGE_MODELS: tuple[str, ...] = ("cnn_s", "cnn_b", "resnet_s", *AFM_ARCHS)
#: Hugging Face text encoders of the adapter methods (:mod:`fedhet.models.text`).
TEXT_MODELS: tuple[str, ...] = ("minilm", "tiny-bert")

__all__ = ["AFM_ARCHS", "IMAGE_MODELS", "TEXT_MODELS", "UNIT_MODELS", "WIDTH_MODELS"]
