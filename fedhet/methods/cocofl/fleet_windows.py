"""Which windows each device class of a fleet may train, and how often each unit is trained.

CoCoFL (arXiv 2203.05468, §3; METHODS.md §6.2 step 2): each round a device draws its upload
budget D_t ~ U(D_min, D_max), keeps the maximal windows of the cost table within (T, D_t, M) and
picks one uniformly. The option set only changes where D_t crosses a window's data fraction, so
the distribution over windows, and with it each unit's expected share of a class's device-rounds,
is computed exactly from the table, without training. No Flower import.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedhet.core.costs import WindowCost, feasible_windows
from fedhet.plan import CLASS_BUDGETS


@dataclass
class UploadSlice:
    """The maximal feasible windows for D_t in ``[low, high]``, with that range's probability."""

    low: float
    high: float
    probability: float
    windows: list[tuple[int, int]]


@dataclass
class ClassWindows:
    """A device class's plan: its budgets, option sets over D_t, and per-unit training shares.

    ``unit_share[u]`` is the expected fraction of the class's device-rounds that train unit u
    (uniform choice among the options; round-robin gives the same long-run share);
    ``infeasible`` is the fraction in which no window fits.
    """

    time: float
    memory: float
    upload_min: float
    upload_max: float
    slices: list[UploadSlice] = field(default_factory=list)
    unit_share: list[float] = field(default_factory=list)
    infeasible: float = 0.0


def class_windows(
    table: Sequence[WindowCost],
    time_budget: float,
    memory_budget: float,
    upload_min: float,
    upload_max: float,
) -> ClassWindows:
    """Feasible windows of one device class over its upload range, and unit training shares.

    Parameters
    ----------
    table : Sequence[WindowCost]
        Cost table (B7).
    time_budget, memory_budget : float
        T and M of the class.
    upload_min, upload_max : float
        Range of the per-round upload draw D_t ~ U(D_min, D_max); equal for a fixed D.

    Returns
    -------
    ClassWindows
        Option sets per D_t range (ranges whose option sets coincide are merged), each unit's
        expected share of device-rounds, and the infeasible share.

    Raises
    ------
    ValueError
        If ``upload_min > upload_max`` or the table is empty.
    """
    if upload_min > upload_max:
        raise ValueError(f"upload_min {upload_min} > upload_max {upload_max}")
    if not table:
        raise ValueError("empty cost table")
    num_units = 1 + max(r.window[1] for r in table)
    out = ClassWindows(time_budget, memory_budget, upload_min, upload_max)
    cuts = sorted(
        {upload_min, upload_max, *(r.data for r in table if upload_min < r.data < upload_max)}
    )
    # D_t in [cuts[i], cuts[i+1]) has the option set at cuts[i]; a point range if min == max
    ranges = list(itertools.pairwise(cuts)) or [(upload_min, upload_max)]
    width = upload_max - upload_min
    for low, high in ranges:
        prob = (high - low) / width if width > 0 else 1.0
        windows = [r.window for r in feasible_windows(table, time_budget, low, memory_budget)]
        if out.slices and out.slices[-1].windows == windows:
            out.slices[-1].high = high
            out.slices[-1].probability += prob
        else:
            out.slices.append(UploadSlice(low, high, prob, windows))
    share = [0.0] * num_units
    for s in out.slices:
        if not s.windows:
            out.infeasible += s.probability
            continue
        for a, b in s.windows:
            for u in range(a, b + 1):
                share[u] += s.probability / len(s.windows)
    out.unit_share = share
    return out


def fleet_windows(
    table: Sequence[WindowCost],
    budgets: Mapping[str, tuple[float, float, float, float]] = CLASS_BUDGETS,
) -> dict[str, ClassWindows]:
    """:func:`class_windows` for every class of a fleet (default: the three-tier table, §2).

    ``budgets`` maps a class name to (T, M, D_min, D_max), as :data:`fedhet.plan.CLASS_BUDGETS`.
    """
    return {name: class_windows(table, *b) for name, b in budgets.items()}


def observed_unit_share(windows: Mapping[str, int], num_units: int) -> list[float]:
    """Each unit's share of device-rounds from a run's window counts ``{"a-b": count}``."""
    total = sum(windows.values())
    share = [0.0] * num_units
    for label, count in windows.items():
        a, b = (int(x) for x in label.split("-"))
        for u in range(a, b + 1):
            share[u] += count / total if total else 0.0
    return share
