"""A simulation on an existing Ray cluster (``fedhet demo --ray-address``), 127.0.0.1 only.

A one-node Ray head (``ray start --head --block``, its own temp folder; 1 CPU, so one actor
serves both devices: about 20 s less than 3 devices on 2 CPUs) is started in its own process group
and stopped by PID: SIGTERM to the ``--block`` process stops the GCS, raylet and workers it
started. The run must finish ``completed`` and its ClientApp actors must have run on
that cluster: their worker logs are in the head's session folder. A simulation that ignored the
address would start a Ray of its own (``ray.init`` without an address, and ``ray start
--temp-dir`` writes no ``/tmp/ray/ray_current_cluster`` to find) and log elsewhere.

Ray on Linux replaces ``--node-ip-address 127.0.0.1`` by the host's address and listens on every
interface; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the head's and the simulation's environment
keeps the whole cluster on loopback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest

from fedhet.cli import run_simulation
from fedhet.deploy.processes import (
    console_script,
    find_free_port,
    spawn,
    terminate,
    wait_for_log_line,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _group(leader: int) -> list[int]:
    """PIDs of the live processes in process group ``leader``."""
    pids = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == leader and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
    return pids


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (Flower's simulation extra, flwr[simulation])",
)
@pytest.mark.timeout(300)
def test_simulation_completes_on_an_existing_ray_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        ray_cli = console_script("ray")
    except FileNotFoundError:
        pytest.skip("the `ray` command is not installed")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Short path: Ray's socket paths under it must fit a Unix socket name (107 bytes).
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedhet-ray-"))
    port = find_free_port()
    command = [ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    command += ["--num-cpus", "1", "--temp-dir", str(ray_tmp), "--include-dashboard", "false"]
    head = spawn(
        [*command, "--disable-usage-stats", "--block"],
        tmp_path / "ray-head.log",
        os.environ,
        tmp_path,
    )
    try:
        wait_for_log_line(head, "Ray runtime started", 120, "Ray head")
        run_dir = tmp_path / "runs" / "it-ray"
        overrides = (
            f"method='fedavg' num-server-rounds=2 dataset='digits' "
            f"output-dir='{tmp_path / 'runs'}' run-name='it-ray' min-nodes=2 local-steps=2 "
            "batch-size=16 max-train-per-client=100 local-test-size=40 profile-bench=false"
        )
        status, run_id = run_simulation(
            overrides,
            nodes=2,
            run_dir=run_dir,
            rounds=2,
            timeout=240,
            ray_address=f"127.0.0.1:{port}",
        )
        assert run_id is not None
        assert status == "finished:completed", status
        worker_logs = (ray_tmp / "session_latest" / "logs").glob("worker-*.out")
        actors = [p for p in worker_logs if ":actor_name:ClientAppActor" in p.read_text()]
        assert actors, f"no ClientApp actor ran on the cluster at 127.0.0.1:{port}"
    finally:
        terminate([head])
        left = _group(head.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"Ray processes left running: {left}"
