"""CoCoFL cost tables: time, upload and memory of every trained window (METHODS.md B7).

One row per contiguous window ``[a, b]`` of a model's units, each cost a fraction of full training
of the same model and batch size, so the full window is ``(1, 1, 1)`` by construction.

* ``analytic``: the B7 formulas from per-unit forward MACs F_u, parameters P_u and stored
  activations per sample A_u (forward hooks). F_u counts Conv2d and Linear multiply-accumulates
  only; A_u is the number of output elements, per sample, of every leaf module of the unit.
* ``measured`` (default): on this host, the fastest wall time of a forward + backward + SGD step
  of each window built by :func:`fedhet.core.quant.build_windowed_model` (real int8 before the
  window), its counted training memory (see :mod:`fedhet.core.freeze`), and its upload bytes
  (window parameters + buffers), each divided by the full window's value.

``fedhet profile-costs --model cnn_b --batch-size 32`` (:mod:`fedhet.models.cost_tables`) writes
``fedhet/models/costs/cnn_b-b32.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fedhet.core.freeze import training_step
from fedhet.core.quant import build_windowed_model, window_state_keys

logger = logging.getLogger(__name__)

COSTS_DIR = Path(__file__).resolve().parents[1] / "models" / "costs"
GENERATORS = ("measured", "analytic")


@dataclass
class WindowCost:
    """Costs of training the window ``(a, b)``, as fractions of full training (METHODS.md B7)."""

    window: tuple[int, int]
    time: float
    data: float
    memory: float


def all_windows(num_units: int) -> list[tuple[int, int]]:
    """Every contiguous window ``(a, b)``, ``0 <= a <= b < num_units``; n units give n(n+1)/2."""
    return [(a, b) for a in range(num_units) for b in range(a, num_units)]


def _units(model: nn.Module) -> nn.ModuleList:
    units = getattr(model, "units", None)
    if not isinstance(units, nn.ModuleList):
        raise TypeError("model must expose its ordered units as `model.units` (nn.ModuleList)")
    return units


def unit_profile(
    model: nn.Module, input_shape: Sequence[int]
) -> tuple[list[float], list[float], list[float]]:
    """Per-unit forward MACs F_u, parameter counts P_u and stored activations per sample A_u.

    Parameters
    ----------
    model : nn.Module
        Model exposing ``model.units``.
    input_shape : Sequence[int]
        Shape of one sample, without the batch dimension, e.g. ``(1, 28, 28)``.

    Returns
    -------
    tuple[list[float], list[float], list[float]]
        ``(F, P, A)``, one entry per unit. F counts Conv2d/Linear multiply-accumulates; A counts
        output elements of every leaf module of the unit.
    """
    units = _units(model)
    flops = [0.0] * len(units)
    acts = [0.0] * len(units)
    params = [float(sum(p.numel() for p in unit.parameters())) for unit in units]
    n = 2
    handles = []

    def hook(u: int, module: nn.Module, out: Any) -> None:
        if not isinstance(out, Tensor):
            return
        per_sample = out.numel() / n
        acts[u] += per_sample
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops[u] += per_sample * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            flops[u] += per_sample * module.in_features

    for u, unit in enumerate(units):
        for module in unit.modules():
            if next(module.children(), None) is None:
                handles.append(
                    module.register_forward_hook(
                        lambda mod, _inp, out, u=u: hook(u, mod, out)  # type: ignore[misc]
                    )
                )
    _probe_forward(model, input_shape, n, handles)
    return flops, params, acts


def _probe_forward(
    model: nn.Module, input_shape: Sequence[int], n: int, handles: Sequence[Any]
) -> None:
    """One eval-mode, no-grad forward pass of ``n`` zero samples through ``model`` with its
    hooks attached; the hooks are removed and the model's training mode restored afterwards."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(n, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def front_transients(
    model: nn.Module, input_shape: Sequence[int]
) -> tuple[list[float], list[float]]:
    """Per-unit transient activations of a forward-only pass, per sample (elements).

    A unit before the trained window keeps nothing for backward, but while each of its
    sub-modules (layers) runs, its input and output and the unit's input are alive together.

    Parameters
    ----------
    model : nn.Module
        Model exposing ``model.units``, run in order.
    input_shape : Sequence[int]
        Shape of one sample, without the batch dimension.

    Returns
    -------
    tuple[list[float], list[float]]
        ``(R, O)``: R_u = the largest number of elements alive at once while unit u runs
        (unit input + layer input + layer output, a tensor counted once), O_u = unit u's output
        elements.
    """
    units = _units(model)
    n = 2
    peak = [0.0] * len(units)
    outs = [0.0] * len(units)
    unit_in: list[Tensor | None] = [None]

    def alive(*tensors: Any) -> float:
        distinct = {id(t): t for t in tensors if isinstance(t, Tensor)}
        return sum(t.numel() for t in distinct.values()) / n

    handles = []
    for u, unit in enumerate(units):

        def enter(_m: nn.Module, args: tuple[Any, ...]) -> None:
            unit_in[0] = args[0]

        def leave(_m: nn.Module, args: tuple[Any, ...], out: Any, u: int = u) -> None:
            outs[u] = out.numel() / n
            peak[u] = max(peak[u], alive(unit_in[0], out))

        def layer(_m: nn.Module, args: tuple[Any, ...], out: Any, u: int = u) -> None:
            peak[u] = max(peak[u], alive(unit_in[0], *args[:1], out))

        handles.append(unit.register_forward_pre_hook(enter))
        handles.append(unit.register_forward_hook(leave))
        for module in unit.modules():
            if module is not unit:
                handles.append(module.register_forward_hook(layer))
    _probe_forward(model, input_shape, n, handles)
    return peak, outs


def analytic_cost_table(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    int8_cost: float = 0.5,
) -> list[WindowCost]:
    """Cost table from the B7 formulas (METHODS.md B7; CoCoFL, arXiv 2203.05468, §4).

    With q = ``int8_cost``, B = ``batch_size`` and F_u, P_u, A_u from :func:`unit_profile`:

    * time = [q·Σ_{u<a}F_u + 3·Σ_{a≤u≤b}F_u + 2q·Σ_{u>b}F_u] / (3·Σ_u F_u)
    * data = bytes of the window's parameters and buffers / the full model's, exactly what the
      device uploads (``window_state_keys``); this is the B7 Σ_{a≤u≤b}P_u / Σ_u P_u plus the
      BN buffers, so that both generators give the same, host-independent data column
    * memory = [Σ_{u∉[a,b]}P_u + 8·Σ_{a≤u≤b}P_u + B·max(Φ_a, 4·Σ_{a≤u≤b}A_u + Σ_{u>b}A_u)]
      / [8·Σ_u P_u + 4B·Σ_u A_u]

    where Φ_a is the front's transient peak (B7 left it out): units u < a run forward-only in
    int8 (1 B per element) and keep nothing, but R_u elements are alive at once while unit u runs,
    and at the window's entry the front's output is alive both as quint8 and as its fp32 copy,
    so Φ_a = max(max_{u<a} R_u, 5·O_{a-1}) (0 for a = 0; R, O from :func:`front_transients`).
    The front ends before the window saves anything, hence the max, not a sum.

    Parameters
    ----------
    model : nn.Module
        Model exposing ``model.units``.
    input_shape : Sequence[int]
        Shape of one sample, e.g. ``(1, 28, 28)``.
    batch_size : int
        Training batch size B.
    int8_cost : float
        Relative cost q of an int8 operation (``cocofl.int8-cost``).

    Returns
    -------
    list[WindowCost]
        One row per window, in :func:`all_windows` order.
    """
    flops, params, acts = unit_profile(model, input_shape)
    transient, outs = front_transients(model, input_shape)
    full_bytes = _state_bytes(model, list(model.state_dict()))
    q, bsz = int8_cost, batch_size
    f_all, p_all, a_all = sum(flops), sum(params), sum(acts)
    rows = []
    for a, b in all_windows(len(flops)):
        f_front, f_win, f_back = sum(flops[:a]), sum(flops[a : b + 1]), sum(flops[b + 1 :])
        p_win = sum(params[a : b + 1])
        a_win, a_back = sum(acts[a : b + 1]), sum(acts[b + 1 :])
        time_frac = (q * f_front + 3 * f_win + 2 * q * f_back) / (3 * f_all)
        phi = max([*transient[:a], 5 * outs[a - 1]]) if a > 0 else 0.0
        memory = ((p_all - p_win) + 8 * p_win + bsz * max(phi, 4 * a_win + a_back)) / (
            8 * p_all + 4 * bsz * a_all
        )
        data = _state_bytes(model, window_state_keys(model, (a, b))) / full_bytes
        rows.append(WindowCost((a, b), time_frac, data, memory))
    return rows


def _state_bytes(model: nn.Module, keys: Sequence[str]) -> int:
    state = model.state_dict()
    return sum(state[k].numel() * state[k].element_size() for k in keys)


def measured_cost_table(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    repeats: int = 5,
    real_int8: bool = True,
) -> list[WindowCost]:
    """Cost table measured on this host (METHODS.md B7, generator ``measured``).

    Every window is built with :func:`~fedhet.core.quant.build_windowed_model` (calibrated on a
    random batch) and trained on random data: one warm-up step, one step with counted memory
    (:func:`~fedhet.core.freeze.training_step`), then ``repeats`` timed forward + backward + SGD
    steps, interleaved across windows so that load drift on the host hits all windows alike.
    time = fastest step time / that of the full window (the minimum is the statistic least
    disturbed by other processes on a shared host); memory = counted peak bytes / full
    window's; data = window parameter + buffer bytes / full model's.

    Parameters
    ----------
    model : nn.Module
        Model exposing ``model.units``; not modified.
    input_shape : Sequence[int]
        Shape of one sample, e.g. ``(1, 28, 28)``.
    batch_size : int
        Training batch size.
    repeats : int
        Timed steps per window (fastest taken).
    real_int8 : bool
        Real int8 kernels before the window (as deployed); ``False`` fakes them.

    Returns
    -------
    list[WindowCost]
        One row per window, in :func:`all_windows` order; the full window is exactly (1, 1, 1).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    units = _units(model)
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_shape, generator=gen)
    with torch.no_grad():
        num_classes = model.eval()(x[:1]).shape[1]
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)
    windows = all_windows(len(units))
    full_keys = list(model.state_dict())
    full_bytes = _state_bytes(model, full_keys)

    built = []
    memory: dict[tuple[int, int], int] = {}
    for window in windows:
        wmodel = build_windowed_model(model, window, x, real_int8=real_int8)
        opt = torch.optim.SGD([p for p in wmodel.parameters() if p.requires_grad], lr=1e-3)
        training_step(wmodel, opt, x, y)
        memory[window] = training_step(wmodel, opt, x, y, count_memory=True)[1]
        built.append((window, wmodel, opt))

    times: dict[tuple[int, int], list[float]] = {w: [] for w in windows}
    for _ in range(repeats):
        for window, wmodel, opt in built:
            start = time.perf_counter()
            training_step(wmodel, opt, x, y)
            times[window].append(time.perf_counter() - start)

    full = (0, len(units) - 1)
    t_full = min(times[full])
    rows = []
    for window in windows:
        data = _state_bytes(model, window_state_keys(model, window)) / full_bytes
        rows.append(
            WindowCost(
                window,
                min(times[window]) / t_full,
                data,
                memory[window] / memory[full],
            )
        )
    logger.info("full-model step %.2f ms, %d counted bytes", 1e3 * t_full, memory[full])
    return rows


def save_cost_table(rows: Sequence[WindowCost], path: str | Path, meta: dict[str, Any]) -> None:
    """Write a cost table as JSON ``{"meta": {...}, "rows": [{window, time, data, memory}, ...]}``.

    ``meta`` should name the model, batch size, generator, torch version and cores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta,
        "rows": [{**asdict(r), "window": list(r.window)} for r in rows],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def load_cost_table(path: str | Path) -> list[WindowCost]:
    """Read a cost table written by :func:`save_cost_table`."""
    doc = json.loads(Path(path).read_text())
    return [
        WindowCost(
            (int(r["window"][0]), int(r["window"][1])),
            float(r["time"]),
            float(r["data"]),
            float(r["memory"]),
        )
        for r in doc["rows"]
    ]


def feasible_windows(
    table: Sequence[WindowCost],
    time_budget: float,
    data_budget: float,
    memory_budget: float,
) -> list[WindowCost]:
    """Maximal windows within all three budgets (METHODS.md B7).

    Keeps rows with time ≤ T, data ≤ D and memory ≤ M, then drops every window strictly contained
    in another kept window. Returns ``[]`` when nothing fits.

    Parameters
    ----------
    table : Sequence[WindowCost]
        Cost table rows.
    time_budget, data_budget, memory_budget : float
        Budgets T, D, M as fractions of full training.

    Returns
    -------
    list[WindowCost]
        The maximal feasible rows, in table order.
    """
    kept = [
        r
        for r in table
        if r.time <= time_budget and r.data <= data_budget and r.memory <= memory_budget
    ]

    def strictly_inside(inner: tuple[int, int], outer: tuple[int, int]) -> bool:
        return inner != outer and outer[0] <= inner[0] and inner[1] <= outer[1]

    return [r for r in kept if not any(strictly_inside(r.window, o.window) for o in kept)]


def default_cost_table_path(model_name: str, batch_size: int, generator: str = "measured") -> Path:
    """Shipped table path ``fedhet/models/costs/{model}-b{batch}[-analytic].json``."""
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
    suffix = "-analytic" if generator == "analytic" else ""
    return COSTS_DIR / f"{model_name}-b{batch_size}{suffix}.json"
