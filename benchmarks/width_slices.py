"""Why a width baseline's smallest slice sits at chance: the slices of a finished run's global model.

FIARSE's benchmark (``benchmarks/fiarse.py``) scores each submodel size γ on the *static* slice
(units 0…⌈βC⌉−1, β = √γ) of the final global model, for HeteroFL and FedRolex alike. FedRolex
(Alam et al., NeurIPS 2022) trains its small devices on a *rolling* window, so the static slice is
only the window of its first rounds. This script loads the final checkpoint of each HeteroFL and
FedRolex run of a tier and reports, on the global test set:

* per size, the static slice's accuracy and majority-class share, the spread of its logits
  without the classifier bias (mean over test items of the standard deviation over classes of
  W·h) and the range of the classifier bias (max − min over classes): when the bias range is
  far above the W·h spread the slice predicts the class with the largest bias;
* for a rolling run, at the smallest size, the accuracy of every window its smallest devices
  trained (offsets 0…R−1 of R rounds), of the last round's window, and of the windows at the
  offsets R…C−1 of the widest hidden layer (C units; its units there were never in a small
  device's window, narrower layers wrap around).

``python -m benchmarks.width_slices`` reads ``results/raw/fiarse/ref-{heterofl,fedrolex}-s*``
(the reference tier's run folders; they are not in the repository, so run the FIARSE reference
tier first) and writes ``benchmarks/results/width-slices.{json,md}``. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, absolute_path, markdown_table, publish

log = logging.getLogger("benchmarks.width_slices")

BENCH = "width-slices"
SIZES: tuple[float, ...] = (1 / 64, 1 / 16, 1 / 4, 1.0)


def _last_round(run_dir: Path) -> int | None:
    """Round of the newest checkpoint in a run folder (:class:`fedhet.server.run_dir.RunDir`)."""
    from fedhet.server.run_dir import RunDir

    rounds = RunDir(run_dir).checkpoint_rounds()
    return rounds[-1] if rounds else None


def _finished(run_dir: Path) -> bool:
    """A run whose last checkpoint is its last round (a stopped run is skipped, and logged)."""
    try:
        rounds = int(json.loads((run_dir / "config.json").read_text())["num-server-rounds"])
    except (OSError, ValueError, KeyError):
        rounds = 0
    done = rounds > 0 and _last_round(run_dir) == rounds
    if not done:
        log.warning("%s: not finished, skipped", run_dir.name)
    return done


def slice_stats(
    state: dict[str, torch.Tensor],
    model: str,
    beta: float,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str = "static",
    offset: int = 0,
) -> dict[str, float]:
    """Accuracy, majority share, W·h spread and bias range of one width-β slice on ``(x, y)``."""
    from fedhet.core.width import classifier_keys, extract_submodel, width_indices
    from fedhet.models import build_model

    sub = extract_submodel(state, width_indices(state, model, beta, mode, offset))
    net = build_model(model, num_classes=int(y.max()) + 1, width=beta)
    net.load_state_dict(sub)
    net.eval()
    bias_key = next(k for k in classifier_keys(model) if k.endswith("bias"))
    bias = sub[bias_key]
    with torch.no_grad():
        logits = torch.cat([net(xb) for xb in x.split(2000)])
    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == y).float().mean()),
        "majority-share": float(torch.bincount(pred, minlength=len(bias)).max()) / len(y),
        "wh-spread": float((logits - bias).std(1).mean()),
        "bias-range": float(bias.max() - bias.min()),
    }


def run_stats(run_dir: Path, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The slices of one run's last checkpoint (see the module docstring)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    from fedhet.server.run_dir import RunDir

    last = _last_round(run_dir)
    if last is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoints/round-*.pt")
    # tensor-only load, checked against the run's method (a bad file raises CheckpointError)
    state = RunDir(run_dir).load_checkpoint(last, cfg["method"])["global"]
    model, rounds = cfg["model"], last
    out: dict[str, Any] = {
        "run": run_dir.name,
        "method": cfg["method"],
        "seed": cfg["seed"],
        "round": rounds,
        "static": {f"{g:g}": slice_stats(state, model, math.sqrt(g), x, y) for g in SIZES},
    }
    if cfg["method"] == "fedrolex":
        beta = math.sqrt(min(SIZES))
        widest = max(int(t.shape[0]) for k, t in state.items() if k.endswith("weight"))
        trained = [
            slice_stats(state, model, beta, x, y, "rolling", t)["accuracy"] for t in range(rounds)
        ]
        never = [
            slice_stats(state, model, beta, x, y, "rolling", t)["accuracy"]
            for t in range(rounds, widest)
        ]
        out["rolling"] = {
            "trained-windows": trained,
            "last-window": trained[-1],
            "never-trained-windows": never,
        }
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def render_json(data: dict[str, Any]) -> str:
    """The Markdown of the diagnosis, a pure function of its JSON (``benchmarks.render``)."""
    static_rows = [
        [
            r["method"],
            r["seed"],
            size,
            100 * s["accuracy"],
            s["majority-share"],
            s["wh-spread"],
            s["bias-range"],
        ]
        for r in data["runs"]
        for size, s in r["static"].items()
    ]
    rolling_rows = []
    for r in data["runs"]:
        roll = r.get("rolling")
        if not roll:
            continue
        trained = roll["trained-windows"]
        rolling_rows.append(
            [
                r["seed"],
                r["round"],
                100 * trained[0],
                100 * (_mean(trained) or 0),
                f"{100 * min(trained):.2f}–{100 * max(trained):.2f}",
                100 * roll["last-window"],
                100 * (_mean(roll["never-trained-windows"]) or 0),
            ]
        )
    static_table = markdown_table(
        ["method", "seed", "γ", "accuracy %", "majority share", "W·h spread", "bias range"],
        static_rows,
    )
    rolling_table = markdown_table(
        [
            "seed",
            "rounds R",
            "static slice = round 1's window %",
            "mean over the R trained windows %",
            "range %",
            "round R's window %",
            "mean over never-trained windows %",
        ],
        rolling_rows,
    )
    return f"""# Width baselines: the slices of the final global model

Written by `benchmarks/width_slices.py` from the last checkpoint of each run in
`{data["source"]}` (nothing trained); global test set (Fashion-MNIST, 10,000 items).

## Static slices (what the FIARSE tables score)

W·h spread: mean over test items of the standard deviation over classes of the logits without
the classifier bias; bias range: max − min of the classifier bias. A slice whose W·h spread is
far below the bias range predicts the class with the largest bias (majority share near 1).

{static_table}

## FedRolex at the smallest size: the windows its smallest devices trained

The static slice scored in the tables is the window of round 1 (offset 0); the smallest devices
trained window t − 1 in round t.

{rolling_table}
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw", type=absolute_path, default=RESULTS / "raw" / "fiarse", help="run folders"
    )
    parser.add_argument("--out", type=absolute_path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    from fedhet.data.federated import global_test

    torch.set_num_threads(1)
    runs = [
        r
        for pattern in ("ref-heterofl-s*", "ref-fedrolex-s*")
        for r in sorted(args.raw.glob(pattern))
        if _finished(r)
    ]
    if not runs:
        raise SystemExit(
            f"no finished ref-heterofl-s* / ref-fedrolex-s* run folders in {args.raw}: run the "
            "FIARSE reference tier first (python -m benchmarks.fiarse), or name its folder "
            "with --raw"
        )
    test = global_test(json.loads((runs[0] / "config.json").read_text())["dataset"])
    data = {
        "source": "benchmarks/results/raw/fiarse (reference tier)",
        "runs": [run_stats(r, test.x, test.y) for r in runs],
    }
    publish(args.out, BENCH, data, render_json, log)


if __name__ == "__main__":
    main()
