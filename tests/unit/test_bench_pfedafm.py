"""The pFedAFM benchmark judges its claims from the data (benchmarks/pfedafm.py)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.pfedafm import claims, local_epoch_matched, verdict


def test_verdict_rule() -> None:
    assert verdict([0.05, 0.06, 0.04])["verdict"] == "holds"  # margin 0.05 > 2 x 0.01
    assert verdict([-0.05, -0.06, -0.04])["verdict"] == "fails"
    assert verdict([0.05, -0.03, 0.01])["verdict"] == "within noise"
    # one seed decides nothing (the rule every benchmark shares, benchmarks.common.claim_verdict)
    assert verdict([0.02])["verdict"] == "undecided (1 seed)"
    v = verdict([0.1, 0.3])
    assert v["margin"] == pytest.approx(0.2) and v["spread"] == pytest.approx(0.1414, abs=1e-4)


def _run(method: str, split: str, seed: int, accs: list[float], alpha: float | None) -> Any:
    curve = [{"accuracy": a, "alpha-mean": alpha} for a in accs]
    return {"method": method, "split": split, "seed": seed, "curve": curve}


def test_claims_are_paired_by_seed_and_use_the_last_round() -> None:
    rows = []
    for seed, (afm, alone, avg) in enumerate([(0.9, 0.8, 0.5), (0.7, 0.6, 0.4), (0.8, 0.7, 0.6)]):
        for split in ("P1", "P2"):
            rows.append(_run("pFedAFM", split, seed, [0.1, afm], 0.9))
            rows.append(_run("Standalone", split, seed, [0.2, alone], None))
            rows.append(_run("FedAvg (CNN-5)", split, seed, [0.3, avg], None))
    found = {c["claim"]: c for c in claims(rows)}
    vs_alone = found["(a) P1: pFedAFM ≥ Standalone"]
    # per-seed margins are all 0.1 although the methods' spreads are large: paired
    assert vs_alone["margin"] == pytest.approx(0.1) and vs_alone["verdict"] == "holds"
    assert found["(b) P2: mean α < 1 (margin = 1 − α)"]["margin"] == pytest.approx(0.1)
    matched = local_epoch_matched(rows)  # pFedAFM round 2 vs Standalone round 1
    assert matched[0][:3] == ["P1", 2, 1] and matched[0][3] == "60.00"  # (0.7 + 0.5 + 0.6) / 3
