"""Published results agree with their JSON; claim verdicts are computed (benchmarks.render)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import render
from benchmarks.common import FAILS, HOLDS, ONE_SEED, WITHIN_NOISE, claim_verdict, mean_std


def test_published_results_and_readme_match_the_json() -> None:
    stale = render.stale()
    assert not stale, f"run `python -m benchmarks.render`: {[str(p) for p in stale]}"


def test_verdicts_by_hand() -> None:
    # margins 5, 6, 7 points: mean 6, std 1 → 6 > 2·1
    assert claim_verdict([0.05, 0.06, 0.07])[0] == HOLDS
    # mean 1, std 2 → |1| < 4
    assert claim_verdict([0.01, 0.03, -0.01])[0] == WITHIN_NOISE
    assert claim_verdict([-0.05, -0.06, -0.07])[0] == FAILS
    assert claim_verdict([0.10])[0] == ONE_SEED
    # "ahead by ≥ 3 points": margins 5, 6, 7 minus 3 → 3 > 2·1 holds; minus 5 → 1 < 2 noise
    assert claim_verdict([0.05, 0.06, 0.07], 0.03)[0] == HOLDS
    assert claim_verdict([0.05, 0.06, 0.07], 0.05)[0] == WITHIN_NOISE
    mean, std = mean_std([0.05, 0.06, 0.07])
    assert mean == pytest.approx(0.06) and std == pytest.approx(0.01)


def test_a_changed_number_makes_readme_and_table_stale(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(render.RESULTS, results, ignore=shutil.ignore_patterns("raw", "*.png"))
    readme = tmp_path / "README.md"
    shutil.copy(render.README, readme)
    assert render.stale(results, readme) == []
    path = results / "cocofl-reference.json"
    data = json.loads(path.read_text())
    data["rows"][0]["accuracy"] -= 0.05
    path.write_text(json.dumps(data))
    stale = set(render.stale(results, readme))
    assert {readme, results / "cocofl-reference.md", results / "cocofl.md"} <= stale


@pytest.mark.parametrize(
    ("name", "change", "files"),
    [
        (
            "deployment.json",
            lambda d: d["results"][-1].update({"steady-round-s": 0.5}),
            ["deployment.md"],
        ),
        (
            "pfedafm-reference.json",
            lambda d: d["runs"][0]["curve"][-1].update({"accuracy": 0.1}),
            ["pfedafm.md", "pfedafm-reference.md"],
        ),
        (
            "genefl-reference.json",
            lambda d: d["stats"].update({"cum-up-genefl": 10**9}),
            ["genefl.md", "genefl-reference.md"],
        ),
    ],
)
def test_glance_rows_of_every_benchmark_follow_their_json(
    tmp_path: Path, name: str, change: object, files: list[str]
) -> None:
    results = tmp_path / "results"
    shutil.copytree(render.RESULTS, results, ignore=shutil.ignore_patterns("raw", "*.png"))
    readme = tmp_path / "README.md"
    shutil.copy(render.README, readme)
    before = readme.read_text()
    path = results / name
    data = json.loads(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    assert set(render.stale(results, readme)) == {readme, *(results / f for f in files)}
    after = render.render_all(results, readme)[readme]
    assert after != before


def test_cocofl_fairness_table_and_claim_b_by_hand() -> None:
    from benchmarks import cocofl

    def row(seed: int, weak: float) -> dict[str, object]:
        return {"seed": seed, "home-accuracy": {"strong": 0.9, "medium": 0.8, "weak": weak}}

    # CoCoFL − FedAvg-drop on the weak homes: 20, 22, 24 points (mean 22, std 2 → holds);
    # strong and medium homes equal (margin 0, std 0 → within noise, never "holds")
    runs = {
        "CoCoFL": {t: row(t, 0.70 + 0.02 * t) for t in range(3)},
        "FedAvg-drop": {t: row(t, 0.50) for t in range(3)},
    }
    text = cocofl.fairness_section(runs)
    assert "| CoCoFL | 90.00 ± 0.00 | 80.00 ± 0.00 | 72.00 ± 2.00 |" in text
    assert "| FedAvg-drop | 90.00 ± 0.00 | 80.00 ± 0.00 | 50.00 ± 0.00 |" in text
    assert "(b) CoCoFL above FedAvg-drop on the weak devices' home classes: **holds**" in text
    assert "on the strong devices' home classes: **within noise**" in text
    # the weak margin reversed: the claim fails
    runs["FedAvg-drop"] = {t: row(t, 0.95) for t in range(3)}
    assert "weak devices' home classes: **fails**" in cocofl.fairness_section(runs)


def test_fltac_sweep_picks_each_methods_best_and_names_the_winner() -> None:
    from benchmarks import fltac_sweep

    def row(method: str, lr: float, alpha: str, acc: float, **kw: object) -> dict[str, object]:
        rank = kw.pop("rank", fltac_sweep.METHODS[method][1])
        spec = fltac_sweep.run_spec(method, lr, alpha, rank, str(kw.pop("budget", "matched")))
        spec.pop("keys")
        up = {"fltac": 100 * rank, "fedit": 3000}[method]
        return {
            **spec,
            "mean-task-accuracy": acc,
            "task-accuracy": {"t": acc},
            "uploaded-params": up,
            "wall-s": 1.0,
        }

    rows = [
        row("fltac", 2e-3, "2r", 0.60),
        row("fltac", 5e-3, "16", 0.75),  # FL-TAC's best
        row("fedit", 2e-3, "2r", 0.80),  # FedIT's best
        row("fedit", 5e-4, "16", 0.70),
        row("fedit", 2e-3, "2r", 0.65, budget="repository"),
        row("fltac", 5e-3, "16", 0.79, rank=4),  # 400 params ≤ 3000 / 3
        row("fltac", 5e-3, "16", 0.81, rank=16),  # 1600 > 1000
    ]
    assert fltac_sweep.best(rows, "fltac")["lr"] == 5e-3
    assert fltac_sweep.best(rows, "fedit")["mean-task-accuracy"] == 0.80
    data = {
        "command": "c",
        "wall-s": 1.0,
        "workers": 2,
        "load": ["0", "0"],
        "seed": 0,
        "rows": rows,
    }
    text = fltac_sweep.render_json(data)
    assert "**Best against best: FedIT ahead by 5.00 points**" in text
    assert "(30.0× fewer)" in text
    assert "compute-matched 80.00 %" in text and "repository" in text
    assert "FL-TAC at rank 4 (lr 0.005, alpha 16): 79.00 %, -1.00 points" in text
    assert "0.13 of FedIT's (within the 1/3 budget)" in text
    assert "0.53 of FedIT's (over the 1/3 budget)" in text
    follow = fltac_sweep.follow_ups(rows[:4])
    assert [(s["method"], s["rank"], s["budget"], s["head"]) for s in follow] == [
        ("fedit", 16, "repository", "per-task"),
        ("fedit", 16, "matched", "shared"),
        ("fltac", 2, "matched", "per-task"),
        ("fltac", 4, "matched", "per-task"),
    ]


def test_tuned_tier_uses_the_sweeps_picks() -> None:
    """The tuned tier's (lr, alpha) per method are the published sweep's best cells."""
    from benchmarks import fltac, fltac_sweep
    from benchmarks.common import RESULTS

    rows = json.loads((RESULTS / f"{fltac_sweep.BENCH}.json").read_text())["rows"]
    for method in fltac_sweep.METHODS:
        pick = fltac_sweep.best(rows, method)
        assert pick is not None
        assert fltac.SWEPT[method] == (pick["lr"], pick["alpha"]), method
        keys = fltac.method_keys(method, False, "tuned")
        assert keys[f"{method}.lr"] == pick["lr"]
        assert keys[f"{method}.alpha"] == fltac.alpha_value(pick["alpha"])
    # the untuned tiers keep their configs (lr 2e-3, the config's default alpha)
    assert fltac.method_keys("fedit", False, "reference") == {
        "fedit.steps": 10,
        "fedit.lr": 2e-3,
        "fedit.batch-size": 16,
        "fedit.max-length": 48,
    }


def test_fltac_claim_row_by_hand() -> None:
    from benchmarks.render import fltac_claim_row

    def seed(tac: float, fit: float) -> dict[str, object]:
        return {
            "FL-TAC (r=1)": {"mean-task-accuracy": tac, "task-accuracy": {}},
            "FedIT (r=16)": {"mean-task-accuracy": fit, "task-accuracy": {}},
        }

    data = {
        "settings": {"num_server_rounds": 10},
        "seed-runs": {"0": seed(0.80, 0.70), "1": seed(0.82, 0.70), "2": seed(0.78, 0.70)},
    }
    _claim, text, verdict = fltac_claim_row("c", "tuned", data)
    # margins 10, 12, 8 points: mean 10, std 2; 10 > 2 * 2
    assert verdict == "holds"
    assert "tuned tier, 10 rounds, 3 seeds: FL-TAC 80.00 ± 2.00 %, FedIT 70.00 ± 0.00 %" in text
    data["seed-runs"]["2"] = seed(0.60, 0.70)  # margins 10, 12, -10: spread swamps the mean
    assert fltac_claim_row("c", "tuned", data)[2] == "within noise"


def test_merge_saved_replaces_same_key_runs_and_chains_the_commands(tmp_path: Path) -> None:
    from benchmarks.common import merge_saved

    saved = tmp_path / "tier.json"
    old_rows = [{"method": "A", "seed": 0, "v": 1}, {"method": "B", "seed": 0, "v": 2}]
    saved.write_text(json.dumps({"rows": old_rows, "seeds": [0], "command": "run", "wall-s": 10}))
    new_rows = [{"method": "B", "seed": 0, "v": 3}, {"method": "B", "seed": 1, "v": 4}]
    m = merge_saved(saved, "rows", new_rows, ("method", "seed"), [0, 1], "add", 5.0)
    assert m.rows == [old_rows[0], *new_rows]  # B@0 replaced, A kept
    assert m.seeds == [0, 1] and m.command == "run; then add --merge" and m.wall == 15.0
    fresh = merge_saved(tmp_path / "none.json", "rows", new_rows, ("method",), [1, 0], "add", 5)
    assert fresh.rows == new_rows and fresh.seeds == [0, 1] and fresh.command == "add"


def test_paper_numbers_sit_beside_ours_by_hand() -> None:
    from benchmarks import fiarse, fltac

    def run(local: float) -> dict[str, float]:
        return {k: local for k in fiarse.PAPER_COLUMNS}

    runs = {
        "FIARSE": {0: run(0.80), 1: run(0.84)},
        "HeteroFL": {0: run(0.78), 1: run(0.80)},  # margins +2, +4 points
    }
    text = fiarse.paper_section(runs)
    # the paper's CIFAR-10 Local margin over HeteroFL: 77.04 - 68.88
    assert "| FIARSE − HeteroFL | paper, CIFAR-10 | +8.16 |" in text
    assert "| FIARSE (fedhet's variant) − HeteroFL | ours, 2 seed(s) | +3.00 ± 1.41 |" in text
    assert "FedRolex | ours" not in text  # no FedRolex runs: no row of ours

    def seed(tac: float, fit: float) -> dict[str, dict[str, object]]:
        return {
            "FL-TAC (r=1)": {"mean-task-accuracy": tac, "task-accuracy": {"trec": tac}},
            "FedIT (r=16)": {"mean-task-accuracy": fit, "task-accuracy": {"trec": fit}},
        }

    text = fltac.paper_section({"0": seed(0.70, 0.80), "1": seed(0.74, 0.80)})
    assert "| paper | QQP | 51.0 | 80.7 | +29.7 |" in text
    assert "| ours, 2 seed(s) | trec | 80.00 ± 0.00 | 72.00 ± 2.83 | -8.00 ± 2.83 |" in text


def test_finished_run_is_reused_from_another_folder_but_not_with_another_config(
    tmp_path: Path,
) -> None:
    from benchmarks.common import finished_run

    raw = {"num-server-rounds": 2, "seed": 0, "output-dir": "/clone-a/raw"}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(raw))
    lines = [{"round": 1, "x": 1}, {"round": 2, "x": 2}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert finished_run(run, raw) == lines
    # the same run copied into another clone's results folder
    assert finished_run(run, {**raw, "output-dir": "/clone-b/raw"}) == lines
    assert finished_run(run, {**raw, "seed": 1}) is None  # another config
    assert finished_run(run, {**raw, "num-server-rounds": 3}) is None  # not finished
