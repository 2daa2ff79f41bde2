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
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    claim_verdict,
    fmt_pct,
    markdown_table,
    mb,
    mean_std,
    parse_args,
    plot_curves,
    run_method,
    run_wall,
    setup,
    write_result,
)
from fedhet.core.predictions import PREDICTED_KEY, majority_share, pool_counts
from fedhet.sizes import equal_group_size

log = logging.getLogger("benchmarks.fiarse")

SIZES: tuple[float, ...] = (1 / 64, 1 / 16, 1 / 4, 1.0)
SIZE_LABELS = {1 / 64: "1/64", 1 / 16: "1/16", 1 / 4: "1/4", 1.0: "1"}
NUM_CLIENTS = 20
LADDER = "0.015625,0.0625,0.25,1"

#: Label of FIARSE run with the official code's settings (fedhet's defaults are a variant).
OFFICIAL = "FIARSE (official settings)"
#: How tables name a method: fedhet's FIARSE defaults differ from the official code's choices.
SHOWN = {"FIARSE": "FIARSE (fedhet's variant)"}


def shown(label: str) -> str:
    """The name a table gives ``label``."""
    return SHOWN.get(label, label)


#: label -> (registered method, method-specific keys)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "FIARSE": ("fiarse", {"fiarse.size-assignment": "equal-groups"}),
    # The official code's choices (issue 14): one global threshold, no dense layers, holders =
    # nonzero updates, and the plain masked gradient its surrogate reduces to (``Bern`` returns
    # a bool tensor, so autograd never runs the surrogate); bit-identical to that code per round.
    OFFICIAL: (
        "fiarse",
        {
            "fiarse.size-assignment": "equal-groups",
            "fiarse.scope": "global",
            "fiarse.dense": "none",
            "fiarse.holders": "nonzero",
            "fiarse.surrogate": "ste",
        },
    ),
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


def _run_one(
    args: tuple[str, bool, str, int, bool],
) -> tuple[str, list[dict[str, Any]], float]:
    label, quick, out, seed, reuse = args
    setup(1)
    method, keys = METHODS[label]
    cfg = settings(quick)
    cfg["seed"] = seed
    eval_every = 8 if quick else 5
    prefix = method
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    run_name = f"{'quick' if quick else 'ref'}-{slug}-s{seed}"
    start = time.time()
    config: dict[str, Any] = {**cfg, **keys, f"{prefix}.eval-every": eval_every}
    history = run_method(
        "fiarse", run_name, method, num_nodes=NUM_CLIENTS, out=Path(out), reuse=reuse, **config
    )
    return label, history, run_wall(start, history)


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
    predicted: dict[float, list[Any]] = {}
    for node in last["nodes"]:
        if node.get("eval-examples"):
            groups.setdefault(_size_of(node["device-id"]), []).append(
                (int(node["eval-correct"]), int(node["eval-examples"]))
            )
            predicted.setdefault(_size_of(node["device-id"]), []).append(node.get(PREDICTED_KEY))
    for g in SIZES:
        res = groups.get(g, [])
        row[f"model-{g:g}"] = sum(c for c, _ in res) / sum(n for _, n in res) if res else None
        # majority-class share of the same pooled predictions (None: a device sent no counts)
        counts = predicted.get(g, [])
        row[f"model-share-{g:g}"] = (
            majority_share(pool_counts(counts)) if counts and None not in counts else None
        )
    accs = [c / n for res in groups.values() for c, n in res]
    row["local"] = sum(accs) / len(accs) if accs else None
    shares = {k: v for k, v in last.items() if k.startswith("server-majority-share-g")}
    for g in SIZES:
        row[f"global-{g:g}"] = last.get(f"server-accuracy-g{g:g}", last["server-accuracy"])
        # a one-size run (FedAvg) scores its one model in every column, as for the accuracy
        only = next(iter(shares.values())) if len(shares) == 1 else None
        row[f"global-share-{g:g}"] = shares.get(f"server-majority-share-g{g:g}", only)
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


#: Fashion-MNIST's classes (the benchmark's only dataset): chance accuracy is 1 / NUM_CLASSES.
NUM_CLASSES = 10
#: Accuracy at or below chance + 2 points flags a slice as at chance. Two points is about three
#: binomial std of an accuracy near 0.1 on the 2,500 pooled local-test samples of a size
#: (√(0.1·0.9/2500) ≈ 0.6 points), so a chance-level slice is flagged despite sampling noise.
CHANCE_FLAG = 1 / NUM_CLASSES + 0.02
#: A majority-class share at or above this flags a slice as collapsed onto one class: half of its
#: predictions on one class of a balanced 10-class test set (5× the 0.1 of a healthy model), so
#: at least 0.4 of all predictions are wrong whatever the rest do. It catches a collapse that
#: still scores above chance (e.g. 0.6 share, 0.3 accuracy), which the accuracy rule misses.
SHARE_FLAG = 0.5


def by_method(rows: list[dict[str, Any]], default_seed: int = 0) -> dict[str, dict[int, dict]]:
    """``{method: {seed: row}}``; rows written before ``--seeds`` carry no seed (the run's)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["method"], {})[int(r.get("seed", default_seed))] = r
    return out


def flagged(accuracy: float | None, share: float | None) -> bool:
    """True when a slice is at chance (accuracy ≤ :data:`CHANCE_FLAG`) or collapsed onto one
    class (majority-class share ≥ :data:`SHARE_FLAG`); ``None`` values never flag."""
    return (accuracy is not None and accuracy <= CHANCE_FLAG) or (
        share is not None and share >= SHARE_FLAG
    )


def _mean(runs: dict[int, dict[str, Any]], key: str | None) -> float | None:
    """Mean over seeds of ``key``; ``None`` when any seed's row lacks it (old JSON) or is None."""
    if key is None:
        return None
    vals = [r.get(key) for r in runs.values()]
    return None if any(v is None for v in vals) else mean_std(vals)[0]


def _cell(runs: dict[int, dict[str, Any]], key: str, share_key: str | None = None) -> str:
    """Mean ± std of an accuracy, with ⚠ when :func:`flagged` by it or by its size's share."""
    text = fmt_pct([r.get(key) for r in runs.values()])
    return (
        f"{text} ⚠"
        if flagged(mean_std([r.get(key) for r in runs.values()])[0], _mean(runs, share_key))
        else text
    )


def _share_cell(runs: dict[int, dict[str, Any]], key: str) -> str:
    """Mean majority-class share over seeds; ``n/a`` when the JSON predates the field."""
    mean = _mean(runs, key)
    return "n/a" if mean is None else f"{mean:.3f}"


#: FIARSE's paper (Wu et al., NeurIPS 2024), test accuracy % per column (Local, Model(1/64),
#: Model(1/16), Model(1/4), Model(1), Global) on CIFAR-10 / CIFAR-100 with a static-BN ResNet-18,
#: 100 clients, 800 rounds (METHODS.md §7.5).
PAPER: dict[str, dict[str, tuple[float, ...]]] = {
    "CIFAR-10": {
        "HeteroFL": (68.88, 60.24, 69.32, 72.18, 73.76, 66.05),
        "FedRolex": (67.18, 54.60, 64.96, 70.08, 79.08, 65.98),
        "FIARSE": (77.04, 73.12, 77.20, 77.24, 82.04, 73.75),
    },
    "CIFAR-100": {
        "HeteroFL": (31.75, 27.24, 29.80, 33.52, 36.44, 30.67),
        "FedRolex": (31.67, 21.00, 30.84, 36.44, 38.40, 29.89),
        "FIARSE": (41.76, 39.12, 43.24, 43.72, 40.96, 38.63),
    },
}
PAPER_COLUMNS: tuple[str, ...] = ("local", *(f"model-{g:g}" for g in SIZES), "global")


def paper_section(runs: dict[str, dict[int, dict[str, Any]]]) -> str:
    """The paper's margins of FIARSE over HeteroFL and FedRolex beside ours (mean ± std of the
    paired per-seed margins), per column; the paper's own accuracies for reference."""
    names = ["Local", *(f"Model({SIZE_LABELS[g]})" for g in SIZES), "Global"]
    rows: list[list[Any]] = []
    for other in ("HeteroFL", "FedRolex"):
        for data, table in PAPER.items():
            paper = [f"{a - b:+.2f}" for a, b in zip(table["FIARSE"], table[other], strict=True)]
            rows.append([f"FIARSE − {other}", f"paper, {data}", *paper])
        for label in ("FIARSE", OFFICIAL):
            mine, base = runs.get(label, {}), runs.get(other, {})
            seeds = sorted(set(mine) & set(base))
            if not seeds:
                continue
            cells = []
            for key in PAPER_COLUMNS:
                margins = [
                    mine[t][key] - base[t][key]
                    for t in seeds
                    if mine[t].get(key) is not None and base[t].get(key) is not None
                ]
                cells.append(fmt_pct(margins, signed=True))
            rows.append([f"{shown(label)} − {other}", f"ours, {len(seeds)} seed(s)", *cells])
    accs = [
        [method, data, *(f"{v:.2f}" for v in values)]
        for data, table in PAPER.items()
        for method, values in table.items()
    ]
    return f"""The paper's numbers beside ours (METHODS.md §7.5: CIFAR-10/100, static-BN ResNet-18, 100
clients, 800 rounds; ours: the setting above). Margins in points; ours are mean ± std of the
paired per-seed margins:

{markdown_table(["margin", "source", *names], rows)}

The paper's accuracies (%):

{markdown_table(["method", "data", *names], accs)}"""


def claims(rows: list[dict[str, Any]], default_seed: int = 0) -> list[tuple[str, str, str]]:
    """METHODS.md §7.6 must-show (a) and (b), each ``(claim, verdict, numbers)``, computed by
    :func:`benchmarks.common.claim_verdict` from per-seed paired margins."""
    runs = by_method(rows, default_seed)
    out: list[tuple[str, str, str]] = []
    checks = [
        ("Local", "local", 0.0, None),
        ("Global", "global", 0.0, None),
        ("Model(1/64)", "model-0.015625", 0.03, "model-share-0.015625"),
    ]
    for label in ("FIARSE", OFFICIAL):
        fiarse = runs.get(label, {})
        for other in ("HeteroFL", "FedRolex"):
            base = runs.get(other, {})
            seeds = sorted(set(fiarse) & set(base))
            if not seeds:
                continue
            for name, key, thr, share_key in checks:
                pairs = [(fiarse[t].get(key), base[t].get(key)) for t in seeds]
                margins = [a - b for a, b in pairs if a is not None and b is not None]
                if not margins:
                    continue
                tag = "(b)" if thr else "(a)"
                ahead = "ahead of" if not thr else "ahead by ≥ 3 points of"
                claim = f"{tag} {shown(label)} {ahead} {other} on {name}"
                verdict, text = claim_verdict(margins, thr)
                note = ""
                b_mean, _ = mean_std([b for _, b in pairs])
                if b_mean is not None and flagged(b_mean, _mean(base, share_key)):
                    note = (
                        f"; {other} is ⚠ on {name} ({100 * b_mean:.2f} %: at chance or predicting "
                        "mostly one class), so the margin says little"
                    )
                out.append((claim, verdict, text + note))
    return out


def render_json(data: dict[str, Any]) -> str:
    """Markdown report of one tier, a pure function of its JSON (``benchmarks.render``)."""
    rows: list[dict[str, Any]] = data["rows"]
    s = data["settings"]
    quick = int(s["num_server_rounds"]) <= 8
    tier = "quick" if quick else "reference"
    default_seed = int(s.get("seed", 0))
    runs = by_method(rows, default_seed)
    seeds = sorted({t for r in runs.values() for t in r})
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
        "wall s (mean)",
    ]

    def mean_of(r: dict[int, dict[str, Any]], key: str) -> float:
        m, _ = mean_std([x[key] for x in r.values()])
        return m or 0.0

    table = markdown_table(
        head,
        [
            [
                shown(label),
                _cell(r, "local"),
                *(_cell(r, f"model-{g:g}", f"model-share-{g:g}") for g in SIZES),
                _cell(r, "global"),
                f"{mean_of(r, 'mb-up-round'):.3f}",
                f"{mean_of(r, 'mb-down-round'):.3f}",
                f"{mean_of(r, 'mb-cum-train'):.1f}",
                f"{mean_of(r, 'mb-cum-all'):.1f}",
                f"{mean_of(r, 'wall-s'):.0f}",
            ]
            for label, r in runs.items()
        ],
    )
    gtable = markdown_table(
        ["Method", *(f"global acc @ {SIZE_LABELS[g]}" for g in SIZES), "Global (mean)"],
        [
            [
                shown(label),
                *(_cell(r, f"global-{g:g}", f"global-share-{g:g}") for g in SIZES),
                _cell(r, "global"),
            ]
            for label, r in runs.items()
        ],
    )
    stable = markdown_table(
        [
            "Method",
            *(f"global @ {SIZE_LABELS[g]}" for g in SIZES),
            *(f"Model({SIZE_LABELS[g]})" for g in SIZES),
        ],
        [
            [
                shown(label),
                *(_share_cell(r, f"global-share-{g:g}") for g in SIZES),
                *(_share_cell(r, f"model-share-{g:g}") for g in SIZES),
            ]
            for label, r in runs.items()
        ],
    )
    btable_rows = []
    for label, r in runs.items():
        first = r[min(r)]
        for g, d in first["payload-by-size"].items():
            btable_rows.append(
                [
                    shown(label),
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
    ctable = markdown_table(["claim", "verdict", "numbers"], claims(rows, default_seed))
    load = data.get("load")
    load_text = (
        f"load average {load[0]:.1f} at the start and {load[1]:.1f} at the end"
        if load
        else "load not recorded"
    )
    n = len(seeds)
    width = data.get("width-settings")
    width_text = (
        f"HeteroFL/FedRolex: {width}"
        if width
        else "HeteroFL/FedRolex: no label mask and no scaler (run before those became their defaults)"
    )
    return f"""# FIARSE vs HeteroFL vs FedRolex vs FedAvg (METHODS.md §7.6) — {tier} tier

Command: `{data["command"]}` ({data["wall-s"]:.0f} s wall for all methods and seeds, worker
processes with 1 torch thread each, on a 2-core host shared with other jobs, {load_text}; wall
times per method overlap). Seeds: {", ".join(str(t) for t in seeds)} ({n} seed{"s" if n > 1 else ""};
cells are mean ± sample std over seeds{"" if n > 1 else ", one seed: no spread"}). ⚠ marks a
slice at chance or collapsed onto one class: mean accuracy at or below {100 * CHANCE_FLAG:.0f} % (chance
{100 / NUM_CLASSES:.0f} % + 2 points), or, for a per-size cell, a mean majority-class share of that
size's predictions at or above {SHARE_FLAG:.2f} (table below; n/a in results written before the
share was logged, which then flag by accuracy only).

Setting: Fashion-MNIST, {NUM_CLIENTS} clients, balanced Dir({s["dirichlet_alpha"]}) with
{s["max_train_per_client"]} train samples each, local tests of {s["local_test_size"]}; sizes
{{1/64, 1/16, 1/4, 1}} in equal groups of 5 (partition ids 0–4 smallest); 10 clients per round;
{s["num_server_rounds"]} rounds; K = {s["local_steps"]} SGD steps of batch {s["batch_size"]}, lr
{s["lr"]}, η_g = 1; model `cnn_s` (FIARSE: **fedhet's variant**, conv2 and fc1 masked with one
τ each, conv1 and the classifier dense, biased surrogate; {OFFICIAL}, where run: the official
code's choices, one global τ over all layers, none dense, holders = nonzero updates, plain masked
gradient (`fiarse.scope=global fiarse.dense=none fiarse.holders=nonzero fiarse.surrogate=ste`);
{width_text}). Accuracies (%) are from the last evaluated round. Local = mean over
devices of their own-size model on their local test; Model(γ) = size-γ model on the pooled local
tests of the size-γ devices; Global = global-test accuracy averaged over the four sizes (FedAvg:
its one model). MB/round = training messages only (up and down, all sampled devices); cum. MB
(all) adds the evaluation messages.

{table}

Global-test accuracy per size (what Global averages):

{gtable}

Majority-class share per size (fraction of the size's predictions on its most-predicted class;
1.0 = one class for everything). Global test = `server-majority-share-g<γ>`: balanced, so a
healthy model is near {1 / NUM_CLASSES:.1f}. Model(γ) = `model-majority-share-g<γ>`, counts pooled
over the size-γ devices' local tests, which follow their Dir({s["dirichlet_alpha"]}) label skew: a
perfect model there scores those tests' own majority-class fraction, above {1 / NUM_CLASSES:.1f}.

{stable}

Claims (computed by `benchmarks.common.claim_verdict`: "holds" when the mean paired margin
exceeds twice its std over seeds, "fails" when it is reversed by more than that, else "within
noise"; one seed decides nothing):

{ctable}

{paper_section(runs)}

Payload bytes per trained device by size (first seed; training messages; FIARSE down = 4·kept +
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
    load_start = os.getloadavg()[0]
    start = time.time()
    jobs = [
        (label, args.quick, str(args.out), seed, args.reuse)
        for seed in args.seed_list
        for label in labels
    ]
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.map(_run_one, jobs, chunksize=1)
    else:
        results = [_run_one(j) for j in jobs]
    # with --reuse: at least the runs' own time spread over the workers
    total = max(time.time() - start, sum(w for _, _, w in results) / max(1, args.jobs))
    rows = [
        {**summarise(label, hist, wall), "seed": job[3]}
        for job, (label, hist, wall) in zip(jobs, results, strict=True)
    ]
    tier = "quick" if args.quick else "reference"
    command = "python -m benchmarks.fiarse" + (" --quick" if args.quick else "")
    if args.seeds > 1:
        command += f" --seeds {args.seeds}"
    if args.reuse:
        command += " --reuse"
    data = {
        "rows": rows,
        "settings": {**settings(args.quick), "seed": args.seed},
        "seeds": args.seed_list,
        "command": command,
        "wall-s": total,
        "load": [load_start, os.getloadavg()[0]],
        "width-settings": "label mask and width scaler on (their papers' defaults; the scaler "
        "acts only on models with normalisation layers, so not on cnn_s), β = √γ",
    }
    text = render_json(data)
    first = [
        (label, hist)
        for job, (label, hist, _) in zip(jobs, results, strict=True)
        if job[3] == args.seed
    ]
    plot_curves(
        {k: [h for h in v if h.get("server-accuracy") is not None] for k, v in first},
        args.out / f"fiarse-{tier}-curves.png",
        metric="server-accuracy",
        title=f"FIARSE benchmark ({tier}, seed {args.seed}): Global accuracy",
    )
    plot_sizes([r for r in rows if r["seed"] == args.seed], args.out / f"fiarse-{tier}-sizes.png")
    path = write_result(args.out, f"fiarse-{tier}", text, data)
    print(text)  # the benchmark's table output
    log.info("wrote %s", path)
    print(
        json.dumps(
            {
                f"{r['method']} s{r['seed']}": {"local": r["local"], "global": r["global"]}
                for r in rows
            }
        )
    )


if __name__ == "__main__":
    main()
