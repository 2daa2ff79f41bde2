"""The one evaluate handler of the image methods (FedAvg, HeteroFL, FedRolex, FIARSE, CoCoFL).

Every image method evaluates the same way: build the model the message describes, score it on
the device's local test set and reply ``num-examples``, ``eval-correct`` and the summed
``eval-loss`` (the server pools Σ correct / Σ samples, never a mean of means), plus
``eval-predicted``, the number of test samples predicted as each class, which the server pools
into a majority-class share (a model collapsed onto one class is visible even when the test set
is unbalanced enough to hide it in the accuracy). Only the model
preparation differs per method (the full model, a width-β slice, a top-γ submodel …), so a method
passes that in.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Message, RecordDict
from torch import nn

from fedhet.client.runtime import ClientContext, reply_content
from fedhet.client.training import evaluate_predictions
from fedhet.core.predictions import PREDICTED_KEY

#: Builds the model to evaluate from a message: ``(msg, ctx, num_classes) → model``.
ModelFromMessage = Callable[[Message, ClientContext, int], nn.Module]


def evaluate_image_model(
    msg: Message, ctx: ClientContext, model_of: ModelFromMessage
) -> RecordDict:
    """Accuracy and loss of the model a message carries on the device's local test set.

    Parameters
    ----------
    msg : Message
        The evaluate message.
    ctx : ClientContext
        The device's context (its data split).
    model_of : ModelFromMessage
        The method's model preparation.

    Returns
    -------
    RecordDict
        Reply content without arrays; metrics ``num-examples``, ``eval-correct``, ``eval-loss``
        and ``eval-predicted`` (predictions per class; omitted for an empty test set, since a
        MetricRecord list cannot be empty).
    """
    split = ctx.data()
    model = model_of(msg, ctx, split.test.num_classes)
    correct, total, loss, counts = evaluate_predictions(model, split.test)
    metrics: dict[str, int | float | list[int]] = {
        "num-examples": total,
        "eval-correct": correct,
        "eval-loss": loss,
    }
    if total:
        metrics[PREDICTED_KEY] = counts
    return reply_content(None, metrics)
