"""The shipped measured and analytic CoCoFL cost tables of ``cnn_b`` (batch 32) against each other.

METHODS.md B7 says the analytic generator is there "as a fallback, and for checking the measured
table". Both tables are fractions of full training of the same model and batch.

* **data** is host-independent (bytes of the window's parameters and buffers over the full
  model's), so the two tables must agree *exactly*.
* **time** and **memory** are measured on one host against a MAC/byte model, so they are compared
  with a tolerance, printed with the per-window table (``pytest -s``):

  - per window, measured / analytic within ``[1/RATIO_TOL, RATIO_TOL]`` with ``RATIO_TOL = 1.5``;
  - ranking of the 21 windows by cost: Spearman ρ ≥ ``RANK_TOL = 0.9``.

  Why these numbers: the analytic table is the fallback a device plans with when no measured
  table exists, and a plan only needs the fractions near the budget thresholds (1/3, 2/3, 1) to
  land on the same side. A window whose cost is off by more than 1.5× can cross a whole budget
  step (0.33 → 0.5 > 0.33·1.5), and ρ < 0.9 means the two tables disagree on which windows are
  cheap, which changes what the weak and medium classes train. Tighter bounds would test noise
  of a 2-core shared host (the measured time column moves by ~10% between runs); looser ones
  would let a wrong model pass.

Where a column does not meet its tolerance, its test is a strict ``xfail`` whose reason gives the
figures: the disagreement is reported, not hidden, and the test turns red (XPASS) once the model
or the measurement is changed so that they agree, so the mark has to be revisited.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from fedhet.core.costs import WindowCost, default_cost_table_path, load_cost_table

RATIO_TOL = 1.5
RANK_TOL = 0.9


def _tables() -> tuple[dict[tuple[int, int], WindowCost], dict[tuple[int, int], WindowCost]]:
    measured = {r.window: r for r in load_cost_table(default_cost_table_path("cnn_b", 32))}
    analytic = {
        r.window: r for r in load_cost_table(default_cost_table_path("cnn_b", 32, "analytic"))
    }
    return measured, analytic


def test_same_windows_and_data_exactly_equal() -> None:
    measured, analytic = _tables()
    assert list(measured) == list(analytic)
    for window, m in measured.items():
        assert m.data == analytic[window].data, window  # exact: the same byte counts


def _compare(column: str) -> tuple[list[str], float, float, float]:
    measured, analytic = _tables()
    x = np.array([getattr(measured[w], column) for w in measured])
    y = np.array([getattr(analytic[w], column) for w in measured])
    ratio = x / y
    rho = float(spearmanr(x, y).statistic)
    lines = [f"{column}: window  measured  analytic  ratio"]
    for w, xm, ya, r in zip(measured, x, y, ratio, strict=True):
        flag = "" if 1 / RATIO_TOL <= r <= RATIO_TOL else "  <- outside"
        lines.append(f"  {w[0]}-{w[1]}  {xm:8.3f}  {ya:8.3f}  {r:6.2f}{flag}")
    lines.append(
        f"  ratio range [{ratio.min():.2f}, {ratio.max():.2f}] (tolerance "
        f"[{1 / RATIO_TOL:.2f}, {RATIO_TOL:.2f}]); Spearman rho {rho:.3f} (tolerance >= {RANK_TOL})"
    )
    return lines, float(ratio.min()), float(ratio.max()), rho


def _check(column: str) -> None:
    lines, lo, hi, rho = _compare(column)
    print("\n".join(lines))
    assert lo >= 1 / RATIO_TOL and hi <= RATIO_TOL, f"{column} ratio outside tolerance"
    assert rho >= RANK_TOL, f"{column} ranking disagrees (rho {rho:.3f})"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured/analytic time ratio 0.58-2.40, Spearman 0.73 (shipped tables): the B7 formula "
        "charges units after the window 2q = 1 x their MACs, but they run fake-quantised fp32 "
        "(input-gradient backward, fake-quant overhead), and BN/ReLU/pool work is not in F_u; "
        "so training only unit 0 measures 0.83 against 0.35 analytic (charging the back at "
        "2 x F_u, as it runs, gives ratio 0.58-1.24, rho 0.91; the real int8 front is faster "
        "than q = 0.5: 5-5 measures 0.10 against 0.17)"
    ),
)
def test_time_within_tolerance() -> None:
    _check("time")


@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured/analytic memory ratio 0.99-1.68, Spearman 1.00 (shipped tables): ranking agrees "
        "and 5-5 (front transient dominates) matches, 0.075 vs 0.075, but on single-unit "
        "windows (1-1: 0.69 vs 0.41, 3-3: 0.28 vs 0.18) the measured count "
        "(tensors autograd saves: the window's input, int64 pool indices, saved tensors of the "
        "frozen units after it) exceeds the formula, which counts leaf outputs only (4 B in the "
        "window, 1 B after it)"
    ),
)
def test_memory_within_tolerance() -> None:
    _check("memory")
