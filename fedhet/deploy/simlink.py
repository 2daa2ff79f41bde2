"""A simulation SuperLink that fedhet starts, tracks by PID and stops.

``flwr run`` against the ``:local:`` connection starts a background SuperLink that outlives it
and records no PID. fedhet starts its own instead (``fedhet demo``, the ``flwr run`` tests, the
benchmarks): ``flower-superlink --simulation`` on a free loopback port, a SuperLink connection
named ``fedhet-sim`` in ``$FLWR_HOME/config.toml`` (Flower 1.41 keeps connections there, not in
pyproject.toml), its :class:`~fedhet.deploy.processes.ProcessRecord` in
``$FLWR_HOME/fedhet-sim.json``, and it stops exactly that process and what it started.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import httpx

from fedhet.deploy.flwr_cli import write_flower_config
from fedhet.deploy.processes import (
    FleetError,
    ProcessRecord,
    console_script,
    find_free_port,
    flower_env,
    spawn,
    terminate,
    wait_for_port,
    wait_until,
)

log = logging.getLogger(__name__)

#: Connection name written to ``$FLWR_HOME/config.toml``.
CONNECTION = "fedhet-sim"
#: Seconds to wait for an existing Ray cluster's GCS port to accept a connection.
RAY_CONNECT_TIMEOUT_S = 5.0


def parse_ray_address(address: str) -> tuple[str, int]:
    """Split a Ray cluster address ``host:port`` (the GCS of ``ray start --head``).

    Raises
    ------
    ValueError
        Not ``host:port`` with a port in 1..65535 (Ray client ``ray://`` addresses, ``auto``
        and ``local`` are not accepted: the simulation joins a cluster's GCS directly).
    """
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"--ray-address {address!r}: expected host:port of a Ray cluster's GCS "
            "(the address `ray start --head` prints), e.g. 127.0.0.1:6380"
        )
    return host.strip("[]"), int(port)


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
    ray_address : str, optional
        An existing Ray cluster (``host:port`` of its GCS, as ``ray start --head`` prints) for the
        simulation to join instead of starting its own Ray on this host. Flower 1.41's backend
        init args have no address, so it reaches ``ray.init`` as ``RAY_ADDRESS`` in the
        SuperLink's environment (inherited by ``flwr-simulation``). Checked on construction
        (``ValueError`` when not ``host:port``) and on :meth:`start` (``FleetError`` when nothing
        answers there), so a wrong address fails at once instead of in ``ray.init`` inside the run.
    """

    def __init__(
        self,
        flwr_home: Path,
        num_supernodes: int = 10,
        num_cpus: float = 1.0,
        ray_address: str | None = None,
    ) -> None:
        self.flwr_home = Path(flwr_home)
        self.ray_address = ray_address
        if ray_address:
            parse_ray_address(ray_address)
        self.num_supernodes = num_supernodes
        self.num_cpus = num_cpus
        self.record: ProcessRecord | None = None
        self.port = 0
        self.state_file = self.flwr_home / "fedhet-sim.json"

    @property
    def connection(self) -> str:
        """Connection name for ``flwr run <app> <connection>``."""
        return CONNECTION

    def federation_config(self) -> list[str]:
        """``flwr run`` arguments that size the simulation (Flower 1.41 ``--federation-config``)."""
        return [
            "--federation-config",
            f"num-supernodes={self.num_supernodes} "
            f"client-resources-num-cpus={int(self.num_cpus)} client-resources-num-gpus=0",
        ]

    def env(self) -> dict[str, str]:
        """Environment of the SuperLink and of ``flwr`` commands against it."""
        env = flower_env(self.flwr_home)
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        return env

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=0.5).is_success
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 60.0) -> SimSuperLink:
        """Start the SuperLink and wait until its HTTP API answers.

        Raises
        ------
        FleetError
            It exited or did not answer within ``timeout`` seconds (log tail included), or
            ``ray_address`` is set and no Ray cluster accepts connections there.
        """
        if self.ray_address:
            host, port = parse_ray_address(self.ray_address)
            if not wait_for_port(host, port, RAY_CONNECT_TIMEOUT_S):
                raise FleetError(
                    f"no Ray cluster answers at {self.ray_address} (nothing accepted a "
                    f"connection within {RAY_CONNECT_TIMEOUT_S:.0f}s): start it with "
                    "`ray start --head --port <port>` or fix --ray-address"
                )
        self.stop_stale()
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = find_free_port()
        command = [
            console_script("flower-superlink"),
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
        ]
        self.record = spawn(
            command, self.flwr_home / "fedhet-sim-superlink.log", self.env(), self.flwr_home
        )
        self.state_file.write_text(json.dumps({**asdict(self.record), "port": self.port}))
        write_flower_config(self.flwr_home, CONNECTION, f"127.0.0.1:{self.port}", None)
        try:
            wait_until(self.record, self._healthy, timeout, "simulation SuperLink")
        except FleetError:
            self.stop()
            raise
        log.info("simulation SuperLink pid %d on 127.0.0.1:%d", self.record.pid, self.port)
        return self

    def stop_stale(self) -> None:
        """Stop a SuperLink a previous fedhet command started here and left running.

        Only the recorded PID with its recorded start time is signalled (never a recycled PID).
        """
        if not self.state_file.exists():
            return
        try:
            raw = json.loads(self.state_file.read_text())
            stale = ProcessRecord(
                int(raw["pid"]), float(raw["create_time"]), list(raw["command"]), str(raw["log"])
            )
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            log.warning("ignoring unreadable %s", self.state_file)
        else:
            terminate([stale])
        self.state_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the SuperLink and everything it spawned, by recorded PID."""
        if self.record is not None:
            terminate([self.record])
            self.record = None
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> SimSuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
