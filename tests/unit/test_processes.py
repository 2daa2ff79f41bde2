"""The process toolkit (fedhet/deploy/processes.py): start, wait, stop by recorded PID only."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from fedhet.deploy.processes import (
    FleetError,
    ProcessRecord,
    spawn,
    terminate,
    wait_for_log_line,
)

#: A parent that starts a grandchild, says so, and sleeps (both would outlive a naive kill).
FAMILY = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('child', child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.timeout(60)
def test_spawn_wait_for_log_line_and_terminate_the_whole_family(tmp_path: Path) -> None:
    record = spawn([sys.executable, "-c", FAMILY], tmp_path / "family.log", os.environ, tmp_path)
    assert os.getpgid(record.pid) == record.pid  # its own process group
    line = wait_for_log_line(record, r"^child \d+$", timeout=30, what="family")
    child = psutil.Process(int(line.split()[1]))
    terminate([record], grace=5.0)
    assert not record.is_alive()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert "$ " in Path(record.log).read_text().splitlines()[1]  # the command line is logged


@pytest.mark.timeout(60)
def test_waiting_on_a_process_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    code = "print('bad flag --x', flush=True); raise SystemExit(3)"
    record = spawn([sys.executable, "-c", code], tmp_path / "bad.log", os.environ, tmp_path)
    with pytest.raises(FleetError, match="bad flag --x"):
        wait_for_log_line(record, "never printed", timeout=30, what="bad process")


def test_terminate_never_signals_a_recycled_pid() -> None:
    """A record whose start time does not match the live PID must never be signalled."""
    me = psutil.Process()
    stale = ProcessRecord(me.pid, me.create_time() - 100.0, ["x"], "/dev/null")
    assert not stale.is_alive()
    terminate([stale], signal.SIGKILL)  # would kill pytest itself if it did not check
    assert me.is_running()


def test_run_status_is_unknown_when_flwr_ls_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow ``flwr ls`` (a SuperLink busy with 1,000 simulated devices) must not end the wait."""
    import subprocess

    from fedhet.deploy import flwr_cli

    def slow(*_args: object, **_kwargs: object) -> None:
        raise subprocess.TimeoutExpired(["flwr", "ls"], 60.0)

    monkeypatch.setattr(flwr_cli, "run_flwr", slow)
    assert flwr_cli.run_status(7, "fedhet-sim", tmp_path, tmp_path) == "unknown"
