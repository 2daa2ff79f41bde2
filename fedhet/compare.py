"""``fedhet compare``: run several methods on one fleet, split and seed, and write one report.

For a plant engineer choosing a method: each method runs on the same simulated fleet (device
classes from the run config's ``fleet`` or from the plant's own fleet table), the same data split
and the same seed. Every method writes its normal run folder under ``<out>/runs/<method>/``; the
comparison is read back from those folders (``metrics.jsonl``, ``profiles.json``, the last
checkpoint), so a ``flwr run`` simulation and the in-process grid give the same report.

Outputs in ``<out>/``: ``compare.json`` (per method: final accuracy on the global test and on the
devices' local tests, accuracy per device class, cumulative bytes up and down, upload bytes per
parameter per trained device-round, seconds per round, share of device-rounds each class trained or
was infeasible), ``compare.md`` and three PNGs (accuracy vs cumulative upload, accuracy per device
class, seconds per round).

A method whose ``<out>/runs/<method>/compare-summary.json`` exists with the same settings is not
rerun (resumable); a failed method is recorded with its error and makes the command fail.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedhet.config import ConfigError, default_run_config
from fedhet.methods import METHODS, get_method

log = logging.getLogger("fedhet.compare")

SUMMARY_FILE = "compare-summary.json"
#: Run-config keys ``compare`` sets itself.
OWN_KEYS = ("method", "run-name", "output-dir", "num-server-rounds", "min-nodes")

#: ``flwr run`` runner: (overrides, nodes, run_dir, rounds) → final status (``finished:completed``).
FlwrRunner = Callable[[str, int, Path, int], str]


@dataclass
class CompareSettings:
    """What every method of one comparison shares.

    Attributes
    ----------
    rounds : int
        Federated rounds per method.
    nodes : int
        Simulated devices (ignored when ``devices`` lists them).
    config : dict
        Run-config overrides for every method (``method.key`` keys only for that method).
    devices : list of dict
        Per-device node configs from the plant's fleet table (empty: ``nodes`` simulated devices).
    engine : str
        ``inprocess`` (:class:`fedhet.sim.LocalGrid`) or ``flwr`` (Flower's simulation).
    """

    rounds: int
    nodes: int = 10
    config: dict[str, Any] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    engine: str = "inprocess"

    def fingerprint(self) -> dict[str, Any]:
        """The settings as stored with each method's summary (resume compares them)."""
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))


def parse_overrides(text: str) -> dict[str, Any]:
    """``"k=v k2=v2"`` → dict; values parsed as JSON where they are (numbers, true, quoted)."""
    out: dict[str, Any] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config: {token!r} is not key=value")
        value = value.strip("'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def toml_value(value: Any) -> str:
    """A run-config value as ``flwr run -c`` parses it (TOML; strings single-quoted, literal)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if "'" in text or "\n" in text:
        raise ConfigError(f"run-config value {text!r} cannot be passed to flwr run (quote/newline)")
    return f"'{text}'"


def load_fleet(path: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """Read a plant's fleet table.

    Either the run config's ``fleet`` value (a JSON list of classes cycled over devices, or an
    object of class shares), or ``{"devices": [{node config}, ...]}`` with one node config per
    device (``device-class``, ``bandwidth-mbps``, ``memory-mb``…).

    Returns
    -------
    tuple
        (``fleet`` run-config value or None, per-device node configs or []).
    """
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--fleet {path}: {exc}") from None
    if isinstance(table, dict) and "devices" in table:
        devices = table["devices"]
        if not isinstance(devices, list) or not devices:
            raise ConfigError(f"--fleet {path}: 'devices' must be a non-empty list")
        from fedhet.profile import parse_node_config

        for i, dev in enumerate(devices):
            if not isinstance(dev, dict):
                raise ConfigError(f"--fleet {path}: device {i} is not an object")
            parse_node_config(dict(dev))  # a clear error naming the bad key
        return None, [dict(d) for d in devices]
    if isinstance(table, list | dict) and table:
        return json.dumps(table), []
    raise ConfigError(f"--fleet {path}: use a list of classes, class shares or {{'devices': [..]}}")


def default_methods(dataset: str | None) -> list[str]:
    """Every registered method that trains on ``dataset`` (image methods when not given)."""
    if dataset in (None, "auto"):
        return [n for n, e in METHODS.items() if e.default_dataset == "fashion-mnist"]
    return [n for n, e in METHODS.items() if dataset in e.datasets]


def common_model(methods: Sequence[str]) -> str | None:
    """A model every method accepts (the first method's default preferred); None if there is none."""
    entries = [get_method(m) for m in methods]
    shared = set.intersection(*(set(e.models) for e in entries)) if entries else set()
    for e in entries:
        if e.default_model in shared:
            return e.default_model
    return sorted(shared)[0] if shared else None


def method_config(method: str, settings: CompareSettings, out: Path) -> dict[str, Any]:
    """The flat run config of ``method`` in this comparison."""
    n = len(settings.devices) or settings.nodes
    raw = default_run_config(
        method=method,
        run_name=method,
        output_dir=str((out / "runs").resolve()),
        num_server_rounds=settings.rounds,
        min_nodes=n,
    )
    for key, value in settings.config.items():
        if key in OWN_KEYS:
            raise ConfigError(f"--config may not set {key!r}: fedhet compare sets it")
        prefix, dot, _ = key.partition(".")
        if dot and prefix != method:
            continue  # another method's key
        raw[key] = value
    return raw


def node_configs(settings: CompareSettings) -> list[dict[str, Any]]:
    """Per-device node configs: the fleet table's devices, or ``nodes`` simulated partitions."""
    from fedhet.sim import simulated_node_configs

    if not settings.devices:
        return simulated_node_configs(settings.nodes)
    n = len(settings.devices)
    return [{"partition-id": i, "num-partitions": n, **d} for i, d in enumerate(settings.devices)]


# --------------------------------------------------------------------------------------------------
# Reading a finished run folder
# --------------------------------------------------------------------------------------------------
def _model_params(run_dir: Path) -> int | None:
    from fedhet.server.run_dir import RunDir

    latest = RunDir(run_dir).load_latest_checkpoint()
    if latest is None:
        return None
    return int(sum(t.numel() for t in latest[1]["global"].values()))


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """The comparison's numbers for one finished run folder (see the module docstring)."""
    from fedhet.report import load_metrics, per_class_accuracy

    rows = load_metrics(run_dir)
    last = rows[-1]
    profiles = json.loads((run_dir / "profiles.json").read_text()).get("nodes", {})
    devices = Counter(p.get("device-class", "?") for p in profiles.values())
    status: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        for n in r.get("nodes", []):
            status[n["device-class"]][n.get("status", "?")] += 1
    trained_rounds = sum(c["trained"] for c in status.values())
    params = _model_params(run_dir)
    shares = {}
    for cls, count in sorted(devices.items()):
        slots = count * len(rows)
        shares[cls] = {
            "devices": count,
            "trained": status[cls]["trained"] / slots,
            "infeasible": status[cls]["infeasible"] / slots,
            "not-trained": 1 - (status[cls]["trained"] + status[cls]["infeasible"]) / slots,
        }
    per_class = {c: v[-1] for c, v in per_class_accuracy(rows).items()}
    seconds = [float(r["wall-seconds"]) for r in rows]
    return {
        "status": "finished",
        "rounds": len(rows),
        "model": (json.loads((run_dir / "config.json").read_text()) or {}).get("model"),
        "model-params": params,
        "global-accuracy": last.get("server-accuracy"),
        "local-accuracy": last.get("eval-accuracy"),
        "class-accuracy": per_class,
        "cum-bytes-up": int(last["cum-bytes-up"]),
        "cum-bytes-down": int(last["cum-bytes-down"]),
        "trained-device-rounds": trained_rounds,
        "bytes-up-per-param": (
            last["cum-bytes-up"] / (trained_rounds * params) if trained_rounds and params else None
        ),
        "mean-round-seconds": statistics.fmean(seconds),
        "steady-round-seconds": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
        "class-shares": shares,
        "curve": [
            {
                "round": r["round"],
                "global-accuracy": r.get("server-accuracy"),
                "local-accuracy": r.get("eval-accuracy"),
                "cum-bytes-up": r["cum-bytes-up"],
                "cum-bytes-down": r["cum-bytes-down"],
                "seconds": r["wall-seconds"],
            }
            for r in rows
        ],
    }


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------
def _finished(run_dir: Path, settings: CompareSettings) -> dict[str, Any] | None:
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("settings") != settings.fingerprint():
        return None
    summary: dict[str, Any] = data["summary"]
    return summary


def _count_rounds(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if line.strip())


def run_method(
    method: str,
    settings: CompareSettings,
    out: Path,
    flwr_runner: FlwrRunner | None = None,
) -> dict[str, Any]:
    """Run ``method`` from scratch into ``<out>/runs/<method>`` and return its summary."""
    raw = method_config(method, settings, out)
    run_dir = out / "runs" / method
    shutil.rmtree(run_dir, ignore_errors=True)
    if settings.engine == "inprocess":
        from fedhet.sim import run_local

        run_local(raw, node_configs(settings), run_dir)
    elif settings.engine == "flwr":
        if settings.devices:
            raise ConfigError("a per-device fleet table needs --engine inprocess")
        if flwr_runner is None:
            raise ConfigError("--engine flwr needs a runner")
        overrides = " ".join(f"{k}={toml_value(v)}" for k, v in raw.items())
        status = flwr_runner(overrides, settings.nodes, run_dir, settings.rounds)
        if status != "finished:completed":
            raise RuntimeError(f"flwr run ended with status {status}")
    else:
        raise ConfigError(f"--engine {settings.engine!r}: use 'inprocess' or 'flwr'")
    done = _count_rounds(run_dir / "metrics.jsonl")
    if done < settings.rounds:
        raise RuntimeError(f"{method} finished {done} of {settings.rounds} rounds")
    summary = summarize_run(run_dir)
    (run_dir / SUMMARY_FILE).write_text(
        json.dumps({"settings": settings.fingerprint(), "summary": summary}, indent=2)
    )
    return summary


def compare(
    methods: Sequence[str],
    settings: CompareSettings,
    out: Path,
    *,
    flwr_runner: FlwrRunner | None = None,
    show_progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run (or reuse) every method, write the report, return the per-method summaries.

    A failed method's entry is ``{"status": "failed", "error": ...}``; the others still run.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    for m in methods:
        get_method(m)  # unknown names fail before anything runs
    if "model" not in settings.config:
        model = common_model(methods)
        if model is not None:
            settings.config["model"] = model
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("compare", total=len(methods) * settings.rounds)
        for i, method in enumerate(methods):
            run_dir = out / "runs" / method
            base = i * settings.rounds
            cached = _finished(run_dir, settings)
            if cached is not None:
                log.info("%s: finished earlier, not rerun", method)
                results[method] = cached
                progress.update(task, completed=base + settings.rounds)
                continue
            progress.update(task, description=method, completed=base)
            stop = threading.Event()

            def poll(base: int = base, run_dir: Path = run_dir, stop: threading.Event = stop):
                while not stop.wait(0.5):
                    done = min(_count_rounds(run_dir / "metrics.jsonl"), settings.rounds)
                    progress.update(task, completed=base + done)

            watcher = threading.Thread(target=poll, daemon=True)
            watcher.start()
            start = time.time()
            try:
                results[method] = run_method(method, settings, out, flwr_runner)
                log.info("%s finished in %.1f s", method, time.time() - start)
            except Exception as exc:  # one method's failure must not stop the others
                log.error("%s failed: %s", method, exc)
                results[method] = {
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            finally:
                stop.set()
                watcher.join()
            progress.update(task, completed=base + settings.rounds)
    write_compare_report(results, settings, out)
    return results


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _classes(results: dict[str, dict[str, Any]]) -> list[str]:
    names = {c for r in results.values() for c in r.get("class-shares", {})}
    order = ["strong", "medium", "weak"]
    return [c for c in order if c in names] + sorted(names - set(order))


def write_compare_report(
    results: dict[str, dict[str, Any]], settings: CompareSettings, out: Path
) -> Path:
    """Write ``compare.json``, ``compare.md`` and the PNGs into ``out``; return the Markdown path."""
    (out / "compare.json").write_text(
        json.dumps({"settings": settings.fingerprint(), "methods": results}, indent=2)
    )
    ok = {m: r for m, r in results.items() if r.get("status") == "finished"}
    classes = _classes(ok)
    pngs = _plot(ok, classes, out) if ok else []
    head = ["method", "model", "acc global", "acc local"]
    head += [f"acc {c}" for c in classes]
    head += ["MB up", "MB down", "B up / param / trained", "s / round (mean)", "s / round (steady)"]
    lines = [
        "# fedhet compare",
        "",
        f"{len(results)} methods, {settings.rounds} rounds, "
        f"{len(settings.devices) or settings.nodes} devices, engine `{settings.engine}`, "
        f"config `{' '.join(f'{k}={v}' for k, v in sorted(settings.config.items()))}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m, r in ok.items():
        cells = [m, str(r["model"]), _pct(r["global-accuracy"]), _pct(r["local-accuracy"])]
        cells += [_pct(r["class-accuracy"].get(c)) for c in classes]
        per_param = r["bytes-up-per-param"]
        cells += [
            f"{r['cum-bytes-up'] / 1e6:.2f}",
            f"{r['cum-bytes-down'] / 1e6:.2f}",
            "–" if per_param is None else f"{per_param:.2f}",
            f"{r['mean-round-seconds']:.2f}",
            f"{r['steady-round-seconds']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Share of device-rounds trained / infeasible / not trained, by class",
        "",
        "| method | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for m, r in ok.items():
        cells = []
        for c in classes:
            s = r["class-shares"].get(c)
            cells.append(
                "–"
                if s is None
                else f"{_pct(s['trained'])} / {_pct(s['infeasible'])} / {_pct(s['not-trained'])}"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    failed = {m: r for m, r in results.items() if r.get("status") != "finished"}
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- **{m}**: {r.get('error')}" for m, r in failed.items()]
    lines += [
        "",
        "`B up / param / trained`: upload bytes divided by (trained device-rounds × model "
        "parameters); 4.0 is a dense fp32 full model from every trained device.",
        "",
    ]
    lines += [f"![{p}]({p})" for p in pngs]
    path = out / "compare.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot(results: dict[str, dict[str, Any]], classes: list[str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def nan(v: float | None) -> float:
        return float("nan") if v is None else float(v)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, r in results.items():
        key = "global-accuracy" if r["global-accuracy"] is not None else "local-accuracy"
        xs = [p["cum-bytes-up"] / 1e6 for p in r["curve"]]
        ax.plot(xs, [nan(p[key]) for p in r["curve"]], marker="o", ms=3, label=m)
    ax.set_xlabel("cumulative upload (MB, all devices)")
    ax.set_ylabel("accuracy (global test)")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_upload.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(results) + 2), 4.5))
    width = 0.8 / max(1, len(classes))
    for j, c in enumerate(classes):
        xs = [i + (j - (len(classes) - 1) / 2) * width for i in range(len(results))]
        ys = [nan(r["class-accuracy"].get(c)) for r in results.values()]
        ax.bar(xs, ys, width, label=c)
    ax.set_xticks(range(len(results)), list(results), rotation=20)
    ax.set_ylabel("final local-test accuracy")
    ax.set_title("accuracy per device class (its devices' local tests)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_class.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for m, r in results.items():
        ax.plot(
            [p["round"] for p in r["curve"]],
            [p["seconds"] for p in r["curve"]],
            marker="o",
            label=m,
        )
    ax.set_xlabel("round")
    ax.set_ylabel("wall seconds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "round_seconds.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_upload.png", "accuracy_per_class.png", "round_seconds.png"]
