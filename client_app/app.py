"""fedhet ClientApp: answer the profile query, then hand train/evaluate to the method's client.

Kept lean on purpose (issue 13): in a deployment every message starts a fresh ``flwr-clientapp``
process, so this module imports only Flower's message types and fedhet's registry; torch comes
with the client runtime, a method's own modules (and transformers/peft for text methods) only
when a message for that method arrives.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedhet.client.runtime import (
    ClientContext,
    config_of,
    configure_threads,
    process_started_at,
)
from fedhet.logs import setup_logging
from fedhet.methods import get_method
from fedhet.wire import EVAL_FLAG, EVAL_RECORD

app = ClientApp()


def _context(context: Context) -> ClientContext:
    setup_logging()
    ctx = ClientContext.from_context(context)
    configure_threads(ctx.node, ctx.simulated)
    return ctx


@app.query("profile")
def profile(msg: Message, context: Context) -> Message:
    """Measure this device and report its profile (METHODS.md §2)."""
    from fedhet.profile import build_profile

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
    return Message(RecordDict({"profile": ConfigRecord(prof.to_record())}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train; with ``evaluate-received`` first score the received model (fedhet.server.fused)."""
    started = time.time()
    ctx = _context(context)
    client = get_method(ctx.run.shared.method).client_module
    evaluation = None
    if config_of(msg).get(EVAL_FLAG):
        t0 = time.perf_counter()
        eval_content = client.evaluate(msg, ctx)
        evaluation = dict(eval_content.metric_records.get("metrics", MetricRecord()))
        evaluation["eval-seconds"] = time.perf_counter() - t0
    content = client.train(msg, ctx)
    if evaluation is not None:
        content[EVAL_RECORD] = MetricRecord(evaluation)
    _stamp(content, started)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received model on the device's local test set."""
    ctx = _context(context)
    client = get_method(ctx.run.shared.method).client_module
    return Message(client.evaluate(msg, ctx), reply_to=msg)


def _stamp(content: RecordDict, started: float) -> None:
    """Add process-start / handler timestamps (epoch s) to a train reply's metrics."""
    metrics = content.metric_records.get("metrics")
    if metrics is None:
        return
    born = process_started_at()
    if born is not None:
        metrics["measured-t-process"] = born
    metrics["measured-t-handler"] = started
    metrics["measured-t-done"] = time.time()
