"""The warm-start fork server and its ``flwr-clientapp`` shim (fedhet/deploy/forkserver.py).

A real server process on a Unix socket, driven through the real shim executable, with a test
entry instead of Flower's ClientApp: what the SuperExec gives the shim (arguments, environment,
working directory, standard streams) must reach the child, the child's exit code must come
back, children must not share random state, a broken request must not stop the server, and the
shim must run the real command when no server answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedhet.deploy import forkserver
from fedhet.deploy.processes import ProcessRecord, spawn, terminate

ENTRY_MODULE = """
import json, os, random, sys
def run():
    out = {"argv": sys.argv[1:], "cwd": os.getcwd(), "marker": os.environ.get("MARKER"),
           "random": random.random(), "pid": os.getpid()}
    print(json.dumps(out), flush=True)
    sys.stderr.write("child stderr line\\n")
    raise SystemExit(int(sys.argv[1]))
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, Path, ProcessRecord]]:
    """A fork server with the test entry; yields (socket, shim, process)."""
    (tmp_path / "entry_mod.py").write_text(ENTRY_MODULE)
    sock = Path(f"/tmp/fedhet-test-{os.getpid()}-{time.monotonic_ns()}.sock")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [
        sys.executable,
        forkserver.__file__,
        "serve",
        "--socket",
        str(sock),
        "--entry",
        "entry_mod:run",
        "--preload",
        "json",
    ]
    record = spawn(command, tmp_path / "server.log", env, tmp_path)
    shim = Path(forkserver.write_shim(str(tmp_path / "bin")))
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert record.is_alive(), (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "fork server not ready"
            time.sleep(0.05)
        yield sock, shim, record
    finally:
        terminate([record])
        sock.unlink(missing_ok=True)


def run_shim(
    shim: Path, sock: Path, args: list[str], cwd: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, forkserver.SOCKET_ENV: str(sock), **extra}
    return subprocess.run(
        [str(shim), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def test_child_gets_arguments_environment_cwd_streams_and_returns_exit_code(
    server: tuple[Path, Path, ProcessRecord], tmp_path: Path
) -> None:
    sock, shim, record = server
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = run_shim(shim, sock, ["7", "--token", "abc"], workdir, MARKER="m-1")
    assert done.returncode == 7, done.stderr
    out = json.loads(done.stdout)
    assert out["argv"] == ["7", "--token", "abc"]
    assert out["cwd"] == str(workdir)
    assert out["marker"] == "m-1"
    assert "child stderr line" in done.stderr
    # the child is the server's, not a fresh interpreter started by the shim
    assert record.process() is not None
    log = (tmp_path / "server.log").read_text()
    assert f"forked pid {out['pid']}" in log
    assert f"pid {out['pid']} exited with 7" in log


def test_children_do_not_share_random_state(
    server: tuple[Path, Path, ProcessRecord], tmp_path: Path
) -> None:
    sock, shim, _ = server
    values = {json.loads(run_shim(shim, sock, ["0"], tmp_path).stdout)["random"] for _ in range(3)}
    assert len(values) == 3


def test_a_malformed_request_is_dropped_and_the_server_keeps_serving(
    server: tuple[Path, Path, ProcessRecord], tmp_path: Path
) -> None:
    sock, shim, record = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
        bad.connect(str(sock))
        bad.sendall(b"garbage without descriptors")
    time.sleep(0.2)
    assert record.is_alive()
    assert run_shim(shim, sock, ["3"], tmp_path).returncode == 3
    assert "dropped a bad request" in (tmp_path / "server.log").read_text()


def test_shim_runs_the_real_command_when_no_server_answers(tmp_path: Path) -> None:
    shim = Path(forkserver.write_shim(str(tmp_path / "bin")))
    real = tmp_path / "real-clientapp"
    real.write_text('#!/bin/sh\necho "real $*"\nexit 4\n')
    real.chmod(0o755)
    done = run_shim(
        shim,
        tmp_path / "no-such.sock",
        ["--token", "t"],
        tmp_path,
        **{forkserver.FALLBACK_ENV: str(real)},
    )
    assert done.returncode == 4
    assert done.stdout.strip() == "real --token t"


def test_server_refuses_to_preload_app_code(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            forkserver.__file__,
            "serve",
            "--socket",
            str(tmp_path / "s.sock"),
            "--entry",
            "json:dumps",
            "--preload",
            "fedhet.config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode != 0
    assert "must not import app code" in done.stderr


def test_flower_waits_are_shortened_on_the_pinned_release() -> None:
    """Applied in a fresh interpreter (the patches are process-wide): every change lands."""
    code = """
import json, sys
sys.path.insert(0, sys.argv[1])
import forkserver
from flwr.supercore.inflatable import inflatable_utils
from flwr.supernode import start_client_internal as loop
keys = ("initial_backoff", "backoff_cap", "max_tries_per_object")
pick = lambda f: {k: f.__kwdefaults__[k] for k in keys}
out = {"client": forkserver._tune_flower(), "node": forkserver.tune_supernode(),
       "pull": pick(inflatable_utils.pull_and_inflate_object_from_tree),
       "node_pull": pick(loop.pull_objects)}
import time; t = time.monotonic(); loop.time.sleep(3); out["slept"] = time.monotonic() - t
print(json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(forkserver.__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert not [line for line in out["client"] + out["node"] if "NOT" in line], out
    first, cap = forkserver.FAST_BACKOFF_S
    for kw in (out["pull"], out["node_pull"]):
        assert (kw["initial_backoff"], kw["backoff_cap"]) == (first, cap)
        assert kw["max_tries_per_object"] is None
    assert out["slept"] < 1.0  # Flower's 3 s idle pull, capped


def test_an_installed_fab_is_found_by_its_hash_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    content = b"fab bytes"
    digest = hashlib.sha256(content).hexdigest()[:8]
    assert forkserver.installed_fab(content) is None  # nothing installed yet
    app = tmp_path / "apps" / f"fedhet.fedhet.0.1.0.{digest}"
    app.mkdir(parents=True)
    assert forkserver.installed_fab(content) is None  # an unfinished install: no pyproject
    (app / "pyproject.toml").write_text("[project]\n")
    assert forkserver.installed_fab(content) == app
    assert forkserver.installed_fab(b"other bytes") is None
    # two apps with the same short hash: ambiguous, so Flower's own install decides
    twin = tmp_path / "apps" / f"other.app.1.0.0.{digest}"
    twin.mkdir()
    (twin / "pyproject.toml").write_text("[project]\n")
    assert forkserver.installed_fab(content) is None
