"""``fedhet report <run-dir>``: a Markdown report with PNG plots from a run's ``metrics.jsonl``.

Plots: accuracy vs round, accuracy vs cumulative bytes, and accuracy per device class. Accuracy is
the federated local-test accuracy (``eval-accuracy``) and, where the server evaluated, the global
test accuracy (``server-accuracy``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedhet.server.run_dir import RunDir


def load_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metric lines of a run folder; a clear error if there are none."""
    path = Path(run_dir)
    if not (path / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{path} has no metrics.jsonl: is it a fedhet run folder?")
    rows = RunDir(path).read_metrics()
    if not rows:
        raise ValueError(f"{path / 'metrics.jsonl'} is empty: the run finished no round")
    return rows


def per_class_accuracy(rows: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per round, accuracy of each device class on its devices' local tests (mean over devices)."""
    classes = sorted({n["device-class"] for r in rows for n in r.get("nodes", [])})
    out: dict[str, list[float | None]] = {c: [] for c in classes}
    for r in rows:
        acc: dict[str, list[float]] = defaultdict(list)
        for n in r.get("nodes", []):
            if n.get("eval-accuracy") is not None:
                acc[n["device-class"]].append(float(n["eval-accuracy"]))
        for c in classes:
            out[c].append(sum(acc[c]) / len(acc[c]) if acc[c] else None)
    return out


def per_class_bytes(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean MB per device and round, up and down, by device class."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: {"up": 0.0, "down": 0.0, "n": 0.0})
    for r in rows:
        for n in r.get("nodes", []):
            s = sums[n["device-class"]]
            s["up"] += n["bytes-up"] / 1e6
            s["down"] += n["bytes-down"] / 1e6
            s["n"] += 1
    return {
        c: {"up": s["up"] / s["n"], "down": s["down"] / s["n"]} for c, s in sums.items() if s["n"]
    }


def _plot(rows: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    cum = [(r["cum-bytes-up"] + r["cum-bytes-down"]) / 1e6 for r in rows]
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("eval-accuracy", "local tests"), ("server-accuracy", "global test")):
        values = [float("nan") if r.get(key) is None else float(r[key]) for r in rows]
        if any(r.get(key) is not None for r in rows):
            axes[0].plot(rounds, values, marker="o", ms=3, label=label)
            axes[1].plot(cum, values, marker="o", ms=3, label=label)
    axes[0].set_xlabel("round")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("cumulative MB (up + down)")
    for ax in axes:
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    files.append("accuracy.png")

    per_class = per_class_accuracy(rows)
    if per_class:
        fig, ax = plt.subplots(figsize=(6, 4))
        for cls, class_values in per_class.items():
            ys = [float("nan") if v is None else v for v in class_values]
            ax.plot(rounds, ys, marker="o", ms=3, label=cls)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("local-test accuracy")
        ax.set_title("accuracy per device class")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "accuracy_per_class.png", dpi=110)
        plt.close(fig)
        files.append("accuracy_per_class.png")
    return files


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}" if isinstance(v, float) else str(v)


def round_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of the per-round summary table (also printed by ``fedhet demo``)."""
    return [
        [
            str(r["round"]),
            _fmt(r.get("train-loss")),
            _fmt(r.get("eval-accuracy"), True),
            _fmt(r.get("server-accuracy"), True),
            f"{r['bytes-up'] / 1e6:.2f}",
            f"{r['bytes-down'] / 1e6:.2f}",
            str(r.get("num-trained", "")),
            str(len(r.get("dropped", []))),
        ]
        for r in rows
    ]


ROUND_HEADERS = [
    "round",
    "train loss",
    "acc (local)",
    "acc (global)",
    "MB up",
    "MB down",
    "trained",
    "dropped",
]


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and PNG plots into ``run_dir``; return the report's path."""
    path = Path(run_dir)
    rows = load_metrics(path)
    files = _plot(rows, path)
    config = RunDir(path).stored_config() or {}
    lines = [
        f"# fedhet run `{path.name}`",
        "",
        f"Method `{rows[-1]['method']}`, {len(rows)} rounds, model `{config.get('model')}`, "
        f"dataset `{config.get('dataset')}`, fleet `{config.get('fleet')}`.",
        "",
        "## Per round",
        "",
        "| " + " | ".join(ROUND_HEADERS) + " |",
        "|" + "---|" * len(ROUND_HEADERS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in round_table(rows)]
    per_class = per_class_accuracy(rows)
    traffic = per_class_bytes(rows)
    lines += [
        "",
        "## Per device class (last round)",
        "",
        "| class | acc (local) | MB up / device / round | MB down / device / round |",
        "|---|---|---|---|",
    ]
    for cls in sorted(set(per_class) | set(traffic)):
        acc = per_class.get(cls, [None])[-1]
        t = traffic.get(cls, {"up": 0.0, "down": 0.0})
        lines.append(f"| {cls} | {_fmt(acc, True)} | {t['up']:.3f} | {t['down']:.3f} |")
    dropped = [d for r in rows for d in r.get("dropped", [])]
    if dropped:
        lines += ["", f"## Dropped replies ({len(dropped)})", ""]
        lines += [
            f"- node {d['node-id']} ({d.get('device-id')}), {d['stage']}: {d['reason']}"
            for d in dropped[:50]
        ]
    lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in files]
    lines += [
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
    ]
    out = path / "report.md"
    out.write_text("\n".join(lines))
    return out
