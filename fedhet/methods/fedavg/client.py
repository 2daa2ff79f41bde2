"""FedAvg device side: train the received full model, evaluate it on the local test set."""

from __future__ import annotations

import torch
from flwr.app import Message, RecordDict

from fedhet.client.evaluation import evaluate_image_model
from fedhet.client.runtime import (
    ClientContext,
    arrays_of,
    config_of,
    loaded_model,
    reply_content,
    state_to_numpy,
)
from fedhet.client.training import train_sgd
from fedhet.methods.fedavg.config import FedAvgConfig


def _model(msg: Message, ctx: ClientContext, num_classes: int) -> torch.nn.Module:
    return loaded_model(ctx.run.shared.model, arrays_of(msg), num_classes=num_classes)


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """Local SGD on the full model; upload the full model."""
    shared = ctx.run.shared
    mcfg: FedAvgConfig = ctx.run.method  # type: ignore[assignment]
    split = ctx.data()
    server_round = int(config_of(msg)["server-round"])
    model = _model(msg, ctx, split.train.num_classes)
    batches = ctx.local_batches(split.train, server_round)
    metrics = train_sgd(
        model, batches, lr=shared.lr, momentum=mcfg.momentum, weight_decay=mcfg.weight_decay
    )
    metrics["num-examples"] = len(split.train)
    return reply_content(state_to_numpy(model.state_dict()), metrics)


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Accuracy of the received model on the device's local test set."""
    return evaluate_image_model(msg, ctx, _model)
