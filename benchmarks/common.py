"""Shared benchmark harness: run registered methods in-process and write tables and plots.

Methods run through :class:`fedhet.sim.LocalGrid` (the real ClientApp handlers and Messages, no Ray):
on 2 cores a Ray cluster per method costs more than the training. Every run writes its normal run
folder (``metrics.jsonl`` etc.) under ``benchmarks/results/raw/<bench>/<run>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedhet.config import default_run_config
from fedhet.sim import LocalGrid, build_local, run_local, simulated_node_configs

RESULTS = Path(__file__).resolve().parent / "results"


def absolute_path(raw: str) -> Path:
    """An ``--out`` folder, made absolute (the run config's ``output-dir`` must be absolute)."""
    return Path(raw).expanduser().resolve()


log = logging.getLogger("benchmarks")


def parse_args(
    description: str,
    methods: Sequence[str],
    quick_help: str,
    argv: Sequence[str] | None = None,
    extra: Sequence[tuple[str, dict[str, Any]]] = (),
) -> argparse.Namespace:
    """Flags every benchmark shares: ``--quick`` (CI tier), ``--out``, ``--jobs``, ``--seed`` (first
    seed), ``--seeds N`` (seeds ``seed … seed+N−1``, in ``args.seed_list``) and ``--methods`` (a
    comma-separated subset of ``methods``, checked; parsed into ``args.labels``); ``extra`` adds a
    benchmark's own flags as ``(flag, add_argument keywords)``."""
    parser = argparse.ArgumentParser(description=description)
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=absolute_path, default=RESULTS, help="results folder")
    parser.add_argument("--jobs", type=int, default=2, help="methods run in parallel")
    parser.add_argument("--seed", type=int, default=0, help="first run seed")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read runs already finished in OUT/raw with the same config instead of rerunning",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="number of seeds (seed, seed+1, …); tables report mean ± std over them",
    )
    parser.add_argument(
        "--methods",
        default=",".join(methods),
        help="comma-separated subset of: " + ", ".join(methods),
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    args.seed_list = list(range(args.seed, args.seed + args.seeds))
    args.labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.labels if m not in methods]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(methods)}")
    return args


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1) of the non-missing values; std is ``None``
    with fewer than two values, both are ``None`` with none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, var**0.5


def fmt_pct(values: Sequence[float | None], signed: bool = False) -> str:
    """Fractions as ``mean ± std`` in percent (2 decimals; ``signed``: with the mean's sign, for
    margins); ``mean`` alone for one seed."""
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return text if std is None else f"{text} ± {100 * std:.2f}"


#: Verdicts of :func:`claim_verdict`.
HOLDS, WITHIN_NOISE, FAILS, ONE_SEED = "holds", "within noise", "fails", "undecided (1 seed)"


def claim_verdict(margins: Sequence[float], threshold: float = 0.0) -> tuple[str, str]:
    """Verdict of a claim from its paired per-seed margins (positive = in the claim's favour).

    m = mean(margins) − ``threshold`` and s = the margins' sample std: "holds" when m > 2s,
    "fails" when m < −2s (reversed beyond the noise), else "within noise". With one seed there
    is no spread: "undecided (1 seed)". A claim "A ahead of B by ≥ 3 points" passes the per-seed
    differences A − B and ``threshold=0.03``.

    Returns
    -------
    tuple[str, str]
        The verdict and a short explanation with the numbers (in points, ×100).
    """
    vals = [float(v) for v in margins]
    if not vals:
        raise ValueError("claim_verdict needs at least one margin")
    mean, std = mean_std(vals)
    assert mean is not None
    m = mean - threshold
    thr = f" − {100 * threshold:.2f}" if threshold else ""
    if std is None:
        return ONE_SEED, f"margin {100 * mean:+.2f}{thr} points, 1 seed"
    text = f"margin {100 * mean:+.2f}{thr} points, spread (std) {100 * std:.2f}, {len(vals)} seeds"
    if m > 2 * std:
        return HOLDS, text
    if m < -2 * std:
        return FAILS, text
    return WITHIN_NOISE, text


def setup(threads: int = 1) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(threads)


def run_method(
    bench: str,
    run_name: str,
    method: str,
    *,
    num_nodes: int,
    node_extra: list[dict[str, Any]] | None = None,
    out: Path = RESULTS,
    reuse: bool = False,
    **config: Any,
) -> list[dict[str, Any]]:
    """Run ``method`` from scratch on ``num_nodes`` simulated devices; return the metrics lines.

    With ``reuse``, a run folder that already holds a finished run of exactly this config
    (:func:`finished_run`) is read instead of run again (``--reuse``: a long tier stopped
    part-way loses only its unfinished run).
    """
    raw, run_dir = _run_config(bench, run_name, method, num_nodes, out, config)
    if reuse and (done := finished_run(run_dir, raw)) is not None:
        log.info("%s/%s: reusing the finished run in %s", bench, run_name, run_dir)
        return done
    shutil.rmtree(run_dir, ignore_errors=True)
    node_cfgs = simulated_node_configs(num_nodes)
    for cfg_i, extra in zip(node_cfgs, node_extra or [{}] * num_nodes, strict=True):
        cfg_i.update(extra)
    start = time.time()
    strategy = run_local(raw, node_cfgs, run_dir)
    log.info("%s/%s finished in %.1f s", bench, run_name, time.time() - start)
    return strategy.history


@dataclass
class Merged:
    """A tier's saved runs with this invocation's added (:func:`merge_saved`)."""

    rows: list[dict[str, Any]]
    seeds: list[int]
    command: str
    wall: float


def merge_saved(
    saved: Path,
    field: str,
    rows: list[dict[str, Any]],
    key: Sequence[str],
    seeds: Sequence[int],
    command: str,
    wall: float,
) -> Merged:
    """``--merge``: the runs saved under ``saved[field]`` with ``rows`` added, a saved run with
    the same ``key`` fields (e.g. method and seed) replaced; seeds united, the two commands
    chained and the wall times added. Without a saved file, ``rows`` as they are."""
    if not saved.is_file():
        return Merged(list(rows), sorted(seeds), command, wall)
    old = json.loads(saved.read_text())
    new = {tuple(r.get(k) for k in key) for r in rows}
    kept = [r for r in old[field] if tuple(r.get(k) for k in key) not in new]
    return Merged(
        kept + list(rows),
        sorted({*old.get("seeds", []), *seeds}),
        f"{old['command']}; then {command} --merge",
        wall + float(old["wall-s"]),
    )


def _run_config(
    bench: str, run_name: str, method: str, num_nodes: int, out: Path, config: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    """The flat run config of :func:`run_method` and its run folder."""
    raw = default_run_config(
        method=method, run_name=run_name, output_dir=str(out / "raw" / bench), min_nodes=num_nodes
    )
    for key, value in config.items():
        raw[key if "." in key else key.replace("_", "-")] = value
    return raw, out / "raw" / bench / run_name


def finished_method_run(
    bench: str, run_name: str, method: str, *, num_nodes: int, out: Path = RESULTS, **config: Any
) -> list[dict[str, Any]] | None:
    """The metrics lines of a finished :func:`run_method` run of exactly this config, else None
    (nothing is run: a stopped sweep can still be reported)."""
    raw, run_dir = _run_config(bench, run_name, method, num_nodes, out, config)
    return finished_run(run_dir, raw)


def run_wall(start: float, history: Sequence[dict[str, Any]]) -> float:
    """Seconds a run took: since ``start``, or, for a run read back with ``reuse``, the time its
    rounds took when it ran (not the milliseconds it takes to read)."""
    rounds = sum(float(h.get("wall-seconds") or 0.0) for h in history)
    return max(time.time() - start, rounds)


#: Run-config keys that say where a run lives, not what it computed: a finished run copied to
#: another results folder (another clone) is still the same run.
LOCATION_KEYS: tuple[str, ...] = ("output-dir",)


def finished_run(run_dir: Path, raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``metrics.jsonl`` lines of a finished run in ``run_dir`` whose saved ``config.json``
    equals ``raw`` but for :data:`LOCATION_KEYS`, else None (no run, another config, or fewer
    rounds than configured)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except (OSError, ValueError):
        return None

    def what(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if k not in LOCATION_KEYS}

    if not isinstance(saved, dict) or what(saved) != what(json.loads(json.dumps(raw))):
        return None
    rows = [json.loads(line) for line in lines if line.strip()]
    if [r.get("round") for r in rows] != list(range(1, int(raw["num-server-rounds"]) + 1)):
        return None
    return rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table; floats with 4 significant decimals."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mb(n_bytes: float) -> float:
    return n_bytes / 1e6


def plot_curves(
    histories: dict[str, list[dict[str, Any]]],
    path: Path,
    *,
    metric: str = "server-accuracy",
    title: str = "",
) -> None:
    """Two panels: ``metric`` vs round and vs cumulative MB (up + down)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        rounds = [h["round"] for h in hist]
        values = [h.get(metric) for h in hist]
        cum = [mb(h["cum-bytes-up"] + h["cum-bytes-down"]) for h in hist]
        axes[0].plot(rounds, values, marker="o", ms=3, label=name)
        axes[1].plot(cum, values, marker="o", ms=3, label=name)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("cumulative MB (up + down)")
    for ax in axes:
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(out: Path, name: str, text: str, data: dict[str, Any]) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` (raw numbers) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    path = out / f"{name}.md"
    path.write_text(text)
    return path


def publish(
    out: Path, name: str, data: dict[str, Any], render: Any, logger: logging.Logger
) -> Path:
    """Render ``data`` to Markdown with ``render``, write both (:func:`write_result`), print the
    Markdown and log where it went."""
    text = render(data)
    path = write_result(out, name, text, data)
    print(text)
    logger.info("wrote %s", path)
    return path


def run_method_grid(
    bench: str,
    run_name: str,
    method: str,
    *,
    node_configs: list[dict[str, Any]],
    out: Path = RESULTS,
    **config: Any,
) -> tuple[list[dict[str, Any]], Any, LocalGrid, dict[str, Any]]:
    """Like :func:`run_method`, but with explicit node configs, and returning the strategy, the
    LocalGrid (devices' ``context.state`` included) and the flat run config as well, for
    benchmarks that continue after the run (e.g. devices joining later)."""
    raw = default_run_config(
        method=method,
        run_name=run_name,
        output_dir=str(out / "raw" / bench),
        min_nodes=len(node_configs),
    )
    for key, value in config.items():
        raw[key if "." in key else key.replace("_", "-")] = value
    run_dir = out / "raw" / bench / run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    strategy, grid = build_local(raw, [dict(c) for c in node_configs], run_dir, keep_sent=True)
    start = time.time()
    strategy.start(grid)
    history = strategy.history
    log.info("%s/%s finished in %.1f s", bench, run_name, time.time() - start)
    return history, strategy, grid, raw
