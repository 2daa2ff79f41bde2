"""A simulation SuperLink that fedhet starts, tracks by PID and stops.

``flwr run`` against the ``:local:`` connection starts a background SuperLink that outlives it and
records no PID. fedhet starts its own instead, on free loopback ports, writes a SuperLink connection
named ``fedhet-sim`` into ``$FLWR_HOME/config.toml`` (Flower 1.41 keeps connections there, not in
pyproject.toml) and stops exactly the process group it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

CONNECTION = "fedhet-sim"
CONFIG_TOML = """[superlink]
default = "{name}"

[superlink.{name}]
address = "127.0.0.1:{port}"
insecure = true
"""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class SimSuperLink:
    """Start/stop a ``flower-superlink --simulation`` and its connection config.

    Parameters
    ----------
    flwr_home : Path
        Flower's home folder (``FLWR_HOME``) for this project.
    num_supernodes : int
        Simulated SuperNodes per run.
    num_cpus : float
        CPUs per simulated ClientApp (Ray resources).
    """

    def __init__(self, flwr_home: Path, num_supernodes: int = 10, num_cpus: float = 1.0) -> None:
        self.flwr_home = Path(flwr_home)
        self.num_supernodes = num_supernodes
        self.num_cpus = num_cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.state_file = self.flwr_home / "fedhet-sim.json"

    def federation_config(self) -> list[str]:
        """``flwr run`` arguments that size the simulation (Flower 1.41 ``--federation-config``)."""
        return [
            "--federation-config",
            f"num-supernodes={self.num_supernodes} "
            f"client-resources-num-cpus={int(self.num_cpus)} client-resources-num-gpus=0",
        ]

    def env(self) -> dict[str, str]:
        from fedhet.cli import flwr_env

        return flwr_env(self.flwr_home)

    def start(self, timeout: float = 60.0) -> SimSuperLink:
        """Start the SuperLink and wait until its HTTP API answers."""
        self.stop_stale()
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log_file = self.flwr_home / "fedhet-sim-superlink.log"
        cmd = [
            _bin("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.flwr_home / "fedhet-sim-state.db"),
            "--log-file",
            str(log_file),
        ]
        self.proc = subprocess.Popen(
            cmd,
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.state_file.write_text(json.dumps({"pid": self.proc.pid, "port": self.port}))
        (self.flwr_home / "config.toml").write_text(
            CONFIG_TOML.format(name=CONNECTION, port=self.port)
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"flower-superlink exited with {self.proc.returncode}; see {log_file}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=0.5).is_success:
                    log.info(
                        "simulation SuperLink pid %d on 127.0.0.1:%d", self.proc.pid, self.port
                    )
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"flower-superlink did not answer within {timeout:.0f} s; see {log_file}"
        )

    def stop_stale(self) -> None:
        """Stop a SuperLink a previous fedhet command started here and left running."""
        if not self.state_file.exists():
            return
        try:
            pid = int(json.loads(self.state_file.read_text())["pid"])
        except (ValueError, KeyError, json.JSONDecodeError):
            return
        _kill_group(pid)
        self.state_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the SuperLink and everything it spawned (its process group), by PID."""
        if self.proc is not None:
            _kill_group(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self.proc = None
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> SimSuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # only a group this module created (start_new_session) is ours to kill
        os.kill(pid, signal.SIGTERM)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
