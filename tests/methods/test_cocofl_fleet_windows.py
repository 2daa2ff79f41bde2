"""Feasible windows per device class and unit training shares (fedhet.methods.cocofl.fleet_windows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.cocofl_windows import render_windows
from fedhet.core.costs import (
    default_cost_table_path,
    feasible_windows,
    load_cost_table,
)
from fedhet.methods.cocofl.fleet_windows import class_windows, fleet_windows, observed_unit_share
from fedhet.plan import CLASS_BUDGETS
from tests.unit.test_costs import _hand_table  # the same hand-made 3-unit table


def test_class_windows_by_hand() -> None:
    # T = M = 0.6, D_t ~ U(0.4, 1): the option set changes at data 0.5 and 0.8
    cw = class_windows(_hand_table(), 0.6, 0.6, 0.4, 1.0)
    got = [(s.low, s.high, s.windows) for s in cw.slices]
    assert got == [
        (0.4, 0.5, [(0, 0), (1, 1)]),
        (0.5, 0.8, [(0, 1), (2, 2)]),
        (0.8, 1.0, [(0, 1), (1, 2)]),
    ]
    assert [s.probability for s in cw.slices] == pytest.approx([1 / 6, 1 / 2, 1 / 3])
    # u0: (1/6 + 1/2 + 1/3)/2; u1: 1/12 + 1/4 + 1/3; u2: 1/4 + 1/6
    assert cw.unit_share == pytest.approx([1 / 2, 2 / 3, 5 / 12])
    assert cw.infeasible == 0


def test_class_windows_edges() -> None:
    full = class_windows(_hand_table(), 1, 1, 1, 1)
    assert [(s.windows, s.probability) for s in full.slices] == [([(0, 2)], 1.0)]
    assert full.unit_share == [1, 1, 1]
    none = class_windows(_hand_table(), 0.05, 1, 0.5, 1)
    assert none.infeasible == pytest.approx(1) and none.unit_share == [0, 0, 0]
    with pytest.raises(ValueError, match="upload_min"):
        class_windows(_hand_table(), 1, 1, 0.9, 0.5)
    with pytest.raises(ValueError, match="empty"):
        class_windows([], 1, 1, 0.5, 1)


@pytest.mark.parametrize("generator", ["measured", "analytic"])
def test_exact_shares_match_sampled_draws(generator: str) -> None:
    """The exact shares equal the average over many D_t draws of the device's own filter."""
    table = load_cost_table(default_cost_table_path("cnn_b", 32, generator))
    plan = fleet_windows(table)
    draws = np.random.default_rng(0).uniform(0.5, 1.0, 4000)
    for cls, (t, m, _, _) in CLASS_BUDGETS.items():
        if cls == "strong":
            continue
        share = np.zeros(6)
        for d in draws:
            opts = feasible_windows(table, t, float(d), m)
            for a, b in (r.window for r in opts):
                share[a : b + 1] += 1 / len(opts) / len(draws)
        assert plan[cls].unit_share == pytest.approx(share, abs=0.03), cls


def test_observed_unit_share() -> None:
    assert observed_unit_share({"0-1": 3, "2-2": 1}, 3) == [0.75, 0.75, 0.25]
    assert observed_unit_share({}, 2) == [0.0, 0.0]


def test_render_windows_lists_both_tables_and_every_class(tmp_path: Path) -> None:
    text = render_windows(tmp_path)  # no run JSON there: expected shares only
    for g in ("measured", "analytic"):
        for cls in CLASS_BUDGETS:
            assert f"| {g} | {cls} |" in text
            assert f"| {cls} | expected, {g} table |" in text
    assert "observed" not in text.split("| class | source |")[1]
