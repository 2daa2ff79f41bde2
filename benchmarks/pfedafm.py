"""pFedAFM vs Standalone vs FedAvg(CNN-5) on Fashion-MNIST (METHODS.md §5.6; arXiv 2404.17847).

Setting (§5.6): 10 clients, all sampled every round (C = 1), architectures CNN-1…5 by device index
mod 5 (``*.arch-assignment=index``, the paper's code), G = the CNN-5 extractor; ≤ 1,500 training
samples per client, local tests of 300 with the client's classes; two splits:

* P1 pathological, 2 classes per client (shares U(0.4, 0.6));
* P2 Dirichlet(0.5).

Methods (same SGD settings: lr 0.01, momentum 0.9, weight decay 1e-3, batch 128; compute-matched
at 2E = 2 epochs per round):

* pFedAFM: E = 1 epoch per stage (stage 1: local model + α, stage 2: G through the local header);
* Standalone: each client trains its own CNN-x alone, 2 epochs per round, no communication;
* FedAvg (CNN-5): the existing ``fedavg`` method on ``afm_cnn5``, the one architecture every device
  can hold, 2 local epochs, the global model tested on each client's local test.

Metric: mean over clients of local-test accuracy (correct / total per client), last round.
Claims (§5.6): (a) pFedAFM ≥ Standalone and ≥ FedAvg on P1 and P2; (b) pFedAFM's mean α < 1.
Each claim is judged from the data over ``--seeds`` seeds (paired by seed): **holds** if the mean
margin is positive and > 2× its standard deviation, **fails** if it is negative beyond that,
**within noise** otherwise (with one seed there is no spread: the sign decides, and it says so).

Tiers: ``python -m benchmarks.pfedafm --quick --seeds 3`` (3 rounds) and the reference
``python -m benchmarks.pfedafm`` (20 rounds). Writes ``benchmarks/results/pfedafm-<tier>.md``,
``.json``, ``.png`` and the index ``pfedafm.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import shlex
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    claim_verdict,
    markdown_table,
    mb,
    merge_saved,
    parse_args,
    run_method,
    setup,
    write_result,
)
from fedhet.core.summaries import mean_by_group, mean_over_devices
from fedhet.models.cnn import AFM_ARCHS

log = logging.getLogger("benchmarks.pfedafm")

NUM_CLIENTS = 10
ARCHS = list(AFM_ARCHS)
SPLITS: dict[str, dict[str, Any]] = {
    "P1": {"partition": "pathological", "pathological_k": 2},
    "P2": {"partition": "dirichlet", "dirichlet_alpha": 0.5},
}
SGD = {"lr": 0.01, "momentum": 0.9, "weight-decay": 0.001, "batch-size": 128}

#: The cause check of issue 12: pFedAFM with a 100× larger α learning rate.
ALPHA_LR = "pFedAFM (α lr 1.0)"

#: label -> (registered method, run-config keys)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "pFedAFM": (
        "pfedafm",
        {"model": "afm_cnn5", "pfedafm.arch-assignment": "index", "pfedafm.epochs": 1}
        | {f"pfedafm.{k}": v for k, v in SGD.items()},
    ),
    "Standalone": (
        "standalone",
        {"model": "afm_cnn5", "standalone.arch-assignment": "index", "standalone.epochs": 2}
        | {f"standalone.{k}": v for k, v in SGD.items()},
    ),
    "FedAvg (CNN-5)": (
        "fedavg",
        {
            "model": "afm_cnn5",
            "lr": SGD["lr"],
            "batch-size": SGD["batch-size"],
            "local-epochs": 2,
            "fedavg.momentum": SGD["momentum"],
            "fedavg.weight-decay": SGD["weight-decay"],
        },
    ),
    "pFedAFM (α fixed 0.5)": (
        "pfedafm",
        {
            "model": "afm_cnn5",
            "pfedafm.arch-assignment": "index",
            "pfedafm.alpha-init": 0.5,
            "pfedafm.train-alpha": False,
        }
        | {f"pfedafm.{k}": v for k, v in SGD.items()},
    ),
    # Cause of the failed "≥ Standalone" claim (issue 12): at the official lr-alpha 0.01, α moves
    # ≈ 0.0005 per round and pFedAFM stays a local model with half Standalone's epochs. A 100×
    # larger α step lets the mixture move within the run.
    ALPHA_LR: (
        "pfedafm",
        {
            "model": "afm_cnn5",
            "pfedafm.arch-assignment": "index",
            "pfedafm.epochs": 1,
            "pfedafm.lr-alpha": 1.0,
        }
        | {f"pfedafm.{k}": v for k, v in SGD.items()},
    ),
}
DEFAULT_METHODS = ["pFedAFM", "Standalone", "FedAvg (CNN-5)"]


def settings(quick: bool) -> dict[str, Any]:
    """Shared run config of a tier (METHODS.md §5.6)."""
    return {
        "dataset": "fashion-mnist",
        "max_train_per_client": 1500,
        "local_test_size": 300,
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "num_server_rounds": 3 if quick else 20,
        "profile_bench": False,
        "server_eval": False,
        "checkpoint_every": 1000,
    }


def arch_of(device_id: str) -> str:
    """Architecture of a simulated device under the index rule (partition-id mod 5)."""
    return ARCHS[int(device_id.rsplit("-", 1)[1]) % len(ARCHS)]


def _slug(label: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in label.lower()).strip("-")


def _run_one(job: tuple[str, str, bool, str, int, bool]) -> dict[str, Any]:
    label, split, quick, out, seed, reuse = job
    setup(1)
    method, keys = METHODS[label]
    config = {**settings(quick), **SPLITS[split], **keys, "seed": seed}
    run_name = f"{'quick' if quick else 'ref'}-{split}-{_slug(label)}-s{seed}"
    history = run_method(
        "pfedafm", run_name, method, num_nodes=NUM_CLIENTS, out=Path(out), reuse=reuse, **config
    )
    # the rounds' own wall times: they also hold for a run read back with --reuse
    return summarise(label, split, seed, history, sum(float(r["wall-seconds"]) for r in history))


def summarise(
    label: str, split: str, seed: int, history: list[dict[str, Any]], wall: float
) -> dict[str, Any]:
    """Per-round mean-over-clients accuracy, α, bytes and the last round's per-arch breakdown."""
    curve = []
    for h in history:
        nodes = [
            {**n, "arch": n.get("arch") or arch_of(n["device-id"])}
            for n in h["nodes"]
            if n.get("eval-accuracy") is not None
        ]
        curve.append(
            {
                "round": h["round"],
                "accuracy": mean_over_devices(nodes, "eval-accuracy"),
                "g-accuracy": mean_over_devices(nodes, "eval-g-accuracy"),
                "alpha-mean": h.get("alpha-mean"),
                "by-arch": mean_by_group(nodes, "eval-accuracy", "arch"),
                "alpha-by-arch": {a: h[f"alpha-mean-{a}"] for a in ARCHS if f"alpha-mean-{a}" in h},
                "mb-up": mb(h.get("train-bytes-up", 0)),
                "mb-down": mb(h.get("train-bytes-down", 0)),
                "payload-mb-up": mb(h.get("payload-bytes-up", 0)),
            }
        )
    return {"method": label, "split": split, "seed": seed, "wall-s": wall, "curve": curve}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(margins: Sequence[float]) -> dict[str, Any]:
    """A claim 'margin ≥ 0' from paired per-seed margins: the margin, its spread and
    :func:`benchmarks.common.claim_verdict`'s word."""
    mean, std = _mean_std(margins)
    return {
        "margin": mean,
        "spread": std,
        "n": len(margins),
        "verdict": claim_verdict(margins)[0],
    }


def claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The §5.6 must-show claims, computed from the runs (never typed)."""
    final = {(r["method"], r["split"], r["seed"]): r["curve"][-1] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out: list[dict[str, Any]] = []
    for split in SPLITS:
        for label, tag in (("pFedAFM", "(a)"), (ALPHA_LR, "(cause check)")):
            for other in ("Standalone", "FedAvg (CNN-5)"):
                pairs = [
                    final[(label, split, s)]["accuracy"] - final[(other, split, s)]["accuracy"]
                    for s in seeds
                    if (label, split, s) in final and (other, split, s) in final
                ]
                if pairs:
                    out.append({"claim": f"{tag} {split}: {label} ≥ {other}", **verdict(pairs)})
        alphas = [
            1.0 - final[("pFedAFM", split, s)]["alpha-mean"]
            for s in seeds
            if ("pFedAFM", split, s) in final
        ]
        if alphas:
            out.append({"claim": f"(b) {split}: mean α < 1 (margin = 1 − α)", **verdict(alphas)})
    return out


def local_epoch_matched(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """pFedAFM at round 2k vs Standalone at round k: both local models have had 2k epochs.

    pFedAFM spends E epochs per round on the local model and E on G; while α ≈ 1 the mixture is
    almost the local model, so this separates "less local training" from "mixing hurts".
    """
    out = []
    for split in SPLITS:
        afm = {
            r["seed"]: r["curve"] for r in rows if r["method"] == "pFedAFM" and r["split"] == split
        }
        alone = {
            r["seed"]: r["curve"]
            for r in rows
            if r["method"] == "Standalone" and r["split"] == split
        }
        seeds = sorted(set(afm) & set(alone))
        if not seeds:
            continue
        n = min(len(afm[s]) for s in seeds)
        for k in range(1, n // 2 + 1):
            diffs = [afm[s][2 * k - 1]["accuracy"] - alone[s][k - 1]["accuracy"] for s in seeds]
            v = verdict(diffs)
            out.append(
                [
                    split,
                    2 * k,
                    k,
                    f"{100 * v['margin']:.2f}",
                    f"{100 * v['spread']:.2f}",
                    v["verdict"],
                ]
            )
    return out


def _pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def aggregate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of the last round, per (split, method)."""
    table = []
    keys = sorted({(r["split"], r["method"]) for r in rows}, key=lambda k: (k[0], _order(k[1])))
    for split, method in keys:
        runs = [r for r in rows if r["split"] == split and r["method"] == method]
        last = [r["curve"][-1] for r in runs]
        entry: dict[str, Any] = {"split": split, "method": method, "seeds": len(runs)}
        for key in ("accuracy", "g-accuracy", "alpha-mean"):
            vals = [x[key] for x in last if x[key] is not None]
            entry[key] = _mean_std(vals) if vals else None
        entry["by-arch"] = {
            a: _mean_std([x["by-arch"][a] for x in last if a in x["by-arch"]])
            for a in ARCHS
            if any(a in x["by-arch"] for x in last)
        }
        per_round = [c for r in runs for c in r["curve"]]
        entry["mb-up-round"] = statistics.fmean(c["mb-up"] for c in per_round)
        entry["mb-down-round"] = statistics.fmean(c["mb-down"] for c in per_round)
        entry["payload-mb-up-round"] = statistics.fmean(c["payload-mb-up"] for c in per_round)
        entry["wall-s"] = statistics.fmean(r["wall-s"] for r in runs)
        table.append(entry)
    return table


def _order(method: str) -> int:
    return list(METHODS).index(method)


def _ms(x: tuple[float, float] | None) -> str:
    return "–" if x is None else _pct(x[0], x[1])


def render(
    rows: list[dict[str, Any]], quick: bool, seeds: list[int], command: str, wall: float
) -> str:
    """Markdown report of one tier."""
    tier = "quick" if quick else "reference"
    s = settings(quick)
    agg = aggregate_rows(rows)
    main = markdown_table(
        [
            "Split",
            "Method",
            "Accuracy %",
            "G-only path %",
            "mean α",
            "MB up/round",
            "MB down/round",
            "wall s/run",
        ],
        [
            [
                e["split"],
                e["method"],
                _ms(e["accuracy"]),
                _ms(e["g-accuracy"]),
                "–"
                if e["alpha-mean"] is None
                else f"{e['alpha-mean'][0]:.3f} ± {e['alpha-mean'][1]:.3f}",
                f"{e['mb-up-round']:.3f}",
                f"{e['mb-down-round']:.3f}",
                f"{e['wall-s']:.0f}",
            ]
            for e in agg
        ],
    )
    arch = markdown_table(
        ["Split", "Method", *ARCHS],
        [[e["split"], e["method"], *(_ms(e["by-arch"].get(a)) for a in ARCHS)] for e in agg],
    )
    alpha_rows = []
    for split in SPLITS:
        runs = [r for r in rows if r["method"] == "pFedAFM" and r["split"] == split]
        if not runs:
            continue
        n_rounds = len(runs[0]["curve"])
        for i in range(n_rounds):
            vals = [
                r["curve"][i]["alpha-mean"] for r in runs if r["curve"][i]["alpha-mean"] is not None
            ]
            by_arch = {
                a: statistics.fmean(
                    r["curve"][i]["alpha-by-arch"][a]
                    for r in runs
                    if a in r["curve"][i]["alpha-by-arch"]
                )
                for a in ARCHS
                if any(a in r["curve"][i]["alpha-by-arch"] for r in runs)
            }
            alpha_rows.append(
                [
                    split,
                    i + 1,
                    f"{statistics.fmean(vals):.4f}" if vals else "–",
                    *(f"{by_arch[a]:.4f}" if a in by_arch else "–" for a in ARCHS),
                ]
            )
    alpha = markdown_table(["Split", "Round", "mean α", *ARCHS], alpha_rows)
    verdicts = markdown_table(
        ["Claim", "mean margin (points / α)", "spread (std over seeds)", "seeds", "verdict"],
        [
            [
                c["claim"],
                f"{100 * c['margin']:.2f}"
                if not c["claim"].startswith("(b)")
                else f"{c['margin']:.4f}",
                f"{100 * c['spread']:.2f}"
                if not c["claim"].startswith("(b)")
                else f"{c['spread']:.4f}",
                c["n"],
                f"**{c['verdict']}**",
            ]
            for c in claims(rows)
        ],
    )
    matched = markdown_table(
        ["Split", "pFedAFM round", "Standalone round", "margin (points)", "spread", "verdict"],
        local_epoch_matched(rows),
    )
    return f"""# pFedAFM vs Standalone vs FedAvg (CNN-5) — {tier} tier (METHODS.md §5.6)

Command: `{command}` ({wall:.0f} s wall in all; seeds {seeds}; 1 torch thread per run, on a
2-core host shared with other jobs).

Setting: Fashion-MNIST, {NUM_CLIENTS} clients, all sampled each round, {s["num_server_rounds"]}
rounds; ≤ {s["max_train_per_client"]} training samples per client, local tests of
{s["local_test_size"]} with the client's class proportions; P1 = pathological 2 classes/client,
P2 = Dirichlet(0.5). Architectures CNN-1…5 by partition-id mod 5; G = CNN-5 extractor (520,248
parameters). SGD lr 0.01, momentum 0.9, weight decay 1e-3, batch 128 for all; compute per round
2 epochs for all (pFedAFM 1 + 1 stage epochs, Standalone 2, FedAvg 2 local epochs). Accuracy =
mean over clients of each client's correct/total on its local test, last round, mean ± std over
seeds; pFedAFM's G-only path = h_k(G(x)); MB per round = training messages, all clients.

{main}

## Must-show claims (computed from the runs)

Margin = pFedAFM − baseline in accuracy points (paired by seed), or 1 − mean α; **holds** when
the mean margin > 0 and > 2× its std over seeds, **fails** when < 0 beyond that, else **within
noise**.

{verdicts}

## Per architecture (last round, accuracy %, mean ± std over seeds)

FedAvg's entries are the one CNN-5 global model on the local tests of the devices that hold that
architecture in the other methods.

{arch}

## α over rounds (pFedAFM, mean over clients and seeds)

{alpha}

## Reading: equal local-model training

The comparison above is compute-matched (2 epochs per round for every method), as §5.6 asks. Of
pFedAFM's 2 epochs only stage 1 trains the local model and α; stage 2 trains G, which enters the
personalised prediction with weight 1 − α. Below, pFedAFM after round 2k is compared with
Standalone after round k, when both local models have had 2k epochs (same verdict rule):

{matched}

![curves](pfedafm-{tier}.png)
"""


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy vs round per split (mean over seeds) and pFedAFM's mean α vs round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS) + 1, figsize=(15, 4))
    for ax, split in zip(axes, SPLITS, strict=False):
        for method in METHODS:
            runs = [r for r in rows if r["method"] == method and r["split"] == split]
            if not runs:
                continue
            n = min(len(r["curve"]) for r in runs)
            xs = list(range(1, n + 1))
            means = [statistics.fmean(r["curve"][i]["accuracy"] for r in runs) for i in range(n)]
            ax.plot(xs, [100 * m for m in means], marker="o", ms=3, label=method)
        ax.set_title(f"{split}: mean local-test accuracy")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for split in SPLITS:
        runs = [r for r in rows if r["method"] == "pFedAFM" and r["split"] == split]
        if runs:
            n = min(len(r["curve"]) for r in runs)
            ax.plot(
                range(1, n + 1),
                [statistics.fmean(r["curve"][i]["alpha-mean"] for r in runs) for i in range(n)],
                marker="o",
                ms=3,
                label=f"pFedAFM {split}",
            )
    ax.set_title("pFedAFM: mean α (weight of local features)")
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_json(data: dict[str, Any]) -> str:
    """``pfedafm-<tier>.md`` from its JSON alone (``benchmarks.render``)."""
    quick = data["command"].find("--quick") >= 0
    return render(data["runs"], quick, data["seeds"], data["command"], data["wall-s"])


def index_text(out: Path) -> str:
    """``pfedafm.md``: the verdicts of every tier whose results exist, computed from the runs."""
    parts = ["# pFedAFM benchmark results (METHODS.md §5.6)\n"]
    for tier in ("quick", "reference"):
        path = out / f"pfedafm-{tier}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        parts.append(f"## {tier} tier — `{data['command']}`, seeds {data['seeds']}\n")
        parts.append(
            markdown_table(
                ["Claim", "margin", "spread", "verdict"],
                [
                    [c["claim"], c["margin"], c["spread"], c["verdict"]]
                    for c in claims(data["runs"])
                ],
            )
        )
        parts.append(f"\nFull table: [pfedafm-{tier}.md](pfedafm-{tier}.md)\n")
    return "\n".join(parts)


def write_index(out: Path) -> None:
    """Write :func:`index_text` to ``pfedafm.md``."""
    (out / "pfedafm.md").write_text(index_text(out))


def rerender(path: Path) -> None:
    """Rewrite ``pfedafm-<tier>.md/.png`` and the index from a saved JSON (no training)."""
    data = json.loads(path.read_text())
    rows, quick = data["runs"], data["command"].find("--quick") >= 0
    tier = "quick" if quick else "reference"
    out = path.parent
    text = render(rows, quick, data["seeds"], data["command"], data["wall-s"])
    plot(rows, out / f"pfedafm-{tier}.png", f"pFedAFM benchmark ({tier})")
    data["claims"] = claims(rows)
    data["local-epoch-matched"] = local_epoch_matched(rows)
    write_result(out, f"pfedafm-{tier}", text, data)
    write_index(out)
    print(text)


def main(argv: Sequence[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--seeds", type=int, default=1, help="seeds seed..seed+N-1 (mean ± std)")
    pre.add_argument("--splits", default=",".join(SPLITS), help="comma-separated of P1,P2")
    pre.add_argument("--from-json", type=Path, help="re-render a tier from its saved JSON")
    pre.add_argument(
        "--merge",
        action="store_true",
        help="add these runs to the tier's saved JSON (same method, split and seed replaced)",
    )
    extra, rest = pre.parse_known_args(argv)
    if extra.from_json:
        rerender(extra.from_json)
        return
    args = parse_args(__doc__.splitlines()[0], list(METHODS), "3-round CI tier", rest)
    if args.methods == ",".join(METHODS):  # the default: the three §5.6 methods
        args.labels = list(DEFAULT_METHODS)
    splits = [s.strip() for s in extra.splits.split(",") if s.strip()]
    if not set(splits) <= set(SPLITS):
        raise SystemExit(f"unknown splits {splits}; choose from {list(SPLITS)}")
    setup(1)
    seeds = list(range(args.seed, args.seed + extra.seeds))
    jobs = [
        (label, split, args.quick, str(args.out), seed, args.reuse)
        for seed in seeds
        for split in splits
        for label in args.labels
    ]
    start = time.time()
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            rows = pool.map(_run_one, jobs, chunksize=1)
    else:
        rows = [_run_one(j) for j in jobs]
    wall = time.time() - start
    tier = "quick" if args.quick else "reference"
    command = "python -m benchmarks.pfedafm" + (" --quick" if args.quick else "")
    command += f" --seeds {extra.seeds}" if extra.seeds != 1 else ""
    command += " --reuse" if args.reuse else ""
    if args.labels != list(DEFAULT_METHODS):
        command += f" --methods {shlex.quote(','.join(args.labels))}"
    if extra.merge:
        merged = merge_saved(
            args.out / f"pfedafm-{tier}.json",
            "runs",
            rows,
            ("method", "split", "seed"),
            seeds,
            command,
            wall,
        )
        rows, seeds, command, wall = merged.rows, merged.seeds, merged.command, merged.wall
        args.labels = [m for m in METHODS if any(r["method"] == m for r in rows)]
    text = render(rows, args.quick, seeds, command, wall)
    plot(rows, args.out / f"pfedafm-{tier}.png", f"pFedAFM benchmark ({tier})")
    path = write_result(
        args.out,
        f"pfedafm-{tier}",
        text,
        {
            "command": command,
            "seeds": seeds,
            "settings": settings(args.quick),
            "methods": {k: METHODS[k] for k in args.labels},
            "claims": claims(rows),
            "local-epoch-matched": local_epoch_matched(rows),
            "summary": aggregate_rows(rows),
            "runs": rows,
            "wall-s": wall,
        },
    )
    write_index(args.out)
    print(text)  # the benchmark's table output
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
