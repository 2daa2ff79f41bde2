"""FIARSE vs HeteroFL vs FedRolex vs FedAvg on the smallest common model (METHODS.md §7.6).

Four sizes {1/64, 1/16, 1/4, 1} in equal groups (``*.size-assignment=equal-groups``: partitions
0–4 at 1/64 … 15–19 at 1), Fashion-MNIST, balanced Dir(0.3) with 3,000 training samples per
client, local tests of 500, ``cnn_s``. Writes ``benchmarks/results/fiarse.md`` (tables shaped like
the paper's Table 1 plus bytes per round), ``fiarse.json`` (raw numbers) and two PNG plots.

Tiers (both ``nice`` friendly, 1 torch thread per process):

* reference: ``python -m benchmarks.fiarse`` — 20 clients, 10 per round, 60 rounds, K = 20 steps
  of batch 32, SGD lr 0.1, η_g = 1, evaluation every 5 rounds and at the end;
* quick: ``python -m benchmarks.fiarse --quick`` — the same federation for 8 rounds, evaluated
  once, after round 8.

FedAvg on the smallest common model: every device trains ``cnn_s`` at width √(1/64) = 1/8 (the
model the 1/64 devices can afford). It runs as ``heterofl`` with ``heterofl.gamma=1/64`` and a
one-size ladder, which is exactly FedAvg on that model (every device holds every coordinate, so
the holder mean is the plain mean; balanced partitions make sample weighting irrelevant). Its
Model(γ) columns are the same small model on the local tests of the devices that hold size γ in
the other methods.

Methods run in parallel worker processes (``--jobs``, default 2).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    markdown_table,
    mb,
    parse_args,
    plot_curves,
    run_method,
    setup,
    write_result,
)
from fedhet.sizes import equal_group_size

log = logging.getLogger("benchmarks.fiarse")

SIZES: tuple[float, ...] = (1 / 64, 1 / 16, 1 / 4, 1.0)
SIZE_LABELS = {1 / 64: "1/64", 1 / 16: "1/16", 1 / 4: "1/4", 1.0: "1"}
NUM_CLIENTS = 20
LADDER = "0.015625,0.0625,0.25,1"

#: label -> (registered method, method-specific keys)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "FIARSE": ("fiarse", {"fiarse.size-assignment": "equal-groups"}),
    "HeteroFL": ("heterofl", {"heterofl.size-assignment": "equal-groups"}),
    "FedRolex": ("fedrolex", {"fedrolex.size-assignment": "equal-groups"}),
    "FedAvg (cnn_s ×1/8)": ("heterofl", {"heterofl.gamma": 1 / 64, "heterofl.ladder": "0.015625"}),
}


def settings(quick: bool) -> dict[str, Any]:
    """Shared run config of a tier (METHODS.md §7.6)."""
    return {
        "dataset": "fashion-mnist",
        "model": "cnn_s",
        "partition": "balanced-dirichlet",
        "dirichlet_alpha": 0.3,
        "max_train_per_client": 3000,
        "local_test_size": 500,
        "fraction_train": 0.5,
        "fraction_evaluate": 1.0,
        "num_server_rounds": 8 if quick else 60,
        "local_steps": 20,
        "batch_size": 32,
        "lr": 0.1,
        "seed": 0,
        "profile_bench": False,
        "checkpoint_every": 1000,
    }


def _run_one(args: tuple[str, bool, str, int]) -> tuple[str, list[dict[str, Any]], float]:
    label, quick, out, seed = args
    setup(1)
    method, keys = METHODS[label]
    cfg = settings(quick)
    cfg["seed"] = seed
    eval_every = 8 if quick else 5
    prefix = method
    run_name = f"{'quick' if quick else 'ref'}-{label.split()[0].lower()}-s{seed}"
    start = time.time()
    config: dict[str, Any] = {**cfg, **keys, f"{prefix}.eval-every": eval_every}
    history = run_method("fiarse", run_name, method, num_nodes=NUM_CLIENTS, out=Path(out), **config)
    return label, history, time.time() - start


def _size_of(device_id: str) -> float:
    return equal_group_size(SIZES, int(device_id.rsplit("-", 1)[1]), NUM_CLIENTS)


def summarise(label: str, history: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Final-evaluation metrics and traffic of one run."""
    evaluated = [h for h in history if h.get("server-accuracy") is not None]
    last = evaluated[-1]
    row: dict[str, Any] = {
        "method": label,
        "rounds": len(history),
        "wall-s": wall,
        "global": last["server-accuracy"],
    }
    # Model(γ): pooled local-test accuracy of size-γ devices (each evaluated with its own model).
    groups: dict[float, list[tuple[int, int]]] = {}
    for node in last["nodes"]:
        if node.get("eval-examples"):
            groups.setdefault(_size_of(node["device-id"]), []).append(
                (int(node["eval-correct"]), int(node["eval-examples"]))
            )
    for g in SIZES:
        res = groups.get(g, [])
        row[f"model-{g:g}"] = sum(c for c, _ in res) / sum(n for _, n in res) if res else None
    accs = [c / n for res in groups.values() for c, n in res]
    row["local"] = sum(accs) / len(accs) if accs else None
    for g in SIZES:
        row[f"global-{g:g}"] = last.get(f"server-accuracy-g{g:g}", last["server-accuracy"])
    n = len(history)
    row["mb-up-round"] = mb(sum(h.get("train-bytes-up", 0) for h in history)) / n
    row["mb-down-round"] = mb(sum(h.get("train-bytes-down", 0) for h in history)) / n
    row["mb-cum-train"] = mb(
        sum(h.get("train-bytes-up", 0) + h.get("train-bytes-down", 0) for h in history)
    )
    row["mb-cum-all"] = mb(history[-1]["cum-bytes-up"] + history[-1]["cum-bytes-down"])
    # per-device payload bytes by size (train messages only)
    per_size: dict[float, dict[str, list[float]]] = {}
    for h in history:
        for node in h["nodes"]:
            if node.get("status") != "trained":
                continue
            d = per_size.setdefault(
                _size_of(node["device-id"]), {"up": [], "down": [], "density": []}
            )
            d["up"].append(node["payload-bytes-up"])
            d["down"].append(node.get("train-payload-bytes-down", 0))
            if node.get("fiarse-density") is not None:
                d["density"].append(node["fiarse-density"])
    row["payload-by-size"] = {
        f"{g:g}": {k: (sum(v) / len(v) if v else None) for k, v in d.items()}
        for g, d in sorted(per_size.items())
    }
    row["curve"] = [
        {
            "round": h["round"],
            "server-accuracy": h.get("server-accuracy"),
            "local-accuracy": h.get("local-accuracy"),
        }
        for h in evaluated
    ]
    return row


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def render(rows: list[dict[str, Any]], quick: bool, command: str, total_wall: float) -> str:
    """Markdown report."""
    tier = "quick" if quick else "reference"
    s = settings(quick)
    head = [
        "Method",
        "Local",
        "Model(1/64)",
        "Model(1/16)",
        "Model(1/4)",
        "Model(1)",
        "Global",
        "MB up/round",
        "MB down/round",
        "cum. MB (train)",
        "cum. MB (all)",
        "wall s",
    ]
    table = markdown_table(
        head,
        [
            [
                r["method"],
                _pct(r["local"]),
                *(_pct(r[f"model-{g:g}"]) for g in SIZES),
                _pct(r["global"]),
                f"{r['mb-up-round']:.3f}",
                f"{r['mb-down-round']:.3f}",
                f"{r['mb-cum-train']:.1f}",
                f"{r['mb-cum-all']:.1f}",
                f"{r['wall-s']:.0f}",
            ]
            for r in rows
        ],
    )
    gtable = markdown_table(
        ["Method", *(f"global acc @ {SIZE_LABELS[g]}" for g in SIZES), "Global (mean)"],
        [
            [r["method"], *(_pct(r[f"global-{g:g}"]) for g in SIZES), _pct(r["global"])]
            for r in rows
        ],
    )
    btable_rows = []
    for r in rows:
        for g, d in r["payload-by-size"].items():
            btable_rows.append(
                [
                    r["method"],
                    g,
                    f"{d['up']:.0f}" if d["up"] else "–",
                    f"{d['down']:.0f}" if d["down"] else "–",
                    f"{d['density']:.5f}" if d.get("density") else "–",
                ]
            )
    btable = markdown_table(
        ["Method", "γ", "payload B up / device", "payload B down / device", "realised density"],
        btable_rows,
    )
    return f"""# FIARSE vs HeteroFL vs FedRolex vs FedAvg (METHODS.md §7.6) — {tier} tier

Command: `{command}` ({total_wall:.0f} s wall for all methods, 2 worker processes, 1 torch thread
each, on a 2-core host shared with other jobs; wall times per method overlap).

Setting: Fashion-MNIST, {NUM_CLIENTS} clients, balanced Dir({s["dirichlet_alpha"]}) with
{s["max_train_per_client"]} train samples each, local tests of {s["local_test_size"]}; sizes
{{1/64, 1/16, 1/4, 1}} in equal groups of 5 (partition ids 0–4 smallest); 10 clients per round;
{s["num_server_rounds"]} rounds; K = {s["local_steps"]} SGD steps of batch {s["batch_size"]}, lr
{s["lr"]}, η_g = 1; model `cnn_s` (FIARSE: conv2 and fc1 masked with one τ each, conv1 and the
classifier dense). Accuracies (%) are from the last evaluated round. Local = mean over devices of
their own-size model on their local test; Model(γ) = size-γ model on the pooled local tests of
the size-γ devices; Global = global-test accuracy averaged over the four sizes (FedAvg: its one
model). MB/round = training messages only (up and down, all sampled devices); cum. MB (all) adds
the evaluation messages.

{table}

Global-test accuracy per size (what Global averages):

{gtable}

Payload bytes per trained device by size (training messages; FIARSE down = 4·kept +
⌈d_masked/8⌉ + 4·d_dense, up = 4·kept + 4·d_dense, METHODS.md §7.3; full cnn_s = 1,686,568 B):

{btable}

![accuracy](fiarse-{tier}-curves.png)
![per size](fiarse-{tier}-sizes.png)
"""


def plot_sizes(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: Model(γ) and global-test accuracy per size and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / max(len(rows), 1)
    for ax, key, title in (
        (axes[0], "model", "Model(γ): local tests of size-γ devices"),
        (axes[1], "global", "global test, size-γ submodel"),
    ):
        for i, r in enumerate(rows):
            vals = [100 * (r[f"{key}-{g:g}"] or 0) for g in SIZES]
            ax.bar([j + i * width for j in range(len(SIZES))], vals, width, label=r["method"])
        ax.set_xticks(
            [j + width * (len(rows) - 1) / 2 for j in range(len(SIZES))],
            [SIZE_LABELS[g] for g in SIZES],
        )
        ax.set_xlabel("submodel size γ")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("accuracy %")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], list(METHODS), "8-round CI tier", argv)
    setup(1)
    labels = args.labels
    start = time.time()
    jobs = [(label, args.quick, str(args.out), args.seed) for label in labels]
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.map(_run_one, jobs, chunksize=1)
    else:
        results = [_run_one(j) for j in jobs]
    total = time.time() - start
    rows = [summarise(label, hist, wall) for label, hist, wall in results]
    tier = "quick" if args.quick else "reference"
    command = "python -m benchmarks.fiarse" + (" --quick" if args.quick else "")
    text = render(rows, args.quick, command, total)
    curves = {label: hist for label, hist, _ in results}
    plot_curves(
        {k: [h for h in v if h.get("server-accuracy") is not None] for k, v in curves.items()},
        args.out / f"fiarse-{tier}-curves.png",
        metric="server-accuracy",
        title=f"FIARSE benchmark ({tier}): Global accuracy",
    )
    plot_sizes(rows, args.out / f"fiarse-{tier}-sizes.png")
    path = write_result(
        args.out,
        f"fiarse-{tier}",
        text,
        {"rows": rows, "settings": settings(args.quick), "command": command, "wall-s": total},
    )
    print(text)  # the benchmark's table output
    log.info("wrote %s", path)
    print(json.dumps({r["method"]: {"local": r["local"], "global": r["global"]} for r in rows}))


if __name__ == "__main__":
    main()
