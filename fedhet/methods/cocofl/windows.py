"""CoCoFL window planning shared by the device and the server (arXiv 2203.05468, §3; METHODS.md B7).

The device chooses its window with these functions and the server recomputes the same options
from the device's plan to check the reply, so both run the same code on the same cost table.
No Flower import.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from fedhet.core.costs import (
    WindowCost,
    all_windows,
    analytic_cost_table,
    default_cost_table_path,
    feasible_windows,
    load_cost_table,
)
from fedhet.core.seeding import rng
from fedhet.methods.cocofl.config import CoCoFLConfig
from fedhet.plan import Budget

log = logging.getLogger("fedhet")

#: Sample shape every fedhet image dataset yields (Fashion-MNIST, up-sampled digits).
INPUT_SHAPE = (1, 28, 28)


@functools.lru_cache(maxsize=16)
def _cost_table(
    model_name: str, batch_size: int, generator: str, path: str, int8_cost: float
) -> tuple[tuple[WindowCost, ...], str]:
    from fedhet.models import build_model

    model = build_model(model_name)
    num_units = len(model.units)  # type: ignore[arg-type]
    if path:
        rows, source = load_cost_table(path), path
    else:
        shipped = default_cost_table_path(model_name, batch_size, generator)
        if shipped.exists():
            rows, source = load_cost_table(shipped), str(shipped)
        else:
            log.warning(
                "cocofl: no %s cost table for %s at batch %d (%s); computing the analytic table "
                "in-process (generate one with `fedhet profile-costs --model %s --batch-size %d`)",
                generator,
                model_name,
                batch_size,
                shipped,
                model_name,
                batch_size,
            )
            rows = analytic_cost_table(model, INPUT_SHAPE, batch_size, int8_cost)
            source = f"analytic (in-process, q={int8_cost})"
    if sorted(r.window for r in rows) != sorted(all_windows(num_units)):
        raise ValueError(
            f"cost table {source} does not list every window of {model_name}'s {num_units} units"
        )
    return tuple(rows), source


def window_cost_table(model_name: str, batch_size: int, cfg: CoCoFLConfig) -> list[WindowCost]:
    """The cost table device and server plan with (METHODS.md B7).

    ``cocofl.cost-table`` if given, else the shipped ``fedhet/models/costs/<model>-b<batch>.json``
    (``-analytic`` for ``cocofl.cost=analytic``), else the analytic table computed in-process
    (logged). Cached per process.

    Raises
    ------
    ValueError
        If the table does not list exactly the model's windows.
    """
    rows, _ = _cost_table(model_name, batch_size, cfg.cost, cfg.cost_table, cfg.int8_cost)
    return list(rows)


def cost_table_source(model_name: str, batch_size: int, cfg: CoCoFLConfig) -> str:
    """Where :func:`window_cost_table` got its rows (a path or ``analytic (in-process …)``)."""
    return _cost_table(model_name, batch_size, cfg.cost, cfg.cost_table, cfg.int8_cost)[1]


def window_options(
    table: list[WindowCost],
    budget: Budget,
    upload_budget: float,
    forced: tuple[int, int] | None = None,
) -> list[WindowCost]:
    """Windows a device may train this round (METHODS.md §6.2 step 2).

    The ``forced`` window (``cocofl.force-window``, carried in the plan) if set, else the maximal
    windows with time ≤ T, data ≤ D_t and memory ≤ M (B7 ``feasible_windows``); ``[]`` when
    nothing fits.

    Raises
    ------
    ValueError
        If ``forced`` is not a window of the table.
    """
    if forced is not None:
        rows = [r for r in table if r.window == forced]
        if not rows:
            raise ValueError(f"cocofl.force-window {forced} is not a window of the model")
        return rows
    return feasible_windows(table, budget.time, upload_budget, budget.memory)


def choose_window(
    options: list[WindowCost],
    choice: str,
    seed: int,
    device_id: str,
    server_round: int,
) -> WindowCost:
    """Pick one window among ``options`` (METHODS.md §6.2 step 2).

    ``random``: uniform, seeded by (run seed, device id, round); ``round-robin``:
    ``options[(round − 1) mod |options|]`` in table order.
    """
    if not options:
        raise ValueError("no window to choose from")
    if choice == "round-robin":
        return options[(server_round - 1) % len(options)]
    idx = int(rng(seed, device_id, server_round, "cocofl-window").integers(len(options)))
    return options[idx]


def reported_window(metrics: Mapping[str, Any]) -> tuple[int, int]:
    """The window a device reports it trained (metrics ``window-start`` / ``window-end``).

    Raises
    ------
    KeyError, TypeError, ValueError
        If either is missing or not an integer.
    """
    return int(metrics["window-start"]), int(metrics["window-end"])


def window_label(window: tuple[int, int]) -> str:
    """``(2, 3)`` → ``"2-3"``."""
    return f"{window[0]}-{window[1]}"
