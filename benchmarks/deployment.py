"""Round time of a real deployment on loopback against the same rounds in simulation.

The same tiny fedavg run (digits, 3 devices, 4 rounds) runs, in one invocation:

* **in-process**: :class:`fedhet.sim.LocalGrid` calls the ClientApp handlers directly (no
  processes, no network): the compute floor;
* **in-process, deployment ids**: the same with the local fleet's node configs (``device-id``
  ``node-i``, one thread), so its accuracy must equal the deployment's exactly;
* **simulation**: ``flwr run`` on a simulation SuperLink (Ray actors, started once per run),
  as ``fedhet demo`` does (:func:`fedhet.cli.run_simulation`);
* **deployment**: ``flwr run`` on :class:`fedhet.deploy.local.LocalFleet`: a SuperLink with TLS,
  SuperNode authentication and a database on 127.0.0.1, the nginx front door, and 3 SuperNodes
  connected through it (started and stopped by PID with :mod:`fedhet.deploy.processes`). Each
  message starts a fresh ``flwr-clientapp`` process.

fedavg sends one message per device and round (the train message also evaluates the received
model, :mod:`fedhet.server.fused`); the last round adds an evaluate phase for the final model, so
the *steady round* is the mean of rounds 2 … n−1. The per-phase breakdown of a deployed round
comes from timestamps, not differences: the strategy stamps when it pushed a batch and when each
reply arrived, the ClientApp stamps its process creation (``/proc``), handler start and end, and
reports train and evaluation seconds. A cold ClientApp (fresh interpreter, import, one train
message) is timed on its own with :mod:`benchmarks.coldstart`. The CPU is shared, so the load
average is recorded before and after.

Run::

    python -m benchmarks.deployment            # writes benchmarks/results/deployment.md/.json
    python -m benchmarks.deployment --report-only   # re-render the .md from the .json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.coldstart import RUN as COLD_START_RUN
from benchmarks.coldstart import measure as measure_cold_start
from benchmarks.common import RESULTS, absolute_path, markdown_table, run_method, write_result
from fedhet.deploy.fleet import node_config_string
from fedhet.deploy.local import LocalFleet
from fedhet.profile import measure_cores

log = logging.getLogger("benchmarks.deployment")

BENCH = "deployment"
REPO = Path(__file__).resolve().parents[1]
#: Flower 1.41: an idle SuperNode pulls every 3 s (flwr/supernode/start_client_internal.py);
#: fedhet's strategy pulls replies every ≤ 0.2 s (fedhet.server.messaging) instead of Flower's 3 s.
SUPERNODE_POLL_S = 3.0
#: The run (flat Flower run config); identical in the three modes.
RUN_CONFIG: dict[str, Any] = {
    **COLD_START_RUN,
    "fraction-evaluate": 1.0,
    "round-timeout": 300.0,
}


def overrides_string(config: dict[str, Any]) -> str:
    """``k=v`` run-config overrides for ``flwr run -c``."""
    parts = []
    for key, value in config.items():
        text = f"'{value}'" if isinstance(value, str) else str(value).lower()
        if isinstance(value, float | int) and not isinstance(value, bool):
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def load_average() -> str:
    """1/5/15-minute load average of this host."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steady(values: list[float]) -> list[float]:
    """Rounds 2 … n−1 (round 1 registers, round n adds the final evaluate phase)."""
    return values[1:-1] or values[1:] or values


def summarise(mode: str, rows: list[dict[str, Any]], total_s: float) -> dict[str, Any]:
    """Per-round wall time, node train time and the registration round's extra time."""
    walls = [float(r["wall-seconds"]) for r in rows]
    train = [
        [float(n["train-seconds"]) for n in r["nodes"] if n["status"] == "trained"] for r in rows
    ]
    mean_steady = statistics.fmean(steady(walls))
    return {
        "mode": mode,
        "rounds": len(rows),
        "wall-seconds": walls,
        "train-seconds-mean": [statistics.fmean(t) if t else 0.0 for t in train],
        "train-seconds-max": [max(t) if t else 0.0 for t in train],
        "trained": [len(t) for t in train],
        "steady-round-s": mean_steady,
        "registration-extra-s": walls[0] - mean_steady if len(walls) > 1 else None,
        "run-total-s": total_s,
        "server-accuracy": rows[-1].get("server-accuracy"),
        "eval-accuracy": rows[-1].get("eval-accuracy"),
        "eval-accuracy-per-round": [r.get("eval-accuracy") for r in rows],
        "phases": phase_breakdown(rows),
    }


def phase_breakdown(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Mean seconds per phase of a steady round's train call, from the timestamps.

    Per node: push → ClientApp process created (SuperNode pull + SuperExec poll + spawn);
    process created → handler start (interpreter, imports, FAB, context); handler: evaluation,
    training, the rest (data, model build, (de)serialisation); handler end → reply pulled by the
    strategy (reply push, SuperNode → SuperLink, the strategy's poll). Per round: last reply →
    end of the round (aggregation, server-side evaluation, logging). ``None`` without timestamps
    (in-process and simulation runs have no ``/proc`` process per message).
    """
    per: dict[str, list[float]] = {}
    for row in rows[1:-1] or rows[1:] or rows:
        replied = []
        for n in row["nodes"]:
            keys = ("t-train-pushed", "measured-t-handler", "measured-t-done", "t-train-replied")
            if n.get("status") != "trained" or any(k not in n for k in keys):
                continue
            born = n.get("measured-t-process")
            handler = n["measured-t-done"] - n["measured-t-handler"]
            ev = float(n.get("eval-seconds") or 0.0)
            tr = float(n["train-seconds"])
            if born is not None:
                per.setdefault("wait for ClientApp process", []).append(born - n["t-train-pushed"])
                per.setdefault("ClientApp start (imports, FAB)", []).append(
                    n["measured-t-handler"] - born
                )
            per.setdefault("handler: evaluation", []).append(ev)
            per.setdefault("handler: training", []).append(tr)
            per.setdefault("handler: data, model, rest", []).append(handler - ev - tr)
            per.setdefault("reply back to the strategy", []).append(
                n["t-train-replied"] - n["measured-t-done"]
            )
            per.setdefault("push to reply (per node)", []).append(
                n["t-train-replied"] - n["t-train-pushed"]
            )
            replied.append(n["t-train-replied"] - n["t-train-pushed"])
        if replied:
            per.setdefault("train phase (last reply)", []).append(max(replied))
            per.setdefault("aggregation, server eval, rest", []).append(
                float(row["wall-seconds"]) - max(replied)
            )
    if not per:
        return None
    return {k: statistics.fmean(v) for k, v in per.items()}


def run_in_process(
    config: dict[str, Any],
    nodes: int,
    rounds: int,
    out: Path,
    *,
    fleet_ids: bool = False,
) -> dict[str, Any]:
    """The run on :class:`fedhet.sim.LocalGrid`; ``fleet_ids`` uses the local fleet's node configs."""
    extra = None
    mode = "in-process"
    if fleet_ids:
        mode = "in-process, deployment node configs"
        extra = []
        for i in range(nodes):
            _, text = node_config_string(i, nodes)
            pairs = dict(part.split("=", 1) for part in text.split())
            cfg: dict[str, Any] = {k: v.strip('"') for k, v in pairs.items()}
            cfg.update({k: int(cfg[k]) for k in ("partition-id", "num-partitions")})
            cfg["bandwidth-mbps"] = float(cfg["bandwidth-mbps"])
            cfg["threads"] = max(1, int(measure_cores()) // nodes)  # as LocalFleet
            extra.append(cfg)
    start = time.perf_counter()
    rows = run_method(
        BENCH,
        "in-process-fleet-ids" if fleet_ids else "in-process",
        config["method"],
        num_nodes=nodes,
        node_extra=extra,
        out=out,
        num_server_rounds=rounds,
        **{k: v for k, v in config.items() if k != "method"},
    )
    return summarise(mode, rows, time.perf_counter() - start)


def run_simulated(config: dict[str, Any], nodes: int, rounds: int, out: Path) -> dict[str, Any]:
    """The run with ``flwr run`` on a private simulation SuperLink."""
    from fedhet.cli import run_simulation

    runs = out / "raw" / BENCH
    shutil.rmtree(runs / "simulation", ignore_errors=True)
    cfg = {**config, "num-server-rounds": rounds, "min-nodes": nodes}
    cfg.update({"output-dir": str(runs), "run-name": "simulation"})
    previous = os.environ.get("FLWR_HOME")
    with tempfile.TemporaryDirectory(prefix="fedhet-bench-sim-") as home:
        os.environ["FLWR_HOME"] = home  # never touch another user's simulation SuperLink
        try:
            start = time.perf_counter()
            status, _ = run_simulation(
                overrides_string(cfg),
                nodes=nodes,
                run_dir=runs / "simulation",
                rounds=rounds,
                timeout=900,
            )
            total = time.perf_counter() - start
        finally:
            if previous is None:
                os.environ.pop("FLWR_HOME", None)
            else:
                os.environ["FLWR_HOME"] = previous
    if status != "finished:completed":
        raise RuntimeError(f"simulation run ended {status}")
    return summarise("simulation", json_lines(runs / "simulation" / "metrics.jsonl"), total)


def run_deployed(
    config: dict[str, Any], nodes: int, rounds: int, out: Path, warm: bool = False
) -> dict[str, Any]:
    """The run with ``flwr run`` on a local TLS + auth fleet; also times fleet start-up.

    ``warm`` starts the fleet with the warm start (:mod:`fedhet.deploy.forkserver`).
    """
    runs = out / "raw" / BENCH
    name = "deployment-warm" if warm else "deployment"
    shutil.rmtree(runs / name, ignore_errors=True)
    cfg = {**config, "num-server-rounds": rounds, "min-nodes": nodes}
    cfg.update({"output-dir": str(runs), "run-name": name})
    with tempfile.TemporaryDirectory(prefix="fedhet-bench-fleet-") as state:
        fleet = LocalFleet(Path(state), warm_start=warm)
        try:
            t0 = time.perf_counter()
            fleet.start(nodes)
            fleet.wait_for_nodes(nodes, timeout=120.0)
            t_fleet = time.perf_counter() - t0
            t1 = time.perf_counter()
            run_id = fleet.submit_run(REPO, overrides_string(cfg))
            t_submit = time.perf_counter() - t1
            status = fleet.wait_for_run(run_id, timeout=900.0, poll=0.5)
            total = time.perf_counter() - t1
            if status != "finished:completed":
                raise RuntimeError(f"deployment run ended {status}")
        finally:
            fleet.stop()
    summary = summarise(DEP_WARM if warm else DEP, json_lines(runs / name / "metrics.jsonl"), total)
    summary.update({"fleet-start-s": t_fleet, "submit-s": t_submit})
    return summary


#: Mode names of the two deployed runs (cold: a fresh ``flwr-clientapp`` per message).
DEP = "deployment (TLS + auth + front door)"
DEP_WARM = "deployment, warm start (fork server)"


def report(data: dict[str, Any]) -> str:
    """The markdown written to ``benchmarks/results/deployment.md`` (from the JSON alone)."""
    results: list[dict[str, Any]] = data["results"]
    nodes, rounds, loads, cold = data["nodes"], data["rounds"], data["load-average"], data["cold"]
    by_mode = {r["mode"]: r for r in results}
    rows = [
        [
            r["mode"],
            " / ".join(f"{w:.1f}" for w in r["wall-seconds"]),
            r["steady-round-s"],
            r["registration-extra-s"],
            " / ".join(f"{t:.2f}" for t in r["train-seconds-mean"]),
            r["run-total-s"],
            r.get("eval-accuracy"),
            r.get("server-accuracy"),
        ]
        for r in results
    ]
    lines = [
        "# Deployment vs simulation: round time",
        "",
        f"Command: `{data['command']}`",
        "",
        f"fedavg, {nodes} devices, {rounds} rounds, digits, cnn_s, "
        f"{RUN_CONFIG['local-steps']} local steps of batch {RUN_CONFIG['batch-size']}, "
        f"≤ {RUN_CONFIG['max-train-per-client']} training samples per device, evaluation on "
        "every device every round (fused into the next round's train call; the last round adds "
        f"an evaluate phase). Host: {data['cpus']} CPU cores shared with other users; load "
        f"average (1/5/15 min) {loads[0]} before, {loads[1]} after.",
        "",
        markdown_table(
            [
                "mode",
                "round wall s (1 / 2 / …)",
                "steady round s (2…n−1)",
                "round-1 extra s",
                "node train s (mean per round)",
                "run total s",
                "final eval acc",
                "final server acc",
            ],
            rows,
        ),
        "",
        "*run total*: from `flwr run` (FAB build and upload included) to `finished` in "
        "`flwr ls` for the two Flower modes; the strategy's `start()` for in-process.",
    ]
    dep = by_mode.get(DEP)
    warm = by_mode.get(DEP_WARM)
    sim = by_mode.get("simulation")
    for label, run in (("", dep), (", warm start", warm)):
        if run and sim:
            ratio = run["steady-round-s"] / sim["steady-round-s"]
            lines += [
                "",
                f"**Deployed{label} / simulated steady round: {ratio:.1f}** "
                f"({run['steady-round-s']:.2f} s / {sim['steady-round-s']:.2f} s).",
            ]
    ids = by_mode.get("in-process, deployment node configs")
    if dep and ids:
        same = dep.get("eval-accuracy-per-round") == ids.get("eval-accuracy-per-round")
        if warm:
            same = same and warm.get("eval-accuracy-per-round") == ids.get(
                "eval-accuracy-per-round"
            )
        lines += [
            "",
            "**Same seeds, same result.** Final server accuracy: deployment "
            f"{dep['server-accuracy']}"
            + (f", deployment with warm start {warm['server-accuracy']}" if warm else "")
            + ", in-process with the fleet's node configs "
            f"{ids['server-accuracy']}, simulation {sim['server-accuracy'] if sim else '–'}, "
            f"in-process {by_mode['in-process']['server-accuracy']}. Federated accuracy per "
            f"round {'identical' if same else 'NOT identical'} between the deployment"
            + (" runs" if warm else "")
            + " and the in-process run with its node configs. Simulation and deployment differ only "
            "because the device id seeds each device's batch order (METHODS.md §0): the local "
            "fleet names its devices `node-i`, simulation `partition-i`.",
        ]
    if dep and dep.get("phases"):
        ph = dep["phases"]
        order = [
            "wait for ClientApp process",
            "ClientApp start (imports, FAB)",
            "handler: evaluation",
            "handler: training",
            "handler: data, model, rest",
            "reply back to the strategy",
            "push to reply (per node)",
            "train phase (last reply)",
            "aggregation, server eval, rest",
        ]
        lines += [
            "",
            "## Where a deployed round's time goes (timestamps)",
            "",
            f"Fleet start-up (certificates, SuperLink, front door, {nodes} key registrations, "
            f"SuperNodes online): {dep['fleet-start-s']:.1f} s. `flwr run` submission: "
            f"{dep['submit-s']:.1f} s. Cold ClientApp measured alone "
            "(`python -m benchmarks.coldstart`: fresh interpreter, import, one fused train "
            f"message): {cold['process-s']:.1f} s in all, of which import of `client_app.app` "
            f"{cold['import-s']:.1f} s and the handler {cold['handle-s']:.1f} s (training "
            f"{cold['train-seconds']:.2f} s, evaluation {cold['eval-seconds']:.2f} s); heavy "
            f"packages imported: {', '.join(cold['heavy-modules']) or 'none'}.",
            "",
            markdown_table(
                ["phase (steady round, mean over nodes and rounds)", "seconds (cold)"]
                + (["seconds (warm start)"] if warm else []),
                [
                    [k, ph[k]]
                    + ([warm["phases"].get(k, "–")] if warm and warm.get("phases") else [])
                    for k in order
                    if k in ph
                ]
                + [
                    ["measured steady round (wall)", dep["steady-round-s"]]
                    + ([warm["steady-round-s"]] if warm else [])
                ],
            ),
            "",
            f"A ClientApp process here took {ph.get('ClientApp start (imports, FAB)', 0.0):.1f} s "
            f"from creation to fedhet's handler, against {cold['import-s']:.1f} s for fedhet's "
            "own import measured alone: the rest is Flower's `flwr-clientapp` path (its own "
            "imports, pulling the task, installing the FAB for every message, loading the app) "
            f"times {nodes} processes starting at once on the shared cores; the reply row is the "
            "process pushing its reply to the SuperNode and the SuperNode to the SuperLink "
            "through the front door (the strategy itself polls every ≤ 0.2 s).",
            "",
            *(
                [
                    "With the warm start (`fedhet/deploy/forkserver.py`) the same span took "
                    f"{warm['phases'].get('ClientApp start (imports, FAB)', 0.0):.1f} s: no "
                    "imports are left in it; it is Flower's task input, most of it the forked "
                    "ClientApp waiting for its message's objects, which the SuperNode is still "
                    "pulling from the SuperLink (run with `FEDHET_WARM_PROFILE=<dir>` for a "
                    "cProfile of each ClientApp), then the FAB install and the app load.",
                    "",
                ]
                if warm and warm.get("phases")
                else []
            ),
            "The first two rows are what a fresh `flwr-clientapp` process per message costs "
            "(Flower 1.41 keeps none warm): the SuperNode's idle pull (3 s interval in Flower "
            "1.41) and the SuperExec poll (0.2 s here) before the process exists, then the "
            "interpreter and its imports (torch dominates). On this host the nodes share "
            f"{data['cpus']} cores with other users' jobs, so every row is inflated by CPU "
            "contention (load average above).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write ``deployment.md`` / ``deployment.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=absolute_path, default=RESULTS)
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--skip-deployment", action="store_true")
    parser.add_argument(
        "--skip-warm", action="store_true", help="no second deployed run with the warm start"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="re-render deployment.md from deployment.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report_only:
        data = json.loads((args.out / f"{BENCH}.json").read_text())
        text = report(data)
        (args.out / f"{BENCH}.md").write_text(text)
        print(text)
        return 0
    command = "python -m benchmarks.deployment" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    load_before = load_average()
    results = [run_in_process(RUN_CONFIG, args.nodes, args.rounds, args.out)]
    results.append(run_in_process(RUN_CONFIG, args.nodes, args.rounds, args.out, fleet_ids=True))
    cold = measure_cold_start()  # partition and digits caches exist by now
    log.info("cold ClientApp: %s", cold)
    if not args.skip_simulation:
        results.append(run_simulated(RUN_CONFIG, args.nodes, args.rounds, args.out))
    if not args.skip_deployment:
        results.append(run_deployed(RUN_CONFIG, args.nodes, args.rounds, args.out))
        if not args.skip_warm:
            results.append(run_deployed(RUN_CONFIG, args.nodes, args.rounds, args.out, warm=True))
    data = {
        "results": results,
        "cold": cold,
        "load-average": [load_before, load_average()],
        "command": command,
        "nodes": args.nodes,
        "rounds": args.rounds,
        "cpus": len(os.sched_getaffinity(0)),
    }
    text = report(data)
    path = write_result(args.out, BENCH, text, data)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
