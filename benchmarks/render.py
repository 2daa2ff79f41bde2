"""Regenerate every results table and the README's "results at a glance" from the JSON files.

``python -m benchmarks.render`` rewrites ``benchmarks/results/{cocofl,fiarse,fltac,pfedafm}-<tier>.md``
(each benchmark's ``render_json`` of its ``<bench>-<tier>.json``; CoCoFL's C2 tiers too),
``cocofl.md`` (the tiers combined, the feasible windows per class of
:mod:`benchmarks.cocofl_windows`, then the notes), ``genefl[-<tier>].md``, ``pfedafm.md``,
``deployment.md``, ``width-slices.md``,
every block between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the
hand-written analyses (``fiarse.md``, ``fltac.md``) and the README block between
``<!-- results-at-a-glance -->`` and ``<!-- /results-at-a-glance -->``. ``--check`` writes nothing
and exits 1 when a file differs from what the JSON gives (``tests/unit/test_results_render.py``
runs the same check). Verdicts come from :func:`benchmarks.common.claim_verdict`, never typed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import (
    cocofl,
    deployment,
    fiarse,
    fltac,
    fltac_sweep,
    genefl,
    pfedafm,
    width_slices,
)
from benchmarks.cocofl_windows import render_windows
from benchmarks.common import RESULTS, claim_verdict, fmt_pct, mean_std

ROOT = RESULTS.parent.parent
README = ROOT / "README.md"
TIERS: tuple[str, ...] = ("reference", "quick")
#: Tiers a benchmark has beside the common two (rendered, never picked as a "best tier").
EXTRA_TIERS: dict[str, tuple[str, ...]] = {"fltac": ("tuned",)}
RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "cocofl": cocofl.render_json,
    "fiarse": fiarse.render_json,
    "fltac": fltac.render_json,
}
GLANCE_BEGIN, GLANCE_END = "<!-- results-at-a-glance -->", "<!-- /results-at-a-glance -->"


def _load(results: Path, bench: str, tier: str) -> dict[str, Any] | None:
    path = results / f"{bench}-{tier}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _best_tier(
    results: Path, bench: str, tiers: Sequence[str] = TIERS
) -> tuple[str, dict[str, Any]] | None:
    """The reference tier's data if it was run, else the quick tier's."""
    for tier in tiers:
        data = _load(results, bench, tier)
        if data is not None:
            return tier, data
    return None


def _seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def glance_rows(results: Path) -> list[list[str]]:
    """``[claim, what we measured, verdict]`` rows, all numbers and verdicts from the JSON."""
    rows: list[list[str]] = []
    found = _best_tier(results, "cocofl")
    if found:
        tier, data = found
        runs = cocofl._by_method(data["rows"], int(data["settings"].get("seed", 0)))
        acc = {m: mean_std([r["accuracy"] for r in v.values()])[0] for m, v in runs.items()}
        coco, drop = runs.get("CoCoFL", {}), runs.get("FedAvg-drop", {})
        seeds = sorted(set(coco) & set(drop))
        verdict = (
            claim_verdict([coco[t]["accuracy"] - drop[t]["accuracy"] for t in seeds])[0]
            if seeds
            else "not run"
        )
        rows.append(
            [
                "CoCoFL above FedAvg-drop (§6.6 a)",
                f"{tier} tier, {data['settings']['num-server-rounds']} rounds, "
                f"{_seeds_text(len(seeds))}: CoCoFL {_pct(acc.get('CoCoFL'))} %, FedAvg-full "
                f"{_pct(acc.get('FedAvg-full'))} %, FedAvg-drop {_pct(acc.get('FedAvg-drop'))} %"
                + ("" if "fedavg-drop" in data else " (FedAvg-drop: 3 strong/round, old sampler)"),
                verdict,
            ]
        )
    rows += cocofl_c2_rows(results)
    found = _best_tier(results, "fiarse")
    if found:
        tier, data = found
        n = len({int(r.get("seed", 0)) for r in data["rows"]})
        for claim, verdict, text in fiarse.claims(
            data["rows"], int(data["settings"].get("seed", 0))
        ):
            tag, rest = claim.split(" ", 1)
            rows.append(
                [
                    f"{rest} (§7.6 {tag.strip('()')})",
                    f"{tier} tier, {data['settings']['num_server_rounds']} rounds, "
                    f"{_seeds_text(n)}: {text}",
                    verdict,
                ]
            )
    found = _best_tier(results, "fltac")
    if found:
        tier, data = found
        up_tac, up_fit = data["checks"]["upload"]
        purity = data["checks"]["purity"]
        rows.append(
            fltac_claim_row(
                "FL-TAC mean per-task accuracy ≥ FedIT, both untuned (lr 2e-3, alpha 2r; §4.6 a)",
                tier,
                data,
            )
        )
        rows.append(
            [
                "FL-TAC uploads fewer parameters than FedIT r=16 (§4.6 b)",
                f"{up_tac:,} vs {up_fit:,} per round ({up_fit / max(up_tac, 1):.1f}× fewer)",
                "holds" if up_tac < up_fit else "fails",
            ]
        )
        ok = len(purity) >= 3 and all(p is not None and p >= 0.9 for p in purity[2:])
        rows.append(
            [
                "cluster purity ≥ 0.9 from round 3 (§4.6 c)",
                f"purity per round {purity}",
                "holds" if ok else "fails",
            ]
        )
    rows += sweep_rows(results)
    tuned = _load(results, "fltac", "tuned")
    if tuned is not None:
        rows.append(
            fltac_claim_row(
                "FL-TAC mean per-task accuracy ≥ FedIT, each at the sweep's pick of lr and alpha "
                "(§4.6 a, issue 14)",
                "tuned",
                tuned,
            )
        )
    rows += genefl_rows(results) + pfedafm_rows(results) + deployment_rows(results)
    return rows


def fltac_claim_row(claim: str, tier: str, data: dict[str, Any]) -> list[str]:
    """Claim (a) of a FL-TAC tier: mean ± std of both methods and the verdict on the margins."""
    seed_runs = data.get("seed-runs") or {
        str(data.get("seed", 0)): fltac.seed_summary(data["histories"])
    }
    pairs = fltac.paired(seed_runs)
    verdict, text = fltac.claim_a(seed_runs)
    means = (
        f"FL-TAC {fmt_pct([a for _, a in pairs])} %, FedIT {fmt_pct([f for f, _ in pairs])} %; "
        if pairs
        else ""
    )
    return [
        claim,
        f"{tier} tier, {data['settings']['num_server_rounds']} rounds, "
        f"{_seeds_text(len(pairs))}: {means}{text}",
        verdict,
    ]


def cocofl_c2_rows(results: Path) -> list[list[str]]:
    """CoCoFL on the group-correlated split (§6.6 C2): claim (a) and the fairness claim (b)."""
    found = _best_tier(results, "cocofl", ("reference-c2", "quick-c2"))
    if not found:
        return []
    tier, data = found
    runs = cocofl._by_method(data["rows"], int(data["settings"].get("seed", 0)))
    coco, drop = runs.get("CoCoFL", {}), runs.get("FedAvg-drop", {})
    seeds = sorted(set(coco) & set(drop))
    if not seeds:
        return []
    head = f"{tier.split('-')[0]} tier, {data['settings']['num-server-rounds']} rounds, "
    head += f"{_seeds_text(len(seeds))}: "
    overall = claim_verdict([coco[t]["accuracy"] - drop[t]["accuracy"] for t in seeds])
    weak = claim_verdict(
        [coco[t]["home-accuracy"]["weak"] - drop[t]["home-accuracy"]["weak"] for t in seeds]
    )
    return [
        [
            "CoCoFL above FedAvg-drop, group-correlated split (§6.6 a, C2)",
            head + overall[1],
            overall[0],
        ],
        [
            "CoCoFL above FedAvg-drop on the weak devices' home classes (§6.6 b, fairness)",
            head + weak[1],
            weak[0],
        ],
    ]


def sweep_rows(results: Path) -> list[list[str]]:
    """FL-TAC vs FedIT, each at its best (lr, alpha) of the shared sweep."""
    path = results / f"{fltac_sweep.BENCH}.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())["rows"]
    tac, fit = fltac_sweep.best(rows, "fltac"), fltac_sweep.best(rows, "fedit")
    if tac is None or fit is None:
        return []
    margin = tac["mean-task-accuracy"] - fit["mean-task-accuracy"]
    return [
        [
            "FL-TAC mean per-task accuracy ≥ FedIT, both at their best of one lr × alpha sweep "
            "(§4.6 a, issue 14)",
            f"sweep tier (3 rounds of τ = 10), 1 seed: FL-TAC r=1 "
            f"{_pct(tac['mean-task-accuracy'])} % (lr "
            f"{tac['lr']:g}, alpha {tac['alpha']}) vs FedIT r=16 {_pct(fit['mean-task-accuracy'])} "
            f"% (lr {fit['lr']:g}, alpha {fit['alpha']}): margin {100 * margin:+.2f} points",
            claim_verdict([margin])[0],
        ]
    ]


def genefl_rows(results: Path) -> list[list[str]]:
    """GENE-FL's claims (§3.6), from the reference tier's JSON if it was run, else the quick."""
    found = _best_tier(results, "genefl")
    if not found:
        return []
    tier, data = found
    head = f"{tier} tier, {data['rounds']} rounds, 1 seed (reconstruction: no public code): "
    return [
        [f"GENE-FL {claim}", head + numbers, verdict]
        for claim, numbers, verdict in genefl.claims(data)
        if verdict != "n/a" and numbers != genefl.SEE_ABOVE
    ]


def pfedafm_rows(results: Path) -> list[list[str]]:
    """pFedAFM's claims (§5.6), recomputed from the per-seed runs in the JSON."""
    found = _best_tier(results, "pfedafm")
    if not found:
        return []
    tier, data = found
    rounds = data["settings"]["num_server_rounds"]
    return [
        [
            f"pFedAFM {c['claim']}" + (" (§5.6)" if c["claim"][:3] in ("(a)", "(b)") else ""),
            f"{tier} tier, {rounds} rounds, {_seeds_text(c['n'])}: margin "
            f"{100 * c['margin']:+.2f} points, spread (std) {100 * c['spread']:.2f}",
            c["verdict"],
        ]
        for c in pfedafm.claims(data["runs"])
    ]


#: Issue 13's target: a deployed steady round at most this many simulated ones.
DEPLOY_TARGET = 4.0


def deployment_rows(results: Path) -> list[list[str]]:
    """Deployed / simulated steady round, cold and warm, from ``deployment.json``."""
    path = results / "deployment.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    steady = {r["mode"]: r["steady-round-s"] for r in data["results"]}
    sim = steady.get("simulation")
    load = data["load-average"][0]
    rows = []
    for mode, name in ((deployment.DEP, "cold"), (deployment.DEP_WARM, "warm start")):
        if sim and mode in steady:
            ratio = steady[mode] / sim
            rows.append(
                [
                    f"deployment ({name}): steady round ≤ {DEPLOY_TARGET:g}× simulation (issue 13)",
                    f"`{data['command']}`, {data['nodes']} devices, load average {load} before: "
                    f"{steady[mode]:.2f} s vs {sim:.2f} s = {ratio:.1f}×",
                    "holds" if ratio <= DEPLOY_TARGET else "fails",
                ]
            )
    return rows


def glance_block(results: Path) -> str:
    """The README's generated block (between the markers, exclusive)."""
    from benchmarks.common import markdown_table

    table = markdown_table(["claim (paper)", "what we measured", "verdict"], glance_rows(results))
    return (
        "\nGenerated by `python -m benchmarks.render` from `benchmarks/results/*.json` (reference "
        "tier where it was run, else the quick tier). Verdicts: `benchmarks.common.claim_verdict` "
        '("holds" only when the mean paired margin exceeds twice its std over seeds; one seed '
        "is undecided). The result files give settings, commands, load and every number.\n\n"
        + table
        + "\n"
    )


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between ``begin`` and ``end`` replaced by ``body``."""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"markers {begin!r} … {end!r} not found")
    return pattern.sub(lambda _: begin + body + end, text, count=1)


def _generated_blocks(results: Path) -> dict[str, str]:
    """Bodies of the ``<!-- generated:NAME -->`` blocks the analyses may contain."""
    blocks: dict[str, str] = {}
    for bench in RENDERERS:
        for tier in TIERS + EXTRA_TIERS.get(bench, ()):
            data = _load(results, bench, tier)
            if data is not None:
                blocks[f"{bench}-{tier}"] = (
                    "\n" + RENDERERS[bench](data).split("\n", 1)[1].strip() + "\n"
                )
    return blocks


def render_all(results: Path = RESULTS, readme: Path = README) -> dict[Path, str]:
    """Every generated file's expected content, from the JSON files under ``results``."""
    out: dict[Path, str] = {}
    for bench, render in RENDERERS.items():
        for tier in TIERS + EXTRA_TIERS.get(bench, ()):
            data = _load(results, bench, tier)
            if data is not None:
                out[results / f"{bench}-{tier}.md"] = render(data)
    for tier in cocofl.TIERS:
        data = _load(results, "cocofl", tier)
        if data is not None:
            out[results / f"cocofl-{tier}.md"] = cocofl.render_json(data)
    parts = [out[p] for t in cocofl.TIERS if (p := results / f"cocofl-{t}.md") in out]
    if parts:
        parts.append(render_windows(results))
    if parts and (results / cocofl.NOTES).is_file():
        parts.append((results / cocofl.NOTES).read_text())
    if parts:
        out[results / "cocofl.md"] = "\n\n".join(parts)
    out.update(genefl.rendered(results))
    for tier in TIERS:
        data = _load(results, "pfedafm", tier)
        if data is not None:
            out[results / f"pfedafm-{tier}.md"] = pfedafm.render_json(data)
    if any((results / f"pfedafm-{t}.json").is_file() for t in TIERS):
        out[results / "pfedafm.md"] = pfedafm.index_text(results)
    sweep = results / f"{fltac_sweep.BENCH}.json"
    if sweep.is_file():
        out[results / f"{fltac_sweep.BENCH}.md"] = fltac_sweep.render_json(
            json.loads(sweep.read_text())
        )
    slices = results / f"{width_slices.BENCH}.json"
    if slices.is_file():
        out[results / f"{width_slices.BENCH}.md"] = width_slices.render_json(
            json.loads(slices.read_text())
        )
    if (results / "deployment.json").is_file():
        out[results / "deployment.md"] = deployment.report(
            json.loads((results / "deployment.json").read_text())
        )
    blocks = _generated_blocks(results)
    for name in ("fiarse.md", "fltac.md"):
        path = results / name
        if not path.is_file():
            continue
        text = path.read_text()
        for key, body in blocks.items():
            begin, end = f"<!-- generated:{key} -->", f"<!-- /generated:{key} -->"
            if begin in text:
                text = replace_block(text, begin, end, body)
        out[path] = text
    if readme.is_file():
        out[readme] = replace_block(
            readme.read_text(), GLANCE_BEGIN, GLANCE_END, glance_block(results)
        )
    return out


def stale(results: Path = RESULTS, readme: Path = README) -> list[Path]:
    """Files whose content differs from what their JSON gives."""
    return [
        p
        for p, text in render_all(results, readme).items()
        if not p.is_file() or p.read_text() != text
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"stale: {path.relative_to(ROOT)}")
        sys.exit(1 if bad else 0)
    for path, text in render_all().items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
