"""Run registered methods in-process (LocalGrid: real ClientApp handlers, real Messages, no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedhet.config import default_run_config
from fedhet.methods import get_method, parse_run_config
from fedhet.server.run_dir import RunDir
from fedhet.sim import LocalGrid, simulated_node_configs

TINY = {
    "num-server-rounds": 2,
    "local-steps": 2,
    "batch-size": 16,
    "max-train-per-client": 120,
    "local-test-size": 40,
    "profile-bench": False,
    "dirichlet-alpha": 1.0,
}

#: Per-method overrides of the matrix tests: tiny settings that need no data package (image
#: methods run on scikit-learn's digits; text methods on the synthetic tasks and a tiny BERT).
TEST_OVERRIDES: dict[str, dict[str, Any]] = {
    "fltac": {
        "dataset": "synthetic-text",
        "model": "tiny-bert",
        "fltac.steps": 2,
        "fltac.max-length": 16,
    },
    "fedit": {
        "dataset": "synthetic-text",
        "model": "tiny-bert",
        "fedit.steps": 2,
        "fedit.max-length": 16,
    },
    "pfedafm": {"pfedafm.steps": 2},
    "standalone": {"standalone.steps": 4},
}


def tiny_config(method: str, tmp: Path, num_nodes: int = 6, **overrides: Any) -> dict[str, Any]:
    raw = default_run_config(
        method=method, output_dir=str(tmp), min_nodes=num_nodes, run_name=f"t-{method}"
    )
    raw.update(TINY)
    if "digits" in get_method(method).datasets:
        raw["dataset"] = "digits"
    raw.update(TEST_OVERRIDES.get(method, {}))
    raw.update({k if "." in k else k.replace("_", "-"): v for k, v in overrides.items()})
    return raw


def make(
    method: str, tmp: Path, num_nodes: int = 6, node_extra: dict | None = None, **overrides: Any
) -> tuple[Any, LocalGrid]:
    """A strategy (writing to ``tmp``) and a LocalGrid of ``num_nodes`` simulated devices."""
    from client_app.app import app as client_app

    raw = tiny_config(method, tmp, num_nodes, **overrides)
    cfg = parse_run_config(raw)
    nodes = simulated_node_configs(num_nodes, **(node_extra or {}))
    grid = LocalGrid(client_app, nodes, raw)
    strategy = get_method(method).strategy_cls(cfg, RunDir(Path(tmp) / cfg.shared.run_name))
    return strategy, grid


def sized_run_config(method: str, **extra: Any) -> dict[str, Any]:
    """Run config of the submodel-size methods' tests: 4 devices, one per ladder size."""
    raw = default_run_config(
        method=method,
        dataset="digits",
        num_server_rounds=2,
        min_nodes=4,
        local_steps=2,
        batch_size=16,
        lr=0.1,
        profile_bench=False,
        local_test_size=40,
        partition="iid",
    )
    raw[f"{method}.size-assignment"] = "equal-groups"
    raw.update(extra)
    return raw


def assert_majority_shares(
    history: list[dict[str, Any]], sizes: tuple[float, ...], num_classes: int
) -> None:
    """Every evaluated round logs ``server-`` and ``model-majority-share-g<γ>`` per size, in
    ``[1/C, 1]``, and the model share equals the share of the size's devices' pooled counts."""
    from fedhet.core.predictions import PREDICTED_KEY, majority_share, pool_counts

    evaluated = [h for h in history if h.get("server-accuracy") is not None]
    assert evaluated
    for h in evaluated:
        for g in sizes:
            for key in (f"server-majority-share-g{g:g}", f"model-majority-share-g{g:g}"):
                assert 1 / num_classes - 1e-12 <= h[key] <= 1.0, (key, h.get(key))
        by_size: dict[float, list[list[int]]] = {}
        for n in h["nodes"]:
            counts = n[PREDICTED_KEY]
            assert len(counts) == num_classes and sum(counts) == n["eval-examples"]
            gamma = n.get("width-gamma", n.get("fiarse-gamma"))
            by_size.setdefault(float(gamma), []).append(counts)
        assert sorted(by_size) == sorted(sizes)
        for g, counts_of in by_size.items():
            expected = majority_share(pool_counts(counts_of))
            assert h[f"model-majority-share-g{g:g}"] == expected
