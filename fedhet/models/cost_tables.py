"""Write the shipped CoCoFL cost tables of fedhet's models (METHODS.md B7).

``python -m fedhet.models.cost_tables --model cnn_b --batch-size 32`` (or ``fedhet profile-costs``)
builds the model and writes ``fedhet/models/costs/cnn_b-b32.json`` with
:func:`fedhet.core.costs.measured_cost_table` or :func:`~fedhet.core.costs.analytic_cost_table`.
The command lives here, not in :mod:`fedhet.core.costs`, because it needs the model registry and
fedhet/core imports nothing outside fedhet/core.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedhet.core.costs import (
    GENERATORS,
    analytic_cost_table,
    default_cost_table_path,
    measured_cost_table,
    save_cost_table,
)
from fedhet.models import IMAGE_MODELS, build_model


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m fedhet.models.cost_tables --model cnn_b --batch-size 32 [--generator ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedhet.models.cost_tables",
        description="Write a CoCoFL cost table (METHODS.md B7).",
    )
    parser.add_argument("--model", required=True, choices=IMAGE_MODELS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--generator", choices=GENERATORS, default="measured")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per window")
    parser.add_argument("--int8-cost", type=float, default=0.5, help="q for --generator analytic")
    parser.add_argument("--fake-int8", action="store_true", help="measure with fake int8 only")
    parser.add_argument("--input-shape", type=int, nargs=3, default=(1, 28, 28))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    if args.generator == "analytic":
        rows = analytic_cost_table(model, args.input_shape, args.batch_size, args.int8_cost)
    else:
        rows = measured_cost_table(
            model, args.input_shape, args.batch_size, args.repeats, real_int8=not args.fake_int8
        )
    meta: dict[str, Any] = {
        "model": args.model,
        "batch_size": args.batch_size,
        "generator": args.generator,
        "input_shape": list(args.input_shape),
        "torch_version": torch.__version__,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if args.generator == "analytic":
        meta["int8_cost"] = args.int8_cost
    else:
        meta.update(repeats=args.repeats, real_int8=not args.fake_int8)
    out = args.out or default_cost_table_path(args.model, args.batch_size, args.generator)
    save_cost_table(rows, out, meta)

    print(f"{'window':>8} {'time':>7} {'data':>7} {'memory':>7}")
    for r in rows:
        print(f"{r.window[0]:>4}-{r.window[1]:<3} {r.time:7.3f} {r.data:7.3f} {r.memory:7.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
