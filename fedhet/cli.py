"""The ``fedhet`` command: ``demo``, ``compare``, ``report``, ``methods``, ``profile-costs``.

``fedhet demo`` runs ``flwr run .`` as a local simulation, shows progress from the run's
``metrics.jsonl``, checks the run's final status with ``flwr ls --format json`` (``flwr run`` exits 0
even when the run failed) and prints a per-round and per-device-class table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedhet.deploy.flwr_cli import run_log, run_status, submit_run
from fedhet.deploy.processes import FleetError
from fedhet.deploy.simlink import SimSuperLink

console = Console()


def project_root() -> Path:
    """The checkout holding the Flower app (``pyproject.toml``, server_app, client_app)."""
    return Path(__file__).resolve().parent.parent


def flwr_home() -> Path:
    """``$FLWR_HOME``, else ``<project>/.flwr-home`` (never the user's ``~/.flwr``)."""
    return Path(os.environ.get("FLWR_HOME") or project_root() / ".flwr-home")


def wait_for_run(
    run_id: int, link: SimSuperLink, metrics: Path, rounds: int, timeout: float = 3600
) -> str:
    """Poll ``flwr ls`` until the run finishes, showing progress from ``metrics.jsonl``."""
    deadline = time.time() + timeout
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=rounds)
        while time.time() < deadline:
            done = (
                sum(1 for line in metrics.read_text().splitlines() if line.strip())
                if metrics.exists()
                else 0
            )
            progress.update(task, completed=min(done, rounds))
            status = run_status(run_id, link.connection, link.flwr_home, link.flwr_home)
            if status.startswith("finished"):
                progress.update(task, completed=min(done, rounds))
                return status
            time.sleep(2)
    return "timeout"


def print_summary(run_dir: Path) -> None:
    from fedhet.report import ROUND_HEADERS, per_class_accuracy, per_class_bytes, round_table

    rows = json_lines(run_dir / "metrics.jsonl")
    table = Table(title=f"run {run_dir.name}")
    for h in ROUND_HEADERS:
        table.add_column(h, justify="right")
    for r in round_table(rows):
        table.add_row(*r)
    console.print(table)
    acc, traffic = per_class_accuracy(rows), per_class_bytes(rows)
    cls_table = Table(title="per device class (last round)")
    for h in ("class", "acc (local)", "MB up/device/round", "MB down/device/round"):
        cls_table.add_column(h, justify="right")
    for c in sorted(traffic):
        a = acc.get(c, [None])[-1]
        cls_table.add_row(
            c,
            "–" if a is None else f"{100 * a:.2f}%",
            f"{traffic[c]['up']:.3f}",
            f"{traffic[c]['down']:.3f}",
        )
    console.print(cls_table)


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_simulation(
    overrides: str,
    *,
    nodes: int,
    run_dir: Path,
    rounds: int,
    timeout: float = 3600,
    ray_address: str | None = None,
) -> tuple[str, int | None]:
    """``flwr run`` this app on a fedhet-managed simulation SuperLink; return (status, run id).

    ``ray_address`` (``host:port``) runs the simulation on an existing Ray cluster.
    """
    root = project_root()
    with SimSuperLink(flwr_home(), num_supernodes=nodes, ray_address=ray_address) as link:
        run_id, result = submit_run(
            root,
            link.connection,
            link.flwr_home,
            overrides,
            extra_args=link.federation_config(),
            timeout=600,
        )
        if run_id is None:
            console.print(f"[red]flwr run did not start a run[/]\n{result.stdout}\n{result.stderr}")
            return "not-started", None
        status = wait_for_run(run_id, link, run_dir / "metrics.jsonl", rounds, timeout)
        if status != "finished:completed":
            console.print(run_log(run_id, link.connection, link.flwr_home, root)[-6000:])
        return status, run_id


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.output_dir).resolve()
    run_name = args.run_name or time.strftime("demo-%Y%m%d-%H%M%S")
    overrides = (
        f"method='{args.method}' num-server-rounds={args.rounds} output-dir='{out}' "
        f"run-name='{run_name}' min-nodes={args.nodes} local-steps={args.steps} "
        f"max-train-per-client={args.max_train} {args.config}"
    ).strip()
    console.print(
        f"[bold]fedhet demo[/]: {args.method}, {args.nodes} simulated devices, "
        f"{args.rounds} rounds → {out / run_name}"
    )
    try:
        status, run_id = run_simulation(
            overrides,
            nodes=args.nodes,
            run_dir=out / run_name,
            rounds=args.rounds,
            ray_address=args.ray_address or None,
        )
    except (ValueError, FleetError) as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    console.print(f"run {run_id}: status [bold]{status}[/]")
    if status != "finished:completed":
        console.print("[red]the run did not complete[/]")
        return 1
    print_summary(out / run_name)
    from fedhet.report import write_report

    console.print(f"report: {write_report(out / run_name)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run several methods on one fleet and write ``compare.md``/``.json`` and plots."""
    from fedhet.compare import (
        CompareSettings,
        compare,
        default_methods,
        load_fleet,
        parse_overrides,
    )
    from fedhet.config import ConfigError

    try:
        config = parse_overrides(args.config)
        devices: list[dict[str, Any]] = []
        if args.fleet:
            fleet, devices = load_fleet(args.fleet)
            if fleet is not None:
                config["fleet"] = fleet
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] or default_methods(
            config.get("dataset")
        )
        settings = CompareSettings(
            rounds=args.rounds, nodes=args.nodes, config=config, devices=devices, engine=args.engine
        )

        def flwr_runner(overrides: str, nodes: int, run_dir: Path, rounds: int) -> str:
            return run_simulation(overrides, nodes=nodes, run_dir=run_dir, rounds=rounds)[0]

        results = compare(methods, settings, Path(args.out), flwr_runner=flwr_runner)
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    table = Table(title="fedhet compare")
    for h in ("method", "status", "acc global", "acc local", "MB up", "s/round"):
        table.add_column(h, justify="right")
    for m, r in results.items():
        if r.get("status") != "finished":
            table.add_row(m, "[red]failed[/]", "", "", "", "")
            continue
        g, loc = r["global-accuracy"], r["local-accuracy"]
        table.add_row(
            m,
            "finished",
            "–" if g is None else f"{100 * g:.1f}%",
            "–" if loc is None else f"{100 * loc:.1f}%",
            f"{r['cum-bytes-up'] / 1e6:.2f}",
            f"{r['mean-round-seconds']:.2f}",
        )
    console.print(table)
    console.print(f"report: {Path(args.out) / 'compare.md'}")
    failed = [m for m, r in results.items() if r.get("status") != "finished"]
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/] (errors in compare.md)")
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedhet.report import write_report

    try:
        path = write_report(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    print_summary(Path(args.run_dir))
    console.print(f"wrote {path}")
    return 0


def cmd_methods(_: argparse.Namespace) -> int:
    from fedhet.methods import METHODS

    table = Table(title="registered methods")
    table.add_column("name")
    table.add_column("what it does")
    for entry in METHODS.values():
        table.add_row(entry.name, entry.summary)
    console.print(table)
    return 0


def cmd_profile_costs(args: argparse.Namespace) -> int:
    """Write a CoCoFL cost table (``python -m fedhet.models.cost_tables`` with the same options)."""
    from fedhet.models.cost_tables import main as costs_main

    return costs_main(args.costs_args)


def method_config_tables() -> str:
    """``[tool.flwr.app.config.<method>]`` TOML tables with every method setting's default.

    Flower accepts ``flwr run -c "key=value"`` only for keys present in pyproject.toml, so every
    method key must appear there; ``tests/unit/test_config.py`` checks the file matches this.
    """
    from fedhet.config import kebab
    from fedhet.methods import METHODS

    lines: list[str] = []
    for name, entry in METHODS.items():
        fields = entry.config_cls.model_fields
        if not fields:
            continue
        lines.append(f"[tool.flwr.app.config.{name}]")
        for field_name, field in fields.items():
            value = field.default
            text = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
            lines.append(f"{kebab(field_name)} = {text}")
        lines.append("")
    return "\n".join(lines)


def cmd_config_defaults(_: argparse.Namespace) -> int:
    print(method_config_tables())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedhet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a local simulation with `flwr run .` and summarise it")
    demo.add_argument(
        "--method",
        default="fedavg",
        help="a registered method (`fedhet methods`); its default dataset and model are used "
        "unless --config sets them (default %(default)s)",
    )
    demo.add_argument("--nodes", type=int, default=10)
    demo.add_argument("--rounds", type=int, default=5)
    demo.add_argument("--steps", type=int, default=20, help="local SGD steps per round")
    demo.add_argument("--max-train", type=int, default=2000, help="training samples per device")
    demo.add_argument("--output-dir", default="runs")
    demo.add_argument("--run-name", default="")
    demo.add_argument("--config", default="", help="extra run-config overrides 'k=v k2=v2'")
    demo.add_argument(
        "--ray-address",
        default="",
        help="run the simulation on an existing Ray cluster (host:port of `ray start --head`)",
    )
    demo.set_defaults(func=cmd_demo)
    comp = sub.add_parser(
        "compare", help="run several methods on the same fleet, split and seed; one report"
    )
    comp.add_argument(
        "--methods",
        default="",
        help="comma-separated registered methods (default: every method for the dataset)",
    )
    comp.add_argument("--rounds", type=int, default=5)
    comp.add_argument("--nodes", type=int, default=10, help="simulated devices")
    comp.add_argument("--out", type=Path, default=Path("compare"), help="report folder")
    comp.add_argument("--config", default="", help="run-config overrides 'k=v k2=v2'")
    comp.add_argument(
        "--fleet", type=Path, default=None, help="fleet table JSON (class list/shares or devices)"
    )
    comp.add_argument("--engine", choices=("inprocess", "flwr"), default="inprocess")
    comp.set_defaults(func=cmd_compare)
    report = sub.add_parser("report", help="write report.md and plots for a run folder")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(func=cmd_report)
    methods = sub.add_parser("methods", help="list registered methods")
    methods.set_defaults(func=cmd_methods)
    defaults = sub.add_parser(
        "config-defaults", help="print every method's run-config table for pyproject.toml"
    )
    defaults.set_defaults(func=cmd_config_defaults)

    costs = sub.add_parser(
        "profile-costs",
        add_help=False,
        help="measure a CoCoFL cost table: --model cnn_b --batch-size 32 [--generator analytic]",
    )
    costs.set_defaults(func=cmd_profile_costs)
    args, rest = parser.parse_known_args(argv)
    if args.command == "profile-costs":
        args.costs_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
