"""Scale: registration time, round time vs sampled and registered devices, server memory, overhead.

``python -m benchmarks.scale [--quick] [--flwr] [--memory | --render]`` measures, for FedAvg on Fashion-MNIST (``cnn_s``):

* **registration**: seconds to register N simulated devices (the real ClientApp's profile
  handler, compute micro-benchmark on, as by default) through the in-process grid;
* **round time vs sampled devices** (10, 100, 1,000 of 1,000 registered; 2 local steps) and vs
  registered devices (100 sampled of 100 / 1,000);
* **per-device overhead vs pure compute**: the steady round of 100 devices × 20 local steps (no
  evaluation) against the same SGD steps in plain PyTorch in the same process;
* **ServerApp memory** for 100 / 1,000 / 10,000 registered devices (100 sampled, 2 rounds) and
  for 10 / 100 / 300 sampled of 1,000, each with streamed aggregation and with the round's
  replies held (peak RSS, and ``tracemalloc``'s peak of round 2): the server runs alone in a
  fresh process against echo devices (they return a copy of the model they got, made when the
  server pulls it), so the figure is the server's own memory, not the clients';
* with ``--flwr``, one ``flwr run`` simulation of 1,000 devices, 100 per round, 2 rounds.

Every figure goes to ``benchmarks/results/scale.json``; ``scale.md`` and ``scale.png`` are written
from that JSON. Each measurement runs in its own subprocess (clean peak RSS, no shared caches).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("benchmarks.scale")

BASE: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "model": "cnn_s",
    "max-train-per-client": 200,
    "local-test-size": 50,
    "batch-size": 32,
    "lr": 0.05,
    "round-timeout": 3600.0,
}


def _raw(out: Path, name: str, n: int, **extra: Any) -> dict[str, Any]:
    from fedhet.config import default_run_config

    raw = default_run_config(
        method="fedavg", run_name=name, output_dir=str(out / "raw" / "scale"), min_nodes=n
    )
    raw.update(BASE)
    raw.update({k.replace("_", "-"): v for k, v in extra.items()})
    return raw


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- measurements (each runs in a child process: ``python -m benchmarks.scale --child NAME ...``) --
def child_register(out: Path, n: int) -> dict[str, Any]:
    """Seconds to register ``n`` devices (real profile handler, micro-benchmark on)."""
    from client_app.app import app
    from fedhet.methods import get_method, parse_run_config
    from fedhet.sim import LocalGrid, simulated_node_configs

    raw = _raw(out, f"register-{n}", n, num_server_rounds=1, profile_bench=True)
    grid = LocalGrid(app, simulated_node_configs(n), raw, keep_sent=False)
    strategy = get_method("fedavg").strategy_cls(parse_run_config(raw), None)
    start, cpu = time.perf_counter(), time.process_time()
    strategy.register_nodes(grid, 1)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"devices": n, "registered": len(strategy.nodes), "seconds": seconds, "cpu-seconds": cpu}


def child_rounds(
    out: Path, n: int, fraction: float, steps: int, evaluate: bool, rounds: int = 3
) -> dict[str, Any]:
    """Round times of ``n`` registered devices, ``fraction`` sampled, ``steps`` local steps."""
    import shutil

    from fedhet.sim import run_local, simulated_node_configs

    name = f"rounds-{n}-{fraction}-{steps}"
    shutil.rmtree(out / "raw" / "scale" / name, ignore_errors=True)
    raw = _raw(
        out,
        name,
        n,
        num_server_rounds=rounds,
        local_steps=steps,
        fraction_train=fraction,
        fraction_evaluate=fraction if evaluate else 0.0,
        server_eval=evaluate,
        profile_bench=False,
    )
    start, cpu = time.perf_counter(), time.process_time()
    strategy = run_local(raw, simulated_node_configs(n), out / "raw" / "scale" / name)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    seconds = [float(r["wall-seconds"]) for r in strategy.history]
    sampled = [int(r["num-trained"]) for r in strategy.history]
    train_s = [sum(float(e.get("train-seconds", 0)) for e in r["nodes"]) for r in strategy.history]
    return {
        "devices": n,
        "sampled": sampled[-1],
        "steps": steps,
        "evaluate": evaluate,
        "round-seconds": seconds,
        "steady-round-seconds": min(seconds[1:]),
        "device-train-seconds": train_s,
        "total-seconds": total,
        "total-cpu-seconds": cpu,
        "peak-rss-mb": _peak_rss_mb(),
    }


def child_overhead(out: Path, n: int, steps: int) -> dict[str, Any]:
    """Steady round (train only) of ``n`` devices × ``steps`` steps vs the same steps in PyTorch.

    The pure-PyTorch figure is only the SGD steps: one model, each device's partition already in
    memory, ``steps`` batches of 32 per device, fresh optimiser per device, one thread.
    """
    import torch

    from fedhet.data import federated_split
    from fedhet.models import build_model

    sim = child_rounds(out, n, 1.0, steps, evaluate=False, rounds=2)
    torch.set_num_threads(1)
    raw = _raw(out, "pure", n)
    splits = [
        federated_split(
            "fashion-mnist",
            n,
            pid,
            alpha=raw["dirichlet-alpha"],
            max_train=raw["max-train-per-client"],
            local_test_size=raw["local-test-size"],
        ).train
        for pid in range(n)
    ]
    model = build_model("cnn_s", num_classes=10)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    start, cpu = time.perf_counter(), time.process_time()
    for pid, train in enumerate(splits):
        model.load_state_dict(init)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(pid)
        for _ in range(steps):
            idx = torch.randint(0, len(train), (32,), generator=g)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
    pure, pure_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        **sim,
        "pure-seconds": pure,
        "pure-cpu-seconds": pure_cpu,
        "ratio": sim["steady-round-seconds"] / pure,
        "overhead-per-device-s": (sim["steady-round-seconds"] - pure) / n,
    }


def child_server_rss(out: Path, n: int, sampled: int, stream: bool = True) -> dict[str, Any]:
    """Memory of the server alone with ``n`` registered echo devices, ``sampled`` per round.

    Echo devices reply with a fresh copy of the arrays they were sent (new bytes, as a real
    reply), produced when the server pulls the reply (``reply_at_pull``), so the grid holds no
    round's replies in the server's process. Round 1 registers every device; round 2 (the last:
    train, then an evaluate phase) is measured with ``tracemalloc`` (peak of what the round
    allocates: messages, replies, decoded arrays, the aggregation). ``stream`` chooses between
    streamed aggregation and holding the round's replies (``strategy.stream_replies``).
    """
    import gc
    import tracemalloc

    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

    from fedhet.methods import get_method, parse_run_config
    from fedhet.profile import build_profile, parse_node_config
    from fedhet.server.ledger import to_array_record, to_numpy_dict
    from fedhet.sim import LocalGrid, simulated_node_configs

    def echo(msg: Message, ctx: Context) -> Message:
        """A device that answers at no cost: its profile, or a copy of the arrays it was sent."""
        kind = msg.metadata.message_type
        if kind.startswith("query"):
            node = parse_node_config(dict(ctx.node_config))
            prof = build_profile(
                node,
                fallback_device_id=f"partition-{node.partition_id}",
                device_class="strong",
                simulated=True,
                bench_model=None,
                batch_size=32,
            )
            return Message(RecordDict({"profile": ConfigRecord(prof.to_record())}), reply_to=msg)
        metrics = {"num-examples": 10, "train-loss": 1.0, "train-seconds": 0.0}
        if kind == "evaluate":
            metrics = {"num-examples": 10, "eval-correct": 5, "eval-loss": 10.0}
            return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
        arrays = to_array_record(to_numpy_dict(msg.content.array_records["arrays"]))
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    raw = _raw(
        out,
        f"rss-{n}",
        n,
        num_server_rounds=2,
        fraction_train=sampled / n,
        fraction_evaluate=sampled / n,
        server_eval=False,
        profile_bench=False,
    )
    base = _peak_rss_mb()
    grid = LocalGrid(echo, simulated_node_configs(n), raw, keep_sent=False, reply_at_pull=True)
    strategy = get_method("fedavg").strategy_cls(parse_run_config(raw), None)
    strategy.stream_replies = stream
    run_round = strategy.run_round
    traced: dict[str, int] = {}

    def measured(grid: Any, server_round: int) -> Any:
        if server_round < 2:
            return run_round(grid, server_round)
        gc.collect()
        tracemalloc.start()
        try:
            return run_round(grid, server_round)
        finally:
            traced["peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    strategy.run_round = measured  # type: ignore[method-assign]
    start = time.perf_counter()
    strategy.start(grid)
    model_mb = sum(v.nbytes for v in strategy.global_arrays.values()) / 1e6
    return {
        "devices": n,
        "sampled": sampled,
        "stream": stream,
        "seconds": time.perf_counter() - start,
        "rss-before-mb": base,
        "peak-rss-mb": _peak_rss_mb(),
        "round-traced-peak-mb": traced["peak"] / 1e6,
        "model-mb": model_mb,
    }


CHILDREN = {
    "register": child_register,
    "rounds": child_rounds,
    "overhead": child_overhead,
    "server-rss": child_server_rss,
}


def _child(name: str, out: Path, *args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh ``nice`` process; its JSON result on the last line."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--out", str(out), "--child", name]
    cmd.append(json.dumps(list(args)))
    log.info("%s %s", name, args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}{args} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    log.info("  → %s", {k: v for k, v in result.items() if not isinstance(v, list)})
    return result


def flwr_run(n: int, sampled: int, out: Path) -> dict[str, Any]:
    """One ``flwr run`` simulation of ``n`` devices, ``sampled`` per round, 2 rounds."""
    from fedhet.cli import run_simulation

    name = f"flwr-{n}"
    raw = _raw(
        out,
        name,
        n,
        num_server_rounds=2,
        local_steps=2,
        fraction_train=sampled / n,
        fraction_evaluate=sampled / n,
    )
    keys = ("run-name", "output-dir", "min-nodes", "num-server-rounds", "fraction-train")
    keys += ("fraction-evaluate", "local-steps", "max-train-per-client", "local-test-size")
    keys += ("dataset", "model", "round-timeout")
    overrides = " ".join(f"{k}={json.dumps(raw[k])}" for k in keys)
    run_dir = Path(raw["output-dir"]) / name
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    status, _ = run_simulation(overrides, nodes=n, run_dir=run_dir, rounds=2)
    total = time.perf_counter() - start
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return {
        "devices": n,
        "sampled": sampled,
        "status": status,
        "total-seconds": total,
        "round-seconds": [r["wall-seconds"] for r in rows],
    }


def _memory_lines(data: dict[str, Any]) -> list[str]:
    """The ServerApp memory section: by registered devices, then by sampled devices."""
    rows = data["server-rss"]
    model = rows[0]["model-mb"]
    lines = [
        "",
        "## ServerApp memory (server alone, echo devices)",
        "",
        f"FedAvg, `cnn_s` ({model:.2f} MB). *streamed*: train replies are added to a running "
        "sum as they are pulled (`fedhet.server.streaming`); *held*: the round's replies are "
        "kept together, then averaged (the path before issue 15 item 4). Peak RSS is the "
        "process's (round 1 registers every device); round peak is `tracemalloc`'s peak of "
        "round 2 (messages, replies, decoded arrays, aggregation), in MB and in models.",
        "",
        "| registered | sampled | aggregation | peak RSS (MB) | growth over start (MB) "
        "| round peak (MB) | round peak (models) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows + [r for r in data.get("server-sampled", []) if r not in rows]:
        traced = r.get("round-traced-peak-mb")
        lines.append(
            f"| {r['devices']} | {r['sampled']} | "
            f"{'streamed' if r.get('stream', False) else 'held'} | {r['peak-rss-mb']:.0f} | "
            f"{r['peak-rss-mb'] - r['rss-before-mb']:.0f} | "
            + ("– | –" if traced is None else f"{traced:.1f} | {traced / r['model-mb']:.1f}")
            + " |"
        )
    for stream in (True, False):
        by_n = {r["devices"]: r for r in rows if r.get("stream", False) == stream}
        lo, hi = min(by_n, default=0), max(by_n, default=0)
        if hi > lo:
            per = (by_n[hi]["peak-rss-mb"] - by_n[lo]["peak-rss-mb"]) * 1e3 / (hi - lo)
            lines += [
                "",
                f"{'Streamed' if stream else 'Held'}: peak RSS grows by {per:.1f} kB per "
                f"registered device from {lo:,} to {hi:,} registered "
                f"({per / (1e3 * model):.4f} models per device).",
            ]
    sampled = data.get("server-sampled", [])
    for stream in (True, False):
        rs = sorted(
            (r for r in sampled if r.get("stream", False) == stream), key=lambda r: r["sampled"]
        )
        if len(rs) > 1 and rs[0].get("round-traced-peak-mb") is not None:
            a, b = rs[0], rs[-1]
            per = (b["round-traced-peak-mb"] - a["round-traced-peak-mb"]) / (
                b["sampled"] - a["sampled"]
            )
            lines += [
                "",
                f"{'Streamed' if stream else 'Held'}, {a['devices']:,} registered: the round "
                f"peak grows by {1e3 * per:.0f} kB per sampled device from {a['sampled']} to "
                f"{b['sampled']} sampled ({per / a['model-mb']:.3f} models per sampled device).",
            ]
    return lines


def write_report(data: dict[str, Any], out: Path) -> Path:
    """``scale.md`` and ``scale.png`` from the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Scale: many devices on one machine", "", data.get("note", ""), ""]
    lines += [
        "## Registration (real profile handler, micro-benchmark on)",
        "",
        "| devices | wall seconds | CPU seconds | CPU per device (ms) |",
        "|---|---|---|---|",
    ]
    for r in data["register"]:
        cpu = r.get("cpu-seconds")
        lines.append(
            f"| {r['devices']} | {r['seconds']:.2f} | "
            + ("– | –" if cpu is None else f"{cpu:.2f} | {1000 * cpu / r['devices']:.1f}")
            + " |"
        )
    lines += ["", "## Round time (in-process grid, 2 local steps, evaluation on)", ""]
    if not data.get("rounds"):
        lines.append("not measured in this run")
    else:
        lines += [
            "| registered | sampled | steady round (s) | per sampled device (ms) |",
            "|---|---|---|---|",
        ]
    for r in data.get("rounds", []):
        per = 1000 * r["steady-round-seconds"] / r["sampled"]
        lines.append(
            f"| {r['devices']} | {r['sampled']} | {r['steady-round-seconds']:.2f} | {per:.1f} |"
        )
    o = data.get("overhead")
    lines += (
        []
        if o is None
        else [
            "",
            f"## Overhead vs pure compute ({o['devices']} devices × {o['steps']} local steps, no evaluation)",
            "",
            f"steady round {o['steady-round-seconds']:.2f} s, the same SGD steps in plain PyTorch "
            f"{o['pure-seconds']:.2f} s: **{o['ratio']:.2f}×**, "
            f"{1000 * o['overhead-per-device-s']:.1f} ms per device-round by wall-time difference (see the notes below on load).",
        ]
    )
    lines += _memory_lines(data)
    if data.get("flwr"):
        f = data["flwr"]
        lines += [
            "",
            "## `flwr run` (Flower simulation, Ray)",
            "",
            f"{f['devices']} devices, {f['sampled']} per round: status `{f['status']}`, "
            f"{f['total-seconds']:.0f} s in all (SuperLink start, registration, 2 rounds), rounds "
            + ", ".join(f"{s:.1f} s" for s in f["round-seconds"])
            + ".",
        ]
        if len(f["round-seconds"]) >= 2:
            first, steady = f["round-seconds"][0], f["round-seconds"][-1]
            lines += [
                "",
                f"Registration of the {f['devices']} devices ≈ round 1 − round 2 = "
                f"{first - steady:.1f} s. Steady round per sampled device: "
                f"{1000 * steady / f['sampled']:.0f} ms (2 local steps, its local evaluation, "
                "the messages through Flower's Ray backend, plus the server's global-test "
                "evaluation shared by all).",
            ]
    lines += ["", *data.get("extra", []), "", "![scale](scale.png)", ""]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rounds = data.get("rounds") or []
    rs = [r for r in rounds if r["devices"] == max(x["devices"] for x in rounds)]
    axes[0].plot([r["sampled"] for r in rs], [r["steady-round-seconds"] for r in rs], "o-")
    if rs:
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
    axes[0].set_xlabel("sampled devices per round")
    axes[0].set_ylabel("steady round (s)")
    axes[0].grid(alpha=0.3)
    for stream, label in ((True, "streamed"), (False, "replies held")):
        sr = [r for r in data["server-rss"] if r.get("stream", False) == stream]
        if sr:
            axes[1].plot(
                [r["devices"] for r in sr], [r["peak-rss-mb"] for r in sr], "o-", label=label
            )
    axes[1].legend()
    axes[1].set_xscale("log")
    axes[1].set_xlabel("registered devices")
    axes[1].set_ylabel("ServerApp peak RSS (MB)")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)
    plt.close(fig)
    path = out / "scale.md"
    path.write_text("\n".join(lines))
    return path


def memory_runs(out: Path, quick: bool) -> dict[str, Any]:
    """ServerApp memory, streamed and held: 100 sampled of 100 / 1,000 / 10,000 registered, and
    10 / 100 / 300 sampled of 1,000 registered (``--quick``: no 10,000, 10 / 100 sampled)."""
    registered = (100, 1000) if quick else (100, 1000, 10000)
    rss = [_child("server-rss", out, n, 100, s) for n in registered for s in (True, False)]
    reused = [r for r in rss if r["devices"] == 1000]
    extra = [
        _child("server-rss", out, 1000, k, s)
        for k in ((10,) if quick else (10, 300))
        for s in (True, False)
    ]
    return {"server-rss": rss, "server-sampled": sorted(reused + extra, key=lambda r: r["sampled"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 devices at most, no 10,000")
    parser.add_argument("--flwr", action="store_true", help="also 1,000 devices through flwr run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only the ServerApp memory runs (streamed and held), merged into scale.json",
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite scale.md/scale.png from scale.json"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="?", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        logging.disable(logging.INFO)
        print(json.dumps(CHILDREN[args.child](args.out, *json.loads(args.args))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.memory or args.render:
        data = json.loads((args.out / "scale.json").read_text())
        if args.memory:
            data.update(memory_runs(args.out, args.quick))
            (args.out / "scale.json").write_text(json.dumps(data, indent=2))
        print(write_report(data, args.out))
        return 0
    big = 100 if args.quick else 1000
    data: dict[str, Any] = {
        "note": f"FedAvg, Fashion-MNIST, cnn_s, on a shared 2-core host (load {os.getloadavg()[0]:.0f}"
        " at start); each figure from its own process.",
        "register": [_child("register", args.out, n) for n in sorted({100, big})],
        "rounds": [
            _child("rounds", args.out, big, s / big, 2, True) for s in (10, 100, 1000) if s <= big
        ]
        + ([_child("rounds", args.out, 100, 1.0, 2, True)] if big > 100 else []),
        "overhead": _child("overhead", args.out, 20 if args.quick else 100, 20),
        **memory_runs(args.out, args.quick),
    }
    if args.flwr:
        data["flwr"] = flwr_run(1000, 100, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(data, indent=2))
    print(write_report(data, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
