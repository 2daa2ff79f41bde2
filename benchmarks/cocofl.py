"""CoCoFL vs FedAvg-full vs FedAvg-drop on the three-tier fleet (METHODS.md §6.6, C1 and C2).

Fashion-MNIST, split C1 (``--split c1``, default): Dir(0.1) with equal shards
(``partition=dirichlet-shards``); split C2 (``--split c2``): label skew correlated with the
device class (``partition=group-correlated``: each class keeps 80 % of its samples in its home
device class, homes {0,1,2} strong, {3,4,5} medium, {6,…,9} weak), where the fairness claim is
the final global model's accuracy on each device class's home classes. ``cnn_b`` (6 units, 21
windows, the shipped measured cost table ``fedhet/models/costs/cnn_b-b32.json``), 30 devices in
the standard fleet (10 strong, 10 medium, 10 weak; §2), 10 sampled per round, local tests of 500.

* **CoCoFL** (``cocofl``): every device trains a window within (T, D_t, M).
* **FedAvg-full** (``fedavg``): every device trains the full model, as if all had full resources
  (upper bound; breaks the weak devices' budgets). Plain ``fedavg`` plans every device for full
  training whatever its budget, so it runs on the same three-tier fleet, and in C2 on the same
  partition (the group-correlated split follows the fleet's device classes).
* **FedAvg-drop** (``fedavg-drop``): only the strong devices train: min(m, |strong pool|) =
  min(10, 10) per round, m being the sample size of the other methods (METHODS.md §6.2, the
  official code); every device is evaluated, as for the other methods.

All three use SGD without momentum, weight decay 1e-3, batch 32, the same local steps and the same
learning-rate schedule. CoCoFL steps its lr with ``cocofl.lr-milestones``; FedAvg has no schedule
key, so its runs are split into segments at the milestones with the in-process devices' ``lr``
changed between them (:func:`run_segmented`), giving the identical lr per round.

Tiers (1 torch thread, methods one after another):

* reference: ``python -m benchmarks.cocofl`` — 40 rounds, 20 steps, lr 0.1 ÷10 after rounds 24
  and 32 (§6.4, §6.6);
* quick: ``python -m benchmarks.cocofl --quick`` — 5 rounds of the same federation, constant
  lr 0.1 (a ÷10 step at round 3 of 5 would only stall the short run).

Writes ``benchmarks/results/cocofl-<tier>[-c2].md`` (+ ``.json`` and ``-curves.png``: global-test
accuracy vs round and vs cumulative MB). Per-device-class accuracy is the final global model on
the local tests of the devices of each three-tier class (same partition ids in every method).
Measured fractions per class come from CoCoFL's per-node metrics: upload = uploaded payload bytes /
full model bytes; memory = counted peak training bytes / those of full training (the strong
devices' full window); time = train seconds / the strong devices' median in the same round (noisy
on a shared host).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    claim_verdict,
    fmt_pct,
    markdown_table,
    mb,
    mean_std,
    merge_saved,
    parse_args,
    plot_curves,
    setup,
    write_result,
)
from fedhet.config import default_run_config
from fedhet.data.partition import GROUP_HOME_SHARE, GROUP_HOMES
from fedhet.methods import get_method, parse_run_config
from fedhet.methods.cocofl.config import parse_milestones, step_lr
from fedhet.plan import CLASS_BUDGETS, fleet_class
from fedhet.server.run_dir import RunDir
from fedhet.sim import LocalGrid, simulated_node_configs

log = logging.getLogger("benchmarks.cocofl")

BENCH = "cocofl"
NUM_DEVICES = 30
CLASSES: tuple[str, ...] = tuple(CLASS_BUDGETS)
MILESTONES = "0.6,0.8"

#: CoCoFL planning with the analytic cost table.
ANALYTIC = "CoCoFL (analytic table)"
#: Issue 14 follow-up of cocofl-notes.md: BN running statistics averaged over the devices that
#: trained a unit (``cocofl.bn-stats=holders``) instead of zero-filled (METHODS.md §6.2, default).
HOLDERS = "CoCoFL (BN stats over holders)"

#: label -> (registered method, run-config overrides)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "CoCoFL": ("cocofl", {}),
    "FedAvg-full": ("fedavg", {"fedavg.weight-decay": 1e-3}),
    "FedAvg-drop": ("fedavg-drop", {"fedavg-drop.weight-decay": 1e-3}),
    # Issue 14: the accuracy effect of planning with the analytic cost table (METHODS.md B7)
    # instead of the measured one (the analytic table admits windows 0-0 and 1-2 to medium devices).
    ANALYTIC: ("cocofl", {"cocofl.cost": "analytic"}),
    HOLDERS: ("cocofl", {"cocofl.bn-stats": "holders"}),
}
#: What a plain run compares (METHODS.md §6.6); the analytic-table row runs on request.
DEFAULT_LABELS = ["CoCoFL", "FedAvg-full", "FedAvg-drop"]


#: Splits of METHODS.md §6.6: C1 Dir(0.1) equal shards; C2 label skew correlated with device class.
SPLITS: dict[str, str] = {"c1": "dirichlet-shards", "c2": "group-correlated"}


def settings(quick: bool, split: str = "c1") -> dict[str, Any]:
    """Shared run config of a tier and split (METHODS.md §6.6 C1 or C2)."""
    return {
        "dataset": "fashion-mnist",
        "model": "cnn_b",
        "partition": SPLITS[split],
        "dirichlet-alpha": 0.1,
        "fleet": "three-tier",
        "local-test-size": 500,
        "fraction-train": 1 / 3,
        "fraction-evaluate": 0.0,
        "num-server-rounds": 5 if quick else 40,
        "local-steps": 20,
        "batch-size": 32,
        "lr": 0.1,
        "seed": 0,
        "profile-bench": False,
        "checkpoint-every": 1000,
    }


def lr_segments(raw: dict[str, Any], milestones: tuple[float, ...]) -> list[tuple[int, float]]:
    """``[(last round, lr), ...]``: maximal runs of rounds with the same :func:`step_lr`."""
    rounds = int(raw["num-server-rounds"])
    segments: list[tuple[int, float]] = []
    for t in range(1, rounds + 1):
        lr = step_lr(float(raw["lr"]), t, rounds, milestones, 0.1)
        if segments and segments[-1][1] == lr:
            segments[-1] = (t, lr)
        else:
            segments.append((t, lr))
    return segments


def run_segmented(
    run_name: str, method: str, out: Path, milestones: tuple[float, ...], **config: Any
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Run ``method`` on the 30-device LocalGrid; returns (metrics lines, final global arrays).

    Methods with their own schedule (CoCoFL) run in one piece. For the others, the run stops at
    every lr milestone and resumes (same strategy, same run folder) with the devices' run-config
    ``lr`` set to the next value, which is what their ClientApp reads.
    """
    raw = default_run_config(
        method=method,
        run_name=run_name,
        output_dir=str(out / "raw" / BENCH),
        min_nodes=NUM_DEVICES,
    )
    raw.update(config)
    own_schedule = method == "cocofl"
    if own_schedule:
        raw["cocofl.lr-milestones"] = ",".join(f"{m:g}" for m in milestones)
    cfg = parse_run_config(raw)
    run_dir = out / "raw" / BENCH / run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    from client_app.app import app as client_app

    grid = LocalGrid(client_app, simulated_node_configs(NUM_DEVICES), raw)
    strategy = get_method(method).strategy_cls(cfg, RunDir(run_dir))
    segments = [(int(raw["num-server-rounds"]), float(raw["lr"]))]
    if not own_schedule:
        segments = lr_segments(raw, milestones)
    history: list[dict[str, Any]] = []
    for last_round, lr in segments:
        grid.run_config["lr"] = lr  # shared by every in-process device's Context
        strategy.start(grid, num_rounds=last_round)
        history += strategy.history
    return history, strategy.global_arrays


def _global_model(arrays: dict[str, np.ndarray], raw: dict[str, Any]) -> torch.nn.Module:
    from fedhet.models import build_model

    model = build_model(str(raw["model"]))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    return model


def class_accuracy(arrays: dict[str, np.ndarray], raw: dict[str, Any]) -> dict[str, float]:
    """Accuracy of a global model on the pooled local tests of each three-tier device class."""
    from fedhet.client.training import evaluate_model
    from fedhet.data import federated_split

    model = _global_model(arrays, raw)
    counts = {c: [0, 0] for c in CLASSES}
    groups = [fleet_class("three-tier", pid, NUM_DEVICES) for pid in range(NUM_DEVICES)]
    for pid in range(NUM_DEVICES):
        split = federated_split(
            str(raw["dataset"]),
            NUM_DEVICES,
            pid,
            scheme=str(raw["partition"]),
            alpha=float(raw["dirichlet-alpha"]),
            seed=int(raw["seed"]),
            local_test_size=int(raw["local-test-size"]),
            groups=groups if raw["partition"] == SPLITS["c2"] else None,
        )
        correct, total, _ = evaluate_model(model, split.test)
        cls = fleet_class("three-tier", pid, NUM_DEVICES)
        counts[cls][0] += correct
        counts[cls][1] += total
    return {c: k / n for c, (k, n) in counts.items() if n}


def home_accuracy(arrays: dict[str, np.ndarray], raw: dict[str, Any]) -> dict[str, float]:
    """C2's fairness metric: accuracy of a global model on the global test items of each device
    class's home classes (:data:`fedhet.data.partition.GROUP_HOMES`; METHODS.md §6.6)."""
    from fedhet.client.training import evaluate_model
    from fedhet.data.images import load_image_dataset

    model = _global_model(arrays, raw)
    _, test = load_image_dataset(str(raw["dataset"]))
    labels = test.y.numpy()
    out = {}
    for cls, homes in GROUP_HOMES.items():
        correct, total, _ = evaluate_model(
            model, test.subset(np.flatnonzero(np.isin(labels, homes)))
        )
        out[cls] = correct / total
    return out


def cocofl_costs(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Predicted and measured fractions of full training per device class, and budget breaches."""
    trained = [(h["round"], n) for h in history for n in h["nodes"] if n.get("status") == "trained"]
    full_peak = max(
        (
            n["measured-peak-mem-bytes"]
            for _, n in trained
            if n["plan-window-start"] == 0 and n["plan-window-end"] == 5
        ),
        default=0,
    )
    strong_secs: dict[int, list[float]] = {}
    for rnd, n in trained:
        if n["device-class"] == "strong":
            strong_secs.setdefault(rnd, []).append(n["measured-train-seconds"])
    all_strong = [s for v in strong_secs.values() for s in v]
    out: dict[str, dict[str, Any]] = {}
    for cls in CLASSES:
        rows = [(rnd, n) for rnd, n in trained if n["device-class"] == cls]
        if not rows:
            continue
        t_budget, m_budget, _, _ = CLASS_BUDGETS[cls]
        time_frac: list[float] = []
        mem_frac: list[float] = []
        data_frac: list[float] = []
        windows: dict[str, int] = {}
        over = {"time": 0, "data": 0, "memory": 0, "plan": 0}
        for rnd, n in rows:
            ref = statistics.median(strong_secs.get(rnd) or all_strong or [np.nan])
            tf = n["measured-train-seconds"] / ref
            mf = n["measured-peak-mem-bytes"] / full_peak if full_peak else float("nan")
            df = n["measured-data"]
            time_frac.append(tf)
            mem_frac.append(mf)
            data_frac.append(df)
            key = f"{n['plan-window-start']}-{n['plan-window-end']}"
            windows[key] = windows.get(key, 0) + 1
            # strong devices are the time reference itself (T = 1): no breach to count
            over["time"] += cls != "strong" and tf > t_budget
            over["memory"] += mf > m_budget + 1e-9
            over["data"] += df > n["plan-upload-budget"] + 1e-9
            over["plan"] += (
                n["plan-time"] > t_budget + 1e-9
                or n["plan-memory"] > m_budget + 1e-9
                or n["plan-data"] > n["plan-upload-budget"] + 1e-9
            )
        out[cls] = {
            "device-rounds": len(rows),
            "budget": {
                "T": t_budget,
                "M": m_budget,
                "D_t": [
                    min(n["plan-upload-budget"] for _, n in rows),
                    max(n["plan-upload-budget"] for _, n in rows),
                ],
            },
            "windows": dict(sorted(windows.items())),
            "plan-time": statistics.mean(n["plan-time"] for _, n in rows),
            "plan-data": statistics.mean(n["plan-data"] for _, n in rows),
            "plan-memory": statistics.mean(n["plan-memory"] for _, n in rows),
            "time": statistics.median(time_frac),
            "time-max": max(time_frac),
            "data": statistics.mean(data_frac),
            "data-max": max(data_frac),
            "memory": statistics.mean(mem_frac),
            "memory-max": max(mem_frac),
            "over": over,
        }
    return out


def upload_per_class(history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean training-reply payload MB per trained device-round, by three-tier class."""
    per: dict[str, list[float]] = {}
    for h in history:
        for n in h["nodes"]:
            if n.get("status") == "trained":
                pid = int(str(n["device-id"]).rsplit("-", 1)[1])
                cls = fleet_class("three-tier", pid, NUM_DEVICES)
                per.setdefault(cls, []).append(mb(n["payload-bytes-up"]))
    return {c: statistics.mean(v) for c, v in per.items()}


def summarise(
    label: str,
    history: list[dict[str, Any]],
    arrays: dict[str, np.ndarray],
    raw: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    """Final accuracy, per-class accuracy and traffic of one run."""
    last = history[-1]
    row: dict[str, Any] = {
        "method": label,
        "rounds": len(history),
        "wall-s": wall,
        "accuracy": last.get("server-accuracy"),
        "class-accuracy": class_accuracy(arrays, raw),
        "home-accuracy": home_accuracy(arrays, raw),
        "mb-up-per-class": upload_per_class(history),
        "trained-per-round": statistics.mean(h["num-trained"] for h in history),
        "mb-up-total": mb(last["cum-bytes-up"]),
        "mb-down-total": mb(last["cum-bytes-down"]),
        "curve": [
            {
                "round": h["round"],
                "server-accuracy": h.get("server-accuracy"),
                "cum-bytes-up": h["cum-bytes-up"],
                "cum-bytes-down": h["cum-bytes-down"],
            }
            for h in history
        ],
    }
    if label == "CoCoFL":
        row["costs"] = cocofl_costs(history)
        row["unit-trainers"] = [h.get("cocofl-unit-trainers") for h in history]
    return row


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _by_method(rows: list[dict[str, Any]], default_seed: int) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["method"], {})[int(r.get("seed", default_seed))] = r
    return out


#: Rows compared with the default CoCoFL row (issue 14): (label, what changed, the difference,
#: what "holds" means).
VARIANT_CHECKS: tuple[tuple[str, str, str, str], ...] = (
    (
        ANALYTIC,
        "Cost table (issue 14): planning with the analytic table instead of the measured one",
        "analytic − measured",
        "the analytic table",
    ),
    (
        HOLDERS,
        "BN statistics (issue 14): averaged over the devices that trained a unit instead of "
        "zero-filled",
        "holders − zero-fill",
        "averaging over holders",
    ),
)


def verdict(rows: list[dict[str, Any]], quick: bool, default_seed: int = 0) -> str:
    """The paper's claims (METHODS.md §6.6 must-show a, c, d) from this run's numbers; a, c
    by :func:`benchmarks.common.claim_verdict` on per-seed paired margins."""
    runs = _by_method(rows, default_seed)
    coco, full, drop = (runs.get(k, {}) for k in ("CoCoFL", "FedAvg-full", "FedAvg-drop"))
    lines = []
    seeds = sorted(set(coco) & set(drop))
    if seeds:
        margins = [coco[t]["accuracy"] - drop[t]["accuracy"] for t in seeds]
        v, text = claim_verdict(margins)
        lines.append(f"- (a) CoCoFL above FedAvg-drop: **{v}** ({text}).")
    seeds = sorted(set(coco) & set(drop) & set(full))
    if seeds:
        below = [full[t]["accuracy"] - coco[t]["accuracy"] for t in seeds]
        v1, t1 = claim_verdict(below)
        gap = [
            (full[t]["accuracy"] - drop[t]["accuracy"])
            - (full[t]["accuracy"] - coco[t]["accuracy"])
            for t in seeds
        ]
        v2, t2 = claim_verdict(gap)
        lines.append(
            f"- (c) CoCoFL ≤ FedAvg-full: **{v1}** (FedAvg-full − CoCoFL, {t1}); with a smaller "
            f"gap than FedAvg-drop's: **{v2}** (gap difference, {t2})."
        )
    for label, what, difference, better in VARIANT_CHECKS:
        variant = runs.get(label, {})
        seeds = sorted(set(coco) & set(variant))
        if seeds:
            v, text = claim_verdict([variant[t]["accuracy"] - coco[t]["accuracy"] for t in seeds])
            lines.append(
                f"- {what}, final accuracy {difference}: {text} "
                f'("holds" = {better} gives higher accuracy; here **{v}**).'
            )
    if coco:
        first = coco[min(coco)]
        over = {c: d["over"] for c, d in first["costs"].items()}
        n_t = sum(o["time"] for o in over.values())
        n_d = sum(o["data"] for o in over.values())
        n_m = sum(o["memory"] for o in over.values())
        n_p = sum(o["plan"] for o in over.values())
        lines.append(
            f"- (d) budgets (seed {min(coco)}): planned windows over budget: {n_p}; measured "
            f"device-rounds over D_t: {n_d}, over M: {n_m}, over T (wall time, noisy on a shared "
            f"host): {n_t}."
        )
    if quick:
        lines.append(
            "- Quick tier: 5 rounds on a loaded host; accuracies are still rising steeply (see "
            "the curves), so the ordering is indicative only."
        )
    return "\n".join(lines)


def split_of(settings_: dict[str, Any]) -> str:
    """``c1`` or ``c2`` from a tier's run settings."""
    return next(k for k, v in SPLITS.items() if v == settings_.get("partition", SPLITS["c1"]))


def fairness_section(runs: dict[str, dict[int, dict[str, Any]]]) -> str:
    """C2's fairness table (home-class accuracy by device class) and claim (b), computed."""
    table = markdown_table(
        [
            "Method",
            *(f"home classes of {c} {{{','.join(map(str, GROUP_HOMES[c]))}}}" for c in CLASSES),
        ],
        [
            [
                label,
                *(
                    fmt_pct([x.get("home-accuracy", {}).get(c) for x in r.values()])
                    for c in CLASSES
                ),
            ]
            for label, r in runs.items()
        ],
    )
    coco, drop = runs.get("CoCoFL", {}), runs.get("FedAvg-drop", {})
    seeds = sorted(t for t in set(coco) & set(drop) if "home-accuracy" in coco[t])
    lines = []
    for cls in CLASSES:
        if not seeds:
            break
        v, text = claim_verdict(
            [coco[t]["home-accuracy"][cls] - drop[t]["home-accuracy"][cls] for t in seeds]
        )
        claim = "(b) " if cls == "weak" else ""
        lines.append(
            f"- {claim}CoCoFL above FedAvg-drop on the {cls} devices' home classes: **{v}** ({text})."
        )
    return f"""
Fairness (METHODS.md §6.6 b): accuracy in % of the final global model on the global test items of
each device class's home classes (mean ± std over seeds); claim (b) is the weak row.

{table}

{chr(10).join(lines)}
"""


def render_json(data: dict[str, Any]) -> str:
    """Markdown of one tier, a pure function of its JSON (``benchmarks.render``)."""
    quick = int(data["settings"]["num-server-rounds"]) <= 5
    load = data.get("load") or (float("nan"), float("nan"))
    return render(data["rows"], quick, data["command"], data["wall-s"], tuple(load), data)


def render(
    rows: list[dict[str, Any]],
    quick: bool,
    command: str,
    total: float,
    load: tuple[float, ...],
    data: dict[str, Any] | None = None,
) -> str:
    """Markdown tables of one tier (accuracy cells: mean ± std over seeds)."""
    tier = "quick" if quick else "reference"
    s = (data or {}).get("settings") or settings(quick)
    split = split_of(s)
    suffix = "" if split == "c1" else f"-{split}"
    default_seed = int(s.get("seed", 0))
    runs = _by_method(rows, default_seed)
    seeds = sorted({t for r in runs.values() for t in r})
    split_text = (
        f"Dir({s['dirichlet-alpha']}) equal shards (`dirichlet-shards`)"
        if split == "c1"
        else "group-correlated split (`group-correlated`: each class keeps "
        f"{100 * GROUP_HOME_SHARE:.0f} % of its samples in its home device class, the rest "
        "spread evenly over the other two; homes "
        + "; ".join(f"{c} {{{', '.join(map(str, h))}}}" for c, h in GROUP_HOMES.items())
        + ")"
    )
    other_split = (
        f"C2 (group-correlated split) is `--split c2`, in `cocofl-{tier}-c2.md` where it was run."
        if split == "c1"
        else f"C1 (Dir(0.1) equal shards) is in `cocofl-{tier}.md`."
    )
    full_fleet = (
        "; plain `fedavg` on the same three-tier fleet and partition, every device trained in full"
        if (data or {}).get("fedavg-full-fleet") == "three-tier"
        else "; run with `fleet=uniform` (every device strong), so its upload shows only 'strong'"
    )
    fairness = fairness_section(runs) if split == "c2" else ""
    drop_note = (data or {}).get(
        "fedavg-drop",
        "3 of the 10 strong per round (a fraction of the strong pool; run before the fix that "
        "samples min(m, |strong pool|)), evaluated only on those",
    )

    def mean_of(r: dict[int, dict[str, Any]], get: Any) -> float:
        m, _ = mean_std([get(x) for x in r.values()])
        return float("nan") if m is None else m

    load_text = (
        f"load average {load[0]:.1f} at the start and {load[1]:.1f} at the end"
        if len(load) == 2 and all(x == x for x in load)
        else "load not recorded in the JSON"
    )
    acc = markdown_table(
        [
            "Method",
            "final acc (global test)",
            *(f"acc {c}" for c in CLASSES),
            *(f"MB up/device-round {c}" for c in CLASSES),
            "trained/round",
            "MB up total",
            "MB down total",
            "wall s",
        ],
        [
            [
                label,
                fmt_pct([x["accuracy"] for x in r.values()]),
                *(fmt_pct([x["class-accuracy"].get(c) for x in r.values()]) for c in CLASSES),
                *(
                    f"{mean_of(r, lambda x, c=c: x['mb-up-per-class'].get(c)):.4f}"
                    if any(c in x["mb-up-per-class"] for x in r.values())
                    else "–"
                    for c in CLASSES
                ),
                f"{mean_of(r, lambda x: x['trained-per-round']):.1f}",
                f"{mean_of(r, lambda x: x['mb-up-total']):.2f}",
                f"{mean_of(r, lambda x: x['mb-down-total']):.2f}",
                f"{mean_of(r, lambda x: x['wall-s']):.0f}",
            ]
            for label, r in runs.items()
        ],
    )
    coco_runs = runs.get("CoCoFL", {})
    coco = coco_runs[min(coco_runs)] if coco_runs else None
    cost_table = ""
    if coco is not None:
        cost_rows = []
        for c, d in coco["costs"].items():
            b = d["budget"]
            cost_rows.append(
                [
                    c,
                    d["device-rounds"],
                    f"{b['T']:.2f} / {b['D_t'][0]:.2f}–{b['D_t'][1]:.2f} / {b['M']:.2f}",
                    ", ".join(f"{w}×{k}" for w, k in d["windows"].items()),
                    f"{d['plan-time']:.3f} / {d['plan-data']:.3f} / {d['plan-memory']:.3f}",
                    f"{d['time']:.3f} (max {d['time-max']:.3f})",
                    f"{d['data']:.3f} (max {d['data-max']:.3f})",
                    f"{d['memory']:.3f} (max {d['memory-max']:.3f})",
                    f"{d['over']['time']} / {d['over']['data']} / {d['over']['memory']}",
                ]
            )
        cost_table = markdown_table(
            [
                "class",
                "device-rounds",
                "budget T / D_t range / M",
                "windows chosen (×count)",
                "predicted time / data / memory (mean)",
                "measured time (median)",
                "measured data (mean)",
                "measured memory (mean)",
                "device-rounds over T / D_t / M (measured)",
            ],
            cost_rows,
        )
    milestones = (
        "constant lr"
        if quick
        else f"÷10 after rounds {', '.join(str(int(float(m) * s['num-server-rounds'])) for m in MILESTONES.split(','))}"
    )
    return f"""# CoCoFL vs FedAvg-full vs FedAvg-drop (METHODS.md §6.6, {split.upper()}) — {tier} tier

Command: `{command}` ({total:.0f} s wall for the three methods run one after another, 1 torch
thread; host: 2 cores shared with other engineers' jobs, {load_text}). Seeds: {", ".join(str(t) for t in seeds)}; accuracy cells are
mean ± sample std over seeds (one seed: no spread).

Setting: Fashion-MNIST, {NUM_DEVICES} devices, {split_text}, three-tier fleet (10 strong T=M=D=1; 10 medium T=M=0.66; 10 weak T=M=0.33;
medium and weak D_t ~ U(0.5, 1) per round), 10 devices sampled per round (FedAvg-drop:
{drop_note}), {s["num-server-rounds"]} rounds, {s["local-steps"]} SGD steps of batch
{s["batch-size"]}, lr {s["lr"]} ({milestones}), weight decay 1e-3, no momentum; model `cnn_b`;
CoCoFL with the shipped measured cost table `fedhet/models/costs/cnn_b-b32.json`, real int8 before
the window, uniform choice among maximal feasible windows, zero-fill unweighted aggregation.
Accuracy in %: final global model on the global test set, and on the pooled local tests (500 per
device, the device's class mix) of each three-tier class. FedAvg-full ignores the budgets (upper
bound{full_fleet}). MB up/device-round = training-reply payload per trained device and round.

{acc}
{fairness}
Claims of the paper against this run:

{verdict(rows, quick, default_seed)}

CoCoFL measured costs (first seed) as fractions of full training, per device class (predicted = the cost
table's row of the chosen window; time is measured wall time of the round's local training
relative to the strong devices' full-model training in the same round; upload and memory are
exact byte counts):

{cost_table}

![accuracy vs round and vs bytes](cocofl-{tier}{suffix}-curves.png)

Notes and deviations: {other_split} Measured time includes building the
windowed model (int8 conversion and calibration on the first batch) and the memory-counting first
step, on every device alike.
"""


#: Result files of this benchmark, in the order ``cocofl.md`` combines them.
TIERS: tuple[str, ...] = ("reference", "reference-c2", "quick", "quick-c2")

#: Hand-written findings appended to ``cocofl.md`` after the generated tiers.
NOTES = "cocofl-notes.md"


def combine_tiers(out: Path) -> Path:
    """``cocofl.md`` = the reference tier's section (if run), the quick tier's, the feasible
    windows per class (:mod:`benchmarks.cocofl_windows`), then the notes."""
    from benchmarks.cocofl_windows import render_windows

    parts = [
        (out / f"cocofl-{tier}.md").read_text()
        for tier in TIERS
        if (out / f"cocofl-{tier}.md").exists()
    ]
    if parts:
        parts.append(render_windows(out))
    if (out / NOTES).exists():
        parts.append((out / NOTES).read_text())
    path = out / "cocofl.md"
    path.write_text("\n\n".join(parts))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        list(METHODS),
        "5-round tier (< 5 min on 2 cores)",
        argv,
        extra=[
            ("--split", {"choices": list(SPLITS), "default": "c1", "help": "§6.6 C1 or C2"}),
            (
                "--merge",
                {
                    "action": "store_true",
                    "help": "add these runs to the tier's saved JSON (same method and seed replaced)",
                },
            ),
        ],
    )
    setup(1)
    if args.methods == ",".join(METHODS):  # the default: the three §6.6 methods
        args.labels = list(DEFAULT_LABELS)
    labels = args.labels
    tier = "quick" if args.quick else "reference"
    suffix = "" if args.split == "c1" else f"-{args.split}"
    milestones = () if args.quick else parse_milestones(MILESTONES)
    load_start = os.getloadavg()[0]
    start = time.time()
    rows, curves = [], {}
    for seed in args.seed_list:
        for label in labels:
            method, keys = METHODS[label]
            config = {**settings(args.quick, args.split), "seed": seed, **keys}
            t0 = time.time()
            history, arrays = run_segmented(
                f"{tier}{suffix}-{method}-s{seed}", method, args.out, milestones, **config
            )
            wall = time.time() - t0
            raw = {**settings(args.quick, args.split), "seed": seed}
            rows.append({**summarise(label, history, arrays, raw, wall), "seed": seed})
            if seed == args.seed:
                curves[label] = history
            log.info(
                "%s s%d: final accuracy %.4f in %.0f s", label, seed, rows[-1]["accuracy"], wall
            )
    total = time.time() - start
    command = "python -m benchmarks.cocofl" + (" --quick" if args.quick else "")
    if args.seeds > 1:
        command += f" --seeds {args.seeds}"
    if args.split != "c1":
        command += f" --split {args.split}"
    if labels != DEFAULT_LABELS:
        command += f" --methods {shlex.quote(','.join(labels))}"
    name = f"cocofl-{tier}{suffix}"
    seed_list = list(args.seed_list)
    if args.merge:
        merged = merge_saved(
            args.out / f"{name}.json", "rows", rows, ("method", "seed"), seed_list, command, total
        )
        rows, seed_list, command, total = merged.rows, merged.seeds, merged.command, merged.wall
    data = {
        "rows": rows,
        "settings": {**settings(args.quick, args.split), "seed": args.seed},
        "fedavg-full-fleet": "three-tier",
        "seeds": seed_list,
        "command": command,
        "milestones": milestones,
        "wall-s": total,
        "load": [load_start, os.getloadavg()[0]],
        "fedavg-drop": "min(m, |strong pool|) = 10 of the 10 strong per round, every device "
        "evaluated",
    }
    text = render_json(data)
    if not args.merge:  # a merge keeps the tier's plot of its first seed
        plot_curves(
            curves,
            args.out / f"{name}-curves.png",
            metric="server-accuracy",
            title=f"CoCoFL benchmark ({tier}, {args.split.upper()}, seed {args.seed}): "
            "global-test accuracy",
        )
    path = write_result(args.out, name, text, data)
    combined = combine_tiers(args.out)
    print(text)  # the benchmark's table output
    log.info("wrote %s and %s", path, combined)


if __name__ == "__main__":
    main()
