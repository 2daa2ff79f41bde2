"""Run a registered fedhet method on simulated devices in one process.

The ServerApp strategy and the ClientApp handlers run unchanged; messages go through
``fedhet.sim.LocalGrid`` instead of a SuperLink, which makes this the quickest way to try a method
or a config on a laptop.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from fedhet.config import default_run_config
from fedhet.methods import METHODS, get_method, parse_run_config
from fedhet.server.run_dir import RunDir
from fedhet.sim import LocalGrid, simulated_node_configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="fedavg", choices=list(METHODS))
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--output-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="fedhet-")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)

    from client_app.app import app as client_app

    entry = get_method(args.method)
    raw = default_run_config(
        method=args.method,
        num_server_rounds=args.rounds,
        dataset=args.dataset,
        model=entry.default_model,
        min_nodes=args.nodes,
        local_steps=10,
        max_train_per_client=1000,
        local_test_size=200,
        output_dir=str(args.output_dir),
        run_name=f"example-{args.method}",
    )
    grid = LocalGrid(client_app, simulated_node_configs(args.nodes), raw)
    strategy = entry.strategy_cls(parse_run_config(raw), RunDir(args.output_dir / raw["run-name"]))
    result = strategy.start(grid)  # Flower's Result: final arrays + per-round metric histories
    for rnd, train in sorted(result.train_metrics_clientapp.items()):
        local = dict(result.evaluate_metrics_clientapp.get(rnd, {}))
        server = dict(result.evaluate_metrics_serverapp.get(rnd, {}))
        print(
            f"round {rnd}: local acc {local.get('eval-accuracy', float('nan')):.3f}, "
            f"global acc {server.get('server-accuracy', float('nan')):.3f}, "
            f"{float(train['bytes-up']) / 1e6:.2f} MB up"
        )
    print(f"run folder: {args.output_dir / raw['run-name']}")


if __name__ == "__main__":
    main()
