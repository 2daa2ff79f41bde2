"""CoCoFL cost tables and window feasibility (METHODS.md B7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedhet.core.costs import (
    WindowCost,
    all_windows,
    analytic_cost_table,
    default_cost_table_path,
    feasible_windows,
    front_transients,
    load_cost_table,
    measured_cost_table,
    save_cost_table,
    unit_profile,
)
from fedhet.core.freeze import training_step
from fedhet.core.quant import build_windowed_model, module_tensor_bytes
from fedhet.models import build_model, count_parameters
from fedhet.models.cost_tables import main


class ThreeLinear(nn.Module):
    """Units Linear(4,3), Linear(3,2), Linear(2,2).

    Per sample: F = [12, 6, 4], P = [15, 8, 6], A = [3, 2, 2].
    """

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.ModuleList([nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


def _by_window(rows: list[WindowCost]) -> dict[tuple[int, int], WindowCost]:
    return {r.window: r for r in rows}


def test_all_windows() -> None:
    assert len(all_windows(6)) == 21
    assert all_windows(3) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    assert all_windows(1) == [(0, 0)]


def test_unit_profile_toy_and_cnn_b() -> None:
    assert unit_profile(ThreeLinear(), (4,)) == ([12, 6, 4], [15, 8, 6], [3, 2, 2])
    model = build_model("cnn_b")
    flops, params, _ = unit_profile(model, (1, 28, 28))
    assert flops[0] == 28 * 28 * 16 * 9  # conv 1->16 at 28x28
    assert flops[5] == 64 * 10
    assert params[0] == 16 * 9 + 2 * 16
    assert sum(params) == count_parameters(model) == 35_674


def test_analytic_formulas_by_hand() -> None:
    # sums: F = 22, P = 29, A = 7; B = 2, q = 0.5; memory denominator 8*29 + 4*2*7 = 288
    rows = _by_window(analytic_cost_table(ThreeLinear(), (4,), batch_size=2, int8_cost=0.5))
    assert len(rows) == 6
    expected = {
        (0, 0): (46 / 66, 15 / 29, 166 / 288),  # (3*12 + 2*.5*10)/66; (14 + 8*15 + 2*(4*3 + 4))
        # front transient Φ_1 = max(R_0 = 4 + 3, 5*O_0 = 15) = 15 > saved 4*2 + 2
        (1, 1): (28 / 66, 8 / 29, 115 / 288),  # (.5*12 + 3*6 + 2*.5*4); (21 + 64 + 2*15)
        # Φ_2 = max(7, R_1 = 3 + 2, 5*O_1 = 10) = 10 > saved 4*2
        (2, 2): (21 / 66, 6 / 29, 91 / 288),  # (.5*18 + 3*4); (23 + 48 + 2*10)
        (0, 1): (58 / 66, 23 / 29, 234 / 288),  # (3*18 + 4); (6 + 184 + 2*(20 + 2))
        (0, 2): (1.0, 1.0, 1.0),
    }
    for window, (t, d, m) in expected.items():
        row = rows[window]
        assert (row.time, row.data, row.memory) == pytest.approx((t, d, m)), window


def test_front_transients_by_hand() -> None:
    # R_u = unit input + layer output (the layer's input is the unit's input): 4+3, 3+2, 2+2
    assert front_transients(ThreeLinear(), (4,)) == ([7, 5, 4], [3, 2, 2])
    transient, outs = front_transients(build_model("cnn_b"), (1, 28, 28))
    # u1: its input 16x28x28 + BN output (ReLU's input) + ReLU output, all 16x28x28
    assert transient[1] == 3 * 16 * 28 * 28
    assert outs[:2] == [16 * 28 * 28, 16 * 14 * 14]


def test_analytic_memory_counts_front_transient_on_cnn_b() -> None:
    """Training only the classifier still runs the 16x28x28 convolutions forward."""
    rows = _by_window(analytic_cost_table(build_model("cnn_b"), (1, 28, 28), 32))
    _, params, acts = unit_profile(build_model("cnn_b"), (1, 28, 28))
    denom = 8 * sum(params) + 4 * 32 * sum(acts)
    frozen = sum(params[:5])
    phi = 3 * 16 * 28 * 28  # R_1, the largest front transient
    assert rows[(5, 5)].memory == pytest.approx((frozen + 8 * params[5] + 32 * phi) / denom)
    assert rows[(5, 5)].memory > 10 * (frozen + 8 * params[5] + 32 * 4 * 10) / denom


def test_analytic_q_changes_only_frozen_share() -> None:
    cheap = _by_window(analytic_cost_table(ThreeLinear(), (4,), 2, int8_cost=0.0))
    assert cheap[(1, 1)].time == pytest.approx(18 / 66)
    assert cheap[(0, 2)].time == 1.0


def _hand_table() -> list[WindowCost]:
    costs = {
        (0, 0): (0.3, 0.2, 0.3),
        (0, 1): (0.6, 0.5, 0.6),
        (0, 2): (1.0, 1.0, 1.0),
        (1, 1): (0.2, 0.3, 0.2),
        (1, 2): (0.5, 0.8, 0.4),
        (2, 2): (0.1, 0.5, 0.1),
    }
    return [WindowCost(w, *c) for w, c in costs.items()]


def test_feasible_windows_drops_contained_windows() -> None:
    table = _hand_table()
    windows = [r.window for r in feasible_windows(table, 0.6, 0.8, 0.6)]
    # kept: (0,0) (0,1) (1,1) (1,2) (2,2); (0,0), (1,1) lie in (0,1), (2,2) in (1,2)
    assert windows == [(0, 1), (1, 2)]
    windows = [r.window for r in feasible_windows(table, 0.5, 0.5, 0.5)]
    # kept: (0,0) (1,1) (2,2); (1,2) fails data; nothing contains anything
    assert windows == [(0, 0), (1, 1), (2, 2)]


def test_feasible_windows_edges() -> None:
    table = _hand_table()
    assert [r.window for r in feasible_windows(table, 1, 1, 1)] == [(0, 2)]
    assert feasible_windows(table, 0.05, 1, 1) == []
    assert feasible_windows([], 1, 1, 1) == []


def test_save_load_round_trip(tmp_path: Path) -> None:
    rows = analytic_cost_table(ThreeLinear(), (4,), 2)
    path = tmp_path / "sub" / "toy.json"
    meta = {"model": "toy", "batch_size": 2, "generator": "analytic"}
    save_cost_table(rows, path, meta)
    assert load_cost_table(path) == rows
    doc = json.loads(path.read_text())
    assert doc["meta"] == meta
    assert doc["rows"][0] == {
        "window": [0, 0],
        **{k: getattr(rows[0], k) for k in ("time", "data", "memory")},
    }


def test_default_cost_table_path() -> None:
    assert default_cost_table_path("cnn_b", 32).name == "cnn_b-b32.json"
    assert default_cost_table_path("cnn_b", 32, "analytic").name == "cnn_b-b32-analytic.json"
    assert default_cost_table_path("cnn_b", 32).parent.parts[-2:] == ("models", "costs")
    with pytest.raises(ValueError):
        default_cost_table_path("cnn_b", 32, "guessed")


def test_measured_table_on_toy() -> None:
    rows = _by_window(measured_cost_table(ThreeLinear(), (4,), 4, repeats=2))
    assert len(rows) == 6
    assert (rows[(0, 2)].time, rows[(0, 2)].data, rows[(0, 2)].memory) == (1.0, 1.0, 1.0)
    for window in [(0, 0), (1, 1), (2, 2)]:  # no buffers: data is the parameter share
        assert rows[window].data == pytest.approx([15, 8, 6][window[0]] / 29)
    assert all(0 < r.memory <= 1 and r.time > 0 for r in rows.values())


class WideFront(nn.Module):
    """Units Linear(4, 64), Linear(64, 2), Linear(2, 2): a front far wider than the window."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.ModuleList([nn.Linear(4, 64), nn.Linear(64, 2), nn.Linear(2, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


def test_measured_memory_counts_front_transient() -> None:
    """Window (2, 2), batch 2, real int8 front; the front's peak is during u0's int8 Linear:
    its fp32 input (2*4*4 B, held by the caller) + the quint8 copy (2*4 B) + the quint8
    output (2*64 B) = 168 B, more than the window saves for backward."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    wmodel = build_windowed_model(WideFront(), (2, 2), x)
    assert all(type(u).__name__ == "_Int8Unit" for u in wmodel.front)
    opt = torch.optim.SGD([p for p in wmodel.parameters() if p.requires_grad], lr=0.1)
    _, peak = training_step(wmodel, opt, x, y, count_memory=True)
    assert peak == module_tensor_bytes(wmodel) + 6 * 4 + (32 + 8 + 128)


def test_cli_writes_analytic_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.json"
    assert main(["--model", "cnn_b", "--generator", "analytic", "--out", str(out)]) == 0
    assert "5-5" in capsys.readouterr().out
    assert len(load_cost_table(out)) == 21
    assert json.loads(out.read_text())["meta"]["generator"] == "analytic"


@pytest.mark.parametrize("generator", ["measured", "analytic"])
def test_shipped_cnn_b_tables(generator: str) -> None:
    path = default_cost_table_path("cnn_b", 32, generator)
    rows = _by_window(load_cost_table(path))
    meta = json.loads(path.read_text())["meta"]
    assert (meta["model"], meta["batch_size"], meta["generator"]) == ("cnn_b", 32, generator)
    assert len(rows) == 21
    full = rows[(0, 5)]
    assert (full.time, full.data, full.memory) == (1.0, 1.0, 1.0)
    assert rows[(5, 5)].time < 0.5 and rows[(5, 5)].data < 0.05
    assert all(0 < r.data <= 1 and 0 < r.memory <= 1 and r.time > 0 for r in rows.values())
    if generator == "analytic":
        # the shipped analytic table is what the generator computes
        fresh = analytic_cost_table(build_model("cnn_b"), (1, 28, 28), 32, meta["int8_cost"])
        for r in fresh:
            shipped = rows[r.window]
            assert (shipped.time, shipped.data, shipped.memory) == pytest.approx(
                (r.time, r.data, r.memory)
            )
