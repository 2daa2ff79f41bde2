"""Checkpoints and resume: a run started again under the same name continues where it stopped.

A checkpoint holds the round, the method name, the global arrays, the method's own state
(``state_dict``) and the byte totals (:func:`checkpoint_state`). :func:`resume_point` checks that
the run folder was started with the same config, writes the config, and returns the last
checkpoint, trimming ``metrics.jsonl`` to it so that no round is logged twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedhet.config import ConfigError
from fedhet.server.run_dir import RunDir

#: Strategy-state key of a fused evaluation still pending at checkpoint time.
PENDING_KEY = "fedhet-pending-eval"

log = logging.getLogger("fedhet")


@dataclass
class Checkpoint:
    """What a checkpoint restores."""

    server_round: int
    global_arrays: dict[str, np.ndarray]
    strategy_state: dict[str, Any]
    totals: dict[str, int] | None


def checkpoint_state(
    server_round: int,
    method: str,
    global_arrays: Mapping[str, np.ndarray],
    strategy_state: dict[str, Any],
    totals: Mapping[str, int],
) -> dict[str, Any]:
    """The object :meth:`RunDir.save_checkpoint` stores after ``server_round``."""
    return {
        "round": server_round,
        "method": method,
        "global": {k: torch.from_numpy(np.array(v)) for k, v in global_arrays.items()},
        "strategy": strategy_state,
        "totals": dict(totals),
    }


def resume_point(
    run_dir: RunDir,
    raw_config: dict[str, Any],
    method: str | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Checkpoint | None:
    """Prepare ``run_dir`` for a (re)start and return its last checkpoint, if any.

    Parameters
    ----------
    run_dir : RunDir
        The run's output folder.
    raw_config : dict[str, Any]
        The run config as given (compared with the folder's stored config).
    method : str, optional
        The run's method: a checkpoint of another method is not used.
    shapes : Mapping[str, tuple[int, ...]], optional
        The run's initial global arrays: a checkpoint must hold each with this shape. Checkpoints
        load tensor-only (``weights_only=True``); a bad one is set aside and the newest good one
        used (:meth:`RunDir.load_latest_checkpoint`).

    Returns
    -------
    Checkpoint | None
        The last checkpoint; ``None`` for a fresh start (any metric lines of a run that stopped
        before its first checkpoint are dropped).

    Raises
    ------
    ConfigError
        If the folder holds checkpoints of a run with a different config.
    """
    conflicts = run_dir.config_conflicts(raw_config)
    if conflicts and run_dir.checkpoint_rounds():
        raise ConfigError(
            f"run folder {run_dir.path} was started with a different config ("
            + "; ".join(conflicts[:5])
            + "). Use another 'run-name' to start a new run, or the same config to resume."
        )
    run_dir.write_config(raw_config)
    latest = run_dir.load_latest_checkpoint(method, shapes)
    if latest is None:
        # a run that stopped before its first checkpoint starts over: drop its metric lines
        run_dir.truncate_metrics(0)
        return None
    last, state = latest
    run_dir.truncate_metrics(last)
    log.info("resuming run %s from checkpoint of round %d", run_dir.path.name, last)
    return Checkpoint(
        server_round=last,
        global_arrays={k: v.numpy() for k, v in state["global"].items()},
        strategy_state=state.get("strategy", {}),
        totals=state.get("totals"),
    )


def restore_strategy(strategy: Any, grid: Any = None) -> int:
    """Restore ``strategy`` (a running :class:`~fedhet.server.strategy.FedhetStrategy`) from the
    last good checkpoint of its run folder: global arrays, method state, byte totals, a fused
    evaluation still pending, and (with a ``grid``) the registered nodes still connected.

    Returns
    -------
    int
        The last completed round (0 for a fresh start).

    Raises
    ------
    ConfigError
        If the run folder holds checkpoints of a different config.
    """
    from fedhet.server.fused import PendingEval

    run_dir = strategy.run_dir
    if run_dir is None:
        return 0
    shapes = {k: tuple(np.shape(v)) for k, v in strategy.global_arrays.items()}
    point = resume_point(run_dir, strategy.cfg.raw, strategy.name, shapes)
    if point is None:
        return 0
    strategy.global_arrays = point.global_arrays
    state = dict(point.strategy_state)
    pending = PendingEval.from_state(state.pop(PENDING_KEY, None))
    written = {int(r["round"]) for r in run_dir.read_metrics()}
    strategy._pending = pending if pending and pending.server_round not in written else None
    strategy.load_state_dict(state)
    strategy.totals = dict(point.totals or strategy.totals)
    if grid is not None:
        strategy.registry.restore(run_dir, set(grid.get_node_ids()))
    return int(point.server_round)
