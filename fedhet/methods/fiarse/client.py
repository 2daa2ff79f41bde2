"""FIARSE device side (arXiv 2407.19389, Algorithm 1, client; METHODS.md §7.2 steps 4–5).

The device scatters the received kept values into zeros (weights outside its submodel are 0),
trains K SGD steps through the threshold-controlled mask ``1[|x| >= τ]`` recomputed at every
forward with the biased surrogate gradient (:func:`fedhet.core.masks.train_submodel`), and uploads
``trained − received`` on the received mask as values only (the server kept the mask; B1) plus the
dense tensors' updates.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import Message, RecordDict

from fedhet.client.evaluation import evaluate_image_model
from fedhet.client.runtime import ClientContext, arrays_of, config_of, plan_of, reply_content
from fedhet.core.codec import decode_payload, encode_values_only
from fedhet.core.masks import train_submodel
from fedhet.methods.fiarse.config import FiarseConfig
from fedhet.methods.fiarse.plan import FiarseKnobs
from fedhet.methods.fiarse.wire import THRESHOLDS_KEY
from fedhet.models import build_model


def receive_submodel(
    msg: Message, ctx: ClientContext, num_classes: int
) -> tuple[torch.nn.Module, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """Decode a FIARSE download into a model.

    Returns
    -------
    model : torch.nn.Module
        The run's model holding the submodel, zeros outside it.
    received : dict[str, np.ndarray]
        The decoded tensors (the base the upload is a difference to).
    masks : dict[str, np.ndarray]
        The received mask of every masked tensor, ``carried & (|x| >= τ)``: identical to the
        server's mask whatever encoding carried the tensor (kept values reach τ, the zeros
        outside do not when τ > 0, and τ = 0 keeps everything).
    thresholds : dict[str, float]
        τ per masked tensor, from the config.
    """
    plan_of(msg, FiarseKnobs)  # a FIARSE plan (γ) or a clear error; τ carries the size
    thresholds = {k: float(v) for k, v in json.loads(str(config_of(msg)[THRESHOLDS_KEY])).items()}
    model = build_model(ctx.run.shared.model, num_classes=num_classes)
    template = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in template.items()}
    received, carried = decode_payload(arrays_of(msg), shapes)
    missing = sorted(set(template) - set(received))
    if missing:
        raise ValueError(f"FIARSE download lacks tensors {missing[:5]}")
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v, copy=True)) for k, v in received.items()}
    )
    masks = {n: carried[n] & (np.abs(received[n]) >= tau) for n, tau in thresholds.items()}
    return model, received, masks, thresholds


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """K masked SGD steps; upload the update on the received mask (values only) + dense updates."""
    shared = ctx.run.shared
    fcfg: FiarseConfig = ctx.run.method_as(FiarseConfig)
    split = ctx.data()
    server_round = int(config_of(msg)["server-round"])
    model, received, masks, thresholds = receive_submodel(msg, ctx, split.train.num_classes)
    batches = ctx.local_batches(split.train, server_round)
    state, metrics = train_submodel(
        model, thresholds, batches, lr=shared.lr, surrogate=fcfg.surrogate
    )
    upload: dict[str, np.ndarray] = {}
    for name, base in received.items():
        update = state[name].numpy() - base
        if name in masks:
            upload.update(encode_values_only(name, update.astype(base.dtype), masks[name]))
        else:
            upload[name] = update.astype(base.dtype)
    metrics["num-examples"] = len(split.train)
    return reply_content(upload, metrics)


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Accuracy of the received own-size submodel on the device's local test set."""
    return evaluate_image_model(msg, ctx, lambda m, c, n: receive_submodel(m, c, n)[0])
