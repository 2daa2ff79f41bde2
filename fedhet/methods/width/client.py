"""HeteroFL / FedRolex device side: train the received width-β slice, upload it whole.

The slice loads into ``build_model(model, width=β)`` (METHODS.md B12); local training is plain SGD
with a fresh optimiser. With ``width-scaler`` the hidden layers' outputs are divided by β during
training (HeteroFL's scaler module, Diao et al., ICLR 2021, §3). With ``label-mask`` the logits of
classes absent from the device's training labels are −∞ during training and the reply reports
the classes present (``label-classes``), so the server averages each classifier row over the
devices holding its class (HeteroFL's label split, kept by FedRolex).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from flwr.app import Message, RecordDict
from torch import nn

from fedhet.client.evaluation import evaluate_image_model
from fedhet.client.runtime import (
    ClientContext,
    arrays_of,
    config_of,
    loaded_model,
    plan_of,
    reply_content,
    state_to_numpy,
)
from fedhet.client.training import train_sgd
from fedhet.methods.width.config import WidthConfig
from fedhet.methods.width.plan import WidthKnobs

log = logging.getLogger("fedhet.width")


def _slice_model(msg: Message, ctx: ClientContext, num_classes: int) -> nn.Module:
    """The received width-β slice loaded into ``build_model(model, width=β)``; β from the plan."""
    _, knobs = plan_of(msg, WidthKnobs)
    return loaded_model(
        ctx.run.shared.model, arrays_of(msg), num_classes=num_classes, width=knobs.beta
    )


#: Normalisation layers: HeteroFL's scaler is applied where one follows the scaled layers.
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def has_norm_layers(model: nn.Module) -> bool:
    """Whether ``model`` has a normalisation layer (:data:`NORM_LAYERS`)."""
    return any(isinstance(m, NORM_LAYERS) for m in model.modules())


@contextmanager
def width_scaler(model: nn.Module, beta: float, enabled: bool) -> Iterator[None]:
    """Divide every hidden conv/linear output by β in training mode (HeteroFL's scaler).

    Only on models with normalisation layers, as in HeteroFL, where a (static) batch norm follows
    every scaled layer. On a model without them (``cnn_s``) the factor 1/β is not normalised
    away: a slice's outputs shrink by about √β with random weights, not β, so every scaled layer
    multiplies the activations by 1/√β (×2.8 at β = 1/8) and training at lr 0.1 diverges
    (measured: HeteroFL on the FIARSE benchmark's 1/64 and 1/16 devices, train losses 10²–10⁵,
    replies dropped as non-finite). There ``width-scaler`` is a no-op (logged once).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = []
    if enabled and beta < 1 and not has_norm_layers(model):
        _note_scaler_skipped(type(model).__name__)
    elif enabled and beta < 1:
        for layer in layers[:-1]:  # the classifier is not scaled

            def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
                return out / beta if mod.training else out

            handles.append(layer.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def label_mask(model: nn.Module, classes: list[int], enabled: bool) -> Iterator[None]:
    """Set the classifier's logits of classes not in ``classes`` to −∞ in training mode.

    The classifier is the model's last ``nn.Linear``. Absent classes then get probability 0 and
    their classifier rows exactly zero gradient (HeteroFL's label split, Diao et al., ICLR 2021).
    """
    handle = None
    if enabled:
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        absent = torch.ones(head.out_features, dtype=torch.bool)
        absent[torch.as_tensor(classes, dtype=torch.long)] = False

        def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            return out.masked_fill(absent, float("-inf")) if mod.training else out

        handle = head.register_forward_hook(hook)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


_SKIPPED: set[str] = set()


def _note_scaler_skipped(model_name: str) -> None:
    if model_name not in _SKIPPED:
        _SKIPPED.add(model_name)
        log.info("width-scaler: %s has no normalisation layer, so no scaler is applied", model_name)


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """Local SGD on the slice; upload the trained slice (dense; the server keeps the indices)."""
    shared = ctx.run.shared
    wcfg: WidthConfig = ctx.run.method_as(WidthConfig)
    split = ctx.data()
    server_round = int(config_of(msg)["server-round"])
    _, knobs = plan_of(msg, WidthKnobs)
    model = _slice_model(msg, ctx, split.train.num_classes)
    batches = ctx.local_batches(split.train, server_round)
    classes = sorted(int(c) for c in torch.unique(split.train.y))
    with (
        width_scaler(model, knobs.beta, wcfg.width_scaler),
        label_mask(model, classes, wcfg.label_mask),
    ):
        trained = train_sgd(model, batches, lr=shared.lr)
    metrics: dict[str, Any] = {**trained, "num-examples": len(split.train)}
    if wcfg.label_mask:
        metrics["label-classes"] = classes
    return reply_content(state_to_numpy(model.state_dict()), metrics)


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Accuracy of the received static slice on the device's local test set."""
    return evaluate_image_model(msg, ctx, _slice_model)
