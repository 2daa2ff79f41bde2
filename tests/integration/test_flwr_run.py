"""One real `flwr run .` simulation, its status read from `flwr ls --format json`.

`flwr run` exits 0 even when the run failed, so the status is the check. The SuperLink is started
by fedhet (fedhet.deploy.simlink) on free loopback ports and stopped by PID.
"""

from __future__ import annotations

import json
import os

import pytest

from fedhet.cli import run_simulation

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_flwr_run_simulation_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    run_dir = tmp_path / "runs" / "it-fedavg"
    overrides = (
        f"method='fedavg' num-server-rounds=2 dataset='digits' output-dir='{tmp_path / 'runs'}' "
        "run-name='it-fedavg' min-nodes=3 local-steps=2 batch-size=16 "
        "max-train-per-client=100 local-test-size=40 profile-bench=false"
    )
    status, run_id = run_simulation(overrides, nodes=3, run_dir=run_dir, rounds=2, timeout=420)
    assert run_id is not None
    assert status == "finished:completed", status
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert len(rows[-1]["nodes"]) == 3 and all(n["status"] == "trained" for n in rows[-1]["nodes"])
    assert (run_dir / "report.md").exists() and (run_dir / "accuracy.png").exists()
    state = tmp_path / "flwr-home" / "fedhet-sim.json"
    assert not state.exists(), "the simulation SuperLink was not stopped"


def test_flwr_run_with_bad_config_fails_with_status(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    overrides = "method='fedavg' num-server-rounds=0 min-nodes=2"
    status, run_id = run_simulation(
        overrides, nodes=2, run_dir=tmp_path / "none", rounds=1, timeout=240
    )
    assert run_id is not None
    assert status.startswith("finished:") and status != "finished:completed"
    assert os.path.exists(tmp_path / "flwr-home")
