"""fedhet ClientApp: answer the profile query, then hand train/evaluate to the method's client."""

from __future__ import annotations

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedhet.client.runtime import ClientContext
from fedhet.logs import setup_logging
from fedhet.methods import get_method
from fedhet.profile import build_profile

app = ClientApp()


def _context(context: Context) -> ClientContext:
    setup_logging()
    ctx = ClientContext.from_context(context)
    if ctx.simulated:
        torch.set_num_threads(1)  # simulated nodes share one host
    return ctx


@app.query("profile")
def profile(msg: Message, context: Context) -> Message:
    """Measure this device and report its profile (METHODS.md §2)."""
    ctx = _context(context)
    shared = ctx.run.shared
    prof = build_profile(
        ctx.node,
        fallback_device_id=ctx.device_id,
        device_class=ctx.device_class,
        simulated=ctx.simulated,
        bench_model=shared.model if shared.profile_bench else None,
        batch_size=shared.batch_size,
        data_sizes=ctx.declared_sizes(),
    )
    from flwr.app import ConfigRecord

    return Message(RecordDict({"profile": ConfigRecord(prof.to_record())}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    ctx = _context(context)
    client = get_method(ctx.run.shared.method).client_module
    return Message(client.train(msg, ctx), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    ctx = _context(context)
    client = get_method(ctx.run.shared.method).client_module
    return Message(client.evaluate(msg, ctx), reply_to=msg)
