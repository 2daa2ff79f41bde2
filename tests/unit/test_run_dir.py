"""Safe, durable run folders (issue 10 item 4)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fedhet.server import run_dir as run_dir_mod
from fedhet.server.run_dir import RunDir, RunDirLocked

SHAPES = {"w": (2, 3)}


def _state(rnd: int, method: str = "fedavg", value: float = 1.0) -> dict[str, Any]:
    return {
        "round": rnd,
        "method": method,
        "global": {"w": torch.full((2, 3), value)},
        "strategy": {},
        "totals": {"bytes-up": 3, "bytes-down": 4},
    }


class _Payload:
    """Unpickling this creates a file: what a planted checkpoint would do."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.target),))


def test_malicious_checkpoint_is_refused_without_running_its_payload(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    rd.save_checkpoint(1, _state(1, value=1.0))
    target = tmp_path / "pwned"
    evil = rd.path / "checkpoints" / "round-999.pt"
    torch.save({"round": 999, "x": _Payload(str(target))}, evil)  # a real torch zip with a pickle
    # sanity: the payload does run when loaded unsafely (so the test can fail)
    probe = tmp_path / "probe.pkl"
    probe.write_bytes(pickle.dumps(_Payload(str(tmp_path / "probe-ran"))))
    pickle.loads(probe.read_bytes())
    assert (tmp_path / "probe-ran").exists()
    got = rd.load_latest_checkpoint("fedavg", SHAPES)
    assert not target.exists()
    assert got is not None and got[0] == 1
    assert (rd.path / "checkpoints" / "round-999.pt.rejected").exists()
    assert rd.checkpoint_rounds() == [1]


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_bad_latest_checkpoint_falls_back_to_newest_good(tmp_path: Path, damage: str) -> None:
    rd = RunDir(tmp_path / "r")
    for r in (1, 2, 3):
        rd.save_checkpoint(r, _state(r, value=float(r)))
    latest = rd.path / "checkpoints" / "round-3.pt"
    blob = latest.read_bytes()
    latest.write_bytes(
        {"truncate": blob[: len(blob) // 2], "empty": b"", "garbage": b"x" * 50}[damage]
    )
    got = rd.load_latest_checkpoint("fedavg", SHAPES)
    assert got is not None
    rnd, state = got
    assert rnd == 2 and float(state["global"]["w"][0, 0]) == 2.0


def test_checkpoint_checked_against_method_and_shapes(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    rd.save_checkpoint(1, _state(1))
    rd.save_checkpoint(2, _state(2, method="fiarse"))
    bad_shape = _state(3)
    bad_shape["global"]["w"] = torch.zeros(3, 2)
    rd.save_checkpoint(3, bad_shape)
    got = rd.load_latest_checkpoint("fedavg", SHAPES)
    assert got is not None and got[0] == 1
    assert rd.checkpoint_rounds() == [1]  # rejected ones are set aside
    nan = _state(2)
    nan["global"]["w"][0, 0] = float("nan")
    rd.save_checkpoint(2, nan)
    got = rd.load_latest_checkpoint("fedavg", SHAPES)
    assert got is not None and got[0] == 1


def test_no_good_checkpoint_returns_none(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    (rd.path / "checkpoints" / "round-1.pt").write_bytes(b"")
    assert rd.load_latest_checkpoint("fedavg", SHAPES) is None


def test_torn_last_metrics_line_dropped(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    rd.append_metrics({"round": 1, "a": 1})
    rd.append_metrics({"round": 2, "a": 2})
    with (rd.path / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 3, "a"')  # crash mid-write
    assert [r["round"] for r in rd.read_metrics()] == [1, 2]
    rd.truncate_metrics(2)
    rd.append_metrics({"round": 3, "a": 3})
    assert [r["round"] for r in rd.read_metrics()] == [1, 2, 3]
    # damage in the middle is not silently skipped
    lines = (rd.path / "metrics.jsonl").read_text().splitlines()
    lines[1] = "{torn"
    (rd.path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        rd.read_metrics()


def test_writes_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(run_dir_mod.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    rd = RunDir(tmp_path / "r")
    rd.save_checkpoint(1, _state(1))
    assert len(synced) >= 2  # file + folder
    n = len(synced)
    rd.append_metrics({"round": 1})
    assert len(synced) >= n + 2  # line + folder (new file)
    n = len(synced)
    rd.append_metrics({"round": 2})
    assert len(synced) == n + 1


def test_run_folder_lock_names_folder_and_pid(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    code = (
        "import sys, time; from fedhet.server.run_dir import RunDir; "
        "rd = RunDir(sys.argv[1]); rd.lock(); print('locked', flush=True); time.sleep(30)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(rd.path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=rf"{rd.path}.*PID {proc.pid}"):
            rd.lock()
    finally:
        proc.kill()
        proc.wait()
    with rd.locked():  # released when the holder dies
        assert json.loads((rd.path / ".lock").read_text()) == os.getpid()
        with pytest.raises(RunDirLocked):
            RunDir(rd.path).lock()  # a second server in the same process is refused too
    RunDir(rd.path).lock()  # free again after the block
