"""CoCoFL device side (arXiv 2203.05468, §3; METHODS.md §6.2 device steps 1–5).

Each round the device

1. takes T and M from its plan and draws D_t ~ U(D_min, D_max) seeded by (run, device, round);
2. keeps the maximal windows of the cost table within (T, D_t, M) and picks one (seeded uniform,
   or round-robin); with none it replies ``infeasible``;
3. loads the full received model and cuts it around the window
   (:func:`fedhet.core.quant.build_windowed_model`): units before the window run forward-only on
   real int8 kernels (``torch.ao.nn.quantized``, BN folded, activation scales calibrated on the
   round's first batch); a unit without an int8 kernel here (``resnet_s``'s residual blocks and
   static BN) falls back to fake quantisation, and :mod:`fedhet.core.quant` logs which unit;
   units after the window are frozen with int8-rounded weights and pass int8 fake-quantised input
   gradients to the window only;
4. trains the window in fp32 for the run's local steps (SGD, wd ``cocofl.weight-decay``, no
   momentum, lr on CoCoFL's step schedule);
5. uploads only the window's parameters and buffers under their global names, encoded by the B1
   codec (dense: a window is trained whole), with the chosen window (``window-start``/``-end``)
   and the measured costs as metrics; the server logs the plan's predicted costs itself.

The choice inputs (``choice``, a forced window) come from the plan's
:class:`~fedhet.methods.cocofl.plan.CoCoFLKnobs`, the budget from the plan.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import Message, RecordDict

from fedhet.client.evaluation import evaluate_image_model
from fedhet.client.runtime import (
    ClientContext,
    arrays_of,
    config_of,
    infeasible_reply,
    numpy_to_state,
    plan_of,
    reply_content,
)
from fedhet.core.codec import encode_sparse, payload_bytes
from fedhet.core.freeze import train_window
from fedhet.methods.cocofl.config import CoCoFLConfig, step_lr
from fedhet.methods.cocofl.plan import CoCoFLKnobs
from fedhet.methods.cocofl.windows import (
    choose_window,
    window_cost_table,
    window_label,
    window_options,
)
from fedhet.models import build_model

log = logging.getLogger("fedhet.client")


def encode_window(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The window's tensors as a B1 payload (every entry kept, so the codec picks ``dense``)."""
    payload: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        values = tensor.detach().cpu().numpy()
        payload.update(encode_sparse(name, values, np.ones(values.shape, dtype=bool)))
    return payload


def train(msg: Message, ctx: ClientContext) -> RecordDict:
    """Train one feasible window of the received model; upload that window only."""
    shared = ctx.run.shared
    ccfg: CoCoFLConfig = ctx.run.method_as(CoCoFLConfig)
    server_round = int(config_of(msg)["server-round"])
    plan, knobs = plan_of(msg, CoCoFLKnobs)
    budget = plan.budget
    upload_budget = budget.upload_draw(shared.seed, ctx.device_id, server_round)
    table = window_cost_table(shared.model, shared.batch_size, ccfg)
    options = window_options(table, budget, upload_budget, knobs.force_window)
    if not options:
        return infeasible_reply(
            f"no window fits T={budget.time:.2f}, D_t={upload_budget:.3f}, M={budget.memory:.2f}"
        )
    row = choose_window(options, knobs.choice, shared.seed, ctx.device_id, server_round)

    split = ctx.data()
    received = arrays_of(msg)
    model = build_model(shared.model, num_classes=split.train.num_classes)
    model.load_state_dict(numpy_to_state(received))
    batches = list(ctx.local_batches(split.train, server_round))
    lr = step_lr(shared.lr, server_round, shared.num_server_rounds, ccfg.milestones, ccfg.lr_decay)
    state, measured = train_window(
        model,
        row.window,
        batches,
        lr=lr,
        weight_decay=ccfg.weight_decay,
        real_int8=ccfg.real_int8,
        quant_backward=ccfg.quant_backward,
        weight_scale_factor=ccfg.weight_scale_factor,
    )
    upload = encode_window(state)
    sent = payload_bytes(upload)
    full = payload_bytes(received)
    log.info(
        "round %d: window %s of %d options (D_t=%.3f), predicted time %.3f data %.3f memory %.3f; "
        "measured %.2f s, %d B up, %d B peak",
        server_round,
        window_label(row.window),
        len(options),
        upload_budget,
        row.time,
        row.data,
        row.memory,
        measured["train-seconds"],
        sent,
        int(measured["peak-mem-bytes"]),
    )
    metrics: dict[str, int | float] = {
        "num-examples": len(split.train),
        "train-loss": measured["train-loss"],
        "train-seconds": measured["train-seconds"],
        "window-start": int(row.window[0]),
        "window-end": int(row.window[1]),
        "measured-train-seconds": measured["train-seconds"],
        "measured-steps": len(batches),
        "measured-upload-bytes": sent,
        "measured-data": sent / full if full else 0.0,
        "measured-peak-mem-bytes": int(measured["peak-mem-bytes"]),
    }
    return reply_content(upload, metrics)


def _full_model(msg: Message, ctx: ClientContext, num_classes: int) -> torch.nn.Module:
    model = build_model(ctx.run.shared.model, num_classes=num_classes)
    model.load_state_dict(numpy_to_state(arrays_of(msg)))
    return model


def evaluate(msg: Message, ctx: ClientContext) -> RecordDict:
    """Accuracy of the received full fp32 model on the device's local test set."""
    return evaluate_image_model(msg, ctx, _full_model)
