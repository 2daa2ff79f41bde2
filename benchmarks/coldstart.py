"""What a cold ClientApp costs: a fresh interpreter imports ``client_app.app`` and handles one
fedavg train message (with the fused evaluation), as ``flwr-clientapp`` does for every message.

Run as a module it prints one JSON object: seconds to import the ClientApp, to handle the
message, in all (interpreter start included when measured from outside, see
:func:`measure`), and which heavy packages the process imported (scikit-learn, SciPy,
transformers, peft must stay out of the image path once the data caches exist)::

    python -m benchmarks.coldstart            # one cold process, JSON on stdout
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Packages a ClientApp on the image path must not import.
HEAVY = ("sklearn", "scipy", "transformers", "peft", "pandas", "matplotlib")
#: The benchmark run's settings; benchmarks.deployment.RUN_CONFIG extends them.
RUN: dict[str, Any] = {
    "method": "fedavg",
    "dataset": "digits",
    "model": "cnn_s",
    "local-steps": 10,
    "batch-size": 32,
    "max-train-per-client": 300,
    "local-test-size": 100,
    "profile-bench": False,
}


def handle_one() -> dict[str, Any]:
    """In this (fresh) process: import the ClientApp and handle one train message."""
    t0 = time.perf_counter()
    from client_app.app import app

    t_import = time.perf_counter() - t0
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedhet.config import default_run_config
    from fedhet.models import build_model

    # what flwr-clientapp's pull_task_input sets before a handler runs
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    raw = default_run_config(method="fedavg", run_name="coldstart")
    raw.update(RUN)
    node_config = {"partition-id": 0, "num-partitions": 3, "threads": 1}
    context = Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=raw
    )
    state = build_model("cnn_s", num_classes=10).state_dict()
    arrays = ArrayRecord(array_dict={k: Array(v.numpy()) for k, v in state.items()})
    config = ConfigRecord({"server-round": 2, "evaluate-received": True})
    msg = Message(
        RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type="train"
    )
    t1 = time.perf_counter()
    reply = app(msg, context)
    t_handle = time.perf_counter() - t1
    if reply.has_error():
        raise RuntimeError(f"train handler failed: {reply.error.reason}")
    metrics = dict(reply.content.metric_records["metrics"])
    return {
        "import-s": t_import,
        "handle-s": t_handle,
        "train-seconds": float(metrics["train-seconds"]),
        "eval-seconds": float(dict(reply.content.metric_records["eval-metrics"])["eval-seconds"]),
        "heavy-modules": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY}),
    }


def measure(env: dict[str, str] | None = None) -> dict[str, Any]:
    """One cold process from outside: :func:`handle_one` plus the interpreter's own start."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.coldstart"],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["process-s"] = time.perf_counter() - start
    return result


if __name__ == "__main__":
    print(json.dumps(handle_one()))
