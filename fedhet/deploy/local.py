"""A local fleet that runs: SuperLink on loopback, nginx front door, N SuperNodes, one host.

The implementation behind ``deploy/local/fleet.sh`` / ``python -m fedhet.deploy start``, the
deployment tests and ``benchmarks/deployment.py``. It drives Flower 1.41's own command line
tools (``flower-superlink``, ``flower-supernode``, ``flwr``) as a plant's IT department would,
so what works here works on real hosts; every process is started and stopped through
:mod:`fedhet.deploy.processes` (by recorded PID). Settings, paths and ``fleet.json`` are
:class:`fedhet.deploy.fleet.FleetState`.

Examples
--------
>>> fleet = LocalFleet(Path("/tmp/fleet"))  # doctest: +SKIP
>>> fleet.start(num_nodes=3)  # doctest: +SKIP
>>> fleet.wait_for_nodes(3)  # doctest: +SKIP
>>> fleet.submit_run(Path("/path/to/app"), "num-server-rounds=3")  # doctest: +SKIP
>>> fleet.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedhet.deploy import flwr_cli, forkserver
from fedhet.deploy.fleet import FleetState, NodeRecord, node_config_string
from fedhet.deploy.frontdoor import FrontDoor, FrontDoorSite
from fedhet.deploy.pki import write_node_key, write_pki
from fedhet.deploy.processes import (
    FleetError,
    ProcessRecord,
    console_script,
    find_free_port,
    spawn,
    terminate,
    wait_for_port,
    wait_port_closed,
    wait_until,
)

logger = logging.getLogger(__name__)


class LocalFleet(FleetState):
    """A SuperLink (loopback), its front door and N SuperNodes on one host, started and stopped.

    Same parameters as :class:`FleetState`. The ``flwr`` methods use the operator's own
    connection (loopback Control API, ``flwr_home``), never the devices' front door.
    """

    # -- flwr CLI (the operator's loopback connection) ------------------------------------

    def flwr(
        self,
        args: Sequence[str],
        timeout: float = 60.0,
        cwd: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI with the operator's Flower config.

        Runs in the state directory unless ``cwd`` is given: ``flwr`` rewrites a
        ``pyproject.toml`` with ``[tool.flwr.federations]`` in its working directory.

        Raises
        ------
        FleetError
            Non-zero exit status and ``check``.
        """
        return flwr_cli.run_flwr(
            args, self.flwr_home, cwd or self.state_dir, timeout=timeout, check=check
        )

    def list_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list --format json``: the SuperLink's view of its nodes."""
        return flwr_cli.list_nodes(self.connection_name, self.flwr_home, self.state_dir)

    def online_node_ids(self) -> set[int]:
        """Node ids the SuperLink currently reports as online."""
        return {
            int(node["node-id"])
            for node in self.list_nodes()
            if str(node.get("status", "")).lower() == "online"
        }

    def submit_run(self, app_dir: Path, run_config: str = "", timeout: float = 180.0) -> int:
        """``flwr run <app_dir> <connection> --format json -c <run_config>``; return the run id.

        Raises
        ------
        FleetError
            The CLI printed no run id.
        """
        run_id, result = flwr_cli.submit_run(
            app_dir, self.connection_name, self.flwr_home, run_config, timeout=timeout
        )
        if run_id is None:
            raise FleetError(f"flwr run did not start a run:\n{result.stdout}\n{result.stderr}")
        return run_id

    def run_status(self, run_id: int) -> str:
        """Status of a run from ``flwr ls --run-id`` (``unknown`` if the SuperLink is down)."""
        return flwr_cli.run_status(run_id, self.connection_name, self.flwr_home, self.state_dir)

    def wait_for_run(self, run_id: int, timeout: float, poll: float = 3.0) -> str:
        """Poll :meth:`run_status` until ``finished:*``; see :func:`flwr_cli.wait_for_run`."""
        return flwr_cli.wait_for_run(
            run_id, self.connection_name, self.flwr_home, self.state_dir, timeout, poll
        )

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> set[int]:
        """Wait until exactly ``count`` nodes are online; return their ids.

        Raises
        ------
        FleetError
            On timeout (the message carries the last listing).
        """
        online: set[int] = set()

        def _ready() -> bool:
            online.clear()
            online.update(self.online_node_ids())
            return len(online) == count

        if self.superlink is None:
            raise FleetError("the SuperLink is not started")
        try:
            wait_until(self.superlink, _ready, timeout, f"{count} online nodes")
        except FleetError as err:
            raise FleetError(f"{err}\nonline: {sorted(online)}") from None
        return set(online)

    # -- lifecycle ------------------------------------------------------------------------

    def start(
        self, num_nodes: int, num_partitions: int | None = None, timeout: float = 60.0
    ) -> None:
        """Generate certificates and keys; start the SuperLink, the front door and the nodes.

        A fresh SuperLink database is created (a previous one in the state directory is
        removed); certificates and node keys already in the state directory are reused.

        Parameters
        ----------
        num_nodes : int
            SuperNodes to start now.
        num_partitions : int | None
            ``num-partitions`` node-config value; defaults to ``num_nodes``. Set it higher to
            leave partitions for nodes added later with :meth:`add_node`.
        timeout : float
            Seconds to wait for the SuperLink to accept connections.
        """
        if self.state_file.exists():
            previous = FleetState.load(self.state_dir)
            if previous.running():
                raise FleetError(
                    f"a fleet from {self.state_dir} is still running; stop it first "
                    f"(python -m fedhet.deploy stop --state-dir {self.state_dir})"
                )
        if num_nodes < 0:
            raise ValueError("num_nodes must be >= 0")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = find_free_port(self.host)
        if self.superlink_port == 0:
            self.superlink_port = find_free_port("127.0.0.1") if self.front_door else self.port
        self.num_partitions = num_partitions if num_partitions is not None else num_nodes
        self.database.unlink(missing_ok=True)
        if not self.insecure:
            write_pki(self.pki_dir, [self.host])
        self._write_flower_config()
        self.start_superlink(timeout=timeout)
        if self.front_door:
            self.start_front_door()
        self.add_nodes(num_nodes)
        logger.info(
            "fleet up: devices -> %s, SuperLink %s, %d SuperNodes",
            self.address,
            self.superlink_address,
            num_nodes,
        )

    def superlink_command(self) -> list[str]:
        """The ``flower-superlink`` command line of this fleet (loopback behind a front door)."""
        host, port = self.superlink_address.rsplit(":", 1)
        command = [
            console_script("flower-superlink"),
            "--host",
            host,
            "--port",
            port,
            "--database",
            str(self.database),
            "--disable-runtime-dependency-installation",
        ]
        if self.insecure:
            command.append("--insecure")
        else:
            command += [
                "--ssl-ca-certfile",
                str(self.pki_dir / "ca.pem"),
                "--ssl-certfile",
                str(self.pki_dir / "server.pem"),
                "--ssl-keyfile",
                str(self.pki_dir / "server.key"),
            ]
        if self.auth:
            command.append("--enable-supernode-auth")
        return command

    def start_superlink(self, timeout: float = 60.0) -> ProcessRecord:
        """Start ``flower-superlink`` and wait until its port accepts connections."""
        record = spawn(
            self.superlink_command(),
            self.log_dir / "superlink.log",
            self.env("superlink"),
            self.state_dir,
        )
        self.superlink = record
        self.save()
        host, port = self.superlink_address.rsplit(":", 1)
        wait_until(
            record,
            lambda: wait_for_port(host, int(port), timeout=0.3),
            timeout,
            f"SuperLink on {self.superlink_address}",
        )
        return record

    def start_front_door(self, timeout: float = 20.0) -> ProcessRecord:
        """Start the nginx front door on :attr:`address` (forwards the Fleet API only)."""
        tls = not self.insecure
        site = FrontDoorSite(
            listen_host=self.host,
            listen_port=self.port,
            upstream_port=self.superlink_port,
            certificate=self.pki_dir / "server.pem" if tls else None,
            certificate_key=self.pki_dir / "server.key" if tls else None,
            ca_certificate=self.pki_dir / "ca.pem" if tls else None,
            max_body_mb=self.max_body_mb,
        )
        door = FrontDoor(self.frontdoor_dir, site)
        self.frontdoor = door.start(self.log_dir / "frontdoor.log", self.env("frontdoor"), timeout)
        self.save()
        return self.frontdoor

    def stop_superlink(self, sig: int = signal.SIGTERM) -> None:
        """Stop the SuperLink process (and its SuperExec / ServerApp children)."""
        if self.superlink is not None:
            terminate([self.superlink], sig)
            self.save()

    def restart_superlink(self, timeout: float = 60.0) -> ProcessRecord:
        """Stop the SuperLink and start it again on the same port and database.

        The front door keeps running; devices get 502 until the SuperLink is back and retry.
        """
        self.stop_superlink()
        host, port = self.superlink_address.rsplit(":", 1)
        if not wait_port_closed(host, int(port), timeout=10.0):
            raise FleetError(f"port {port} still busy after stopping the SuperLink")
        return self.start_superlink(timeout=timeout)

    def register_keys(self, public_keys: Sequence[Path], timeout: float = 60.0) -> list[int]:
        """Register public keys on the running SuperLink (operator's loopback connection).

        Returns
        -------
        list[int]
            Node ids, in the order of ``public_keys``.

        Raises
        ------
        FleetError
            A key was already registered (a fresh fleet never reuses keys) or timed out.
        """
        node_ids = flwr_cli.register_public_keys(
            public_keys, self.connection_name, self.flwr_home, self.state_dir, timeout
        )
        missing = [str(key) for key, node_id in node_ids.items() if node_id is None]
        if missing:
            raise FleetError(f"keys already registered on this SuperLink: {missing}")
        return [node_id for key in public_keys if (node_id := node_ids[key]) is not None]

    def supernode_command(self, node: NodeRecord, private_key: Path | None = None) -> list[str]:
        """The ``flower-supernode`` command line of ``node`` (connects to the front door)."""
        command = [
            console_script("flower-supernode"),
            "--superlink",
            self.address,
            "--node-config",
            node.node_config,
            "--host",
            "127.0.0.1",
            "--port",
            str(node.runtime_port),
        ]
        if self.insecure:
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(self.root_certificates)]
        key = private_key or (Path(node.private_key) if node.private_key else None)
        if key is not None:
            command += ["--auth-supernode-private-key", str(key)]
        return command

    def _new_node(self, index: int) -> NodeRecord:
        name = f"node-{index}"
        device_class, node_config = node_config_string(
            index, max(self.num_partitions, index + 1), self.extra_node_config
        )
        if self.base_port is not None:
            runtime_port = self.base_port + (2 if self.front_door else 1) + index
        else:
            runtime_port = find_free_port("127.0.0.1")
        sharing = max(1, self.num_partitions, index + 1)
        # this package imports nothing else of fedhet: the host's usable cores, by affinity
        threads = max(1, len(os.sched_getaffinity(0)) // sharing)
        # each ClientApp sets its torch/OpenMP threads from these (fedhet.client.runtime)
        node_config += f" threads={threads} supernodes-per-host={sharing}"
        node = NodeRecord(index, name, device_class, node_config, runtime_port, threads=threads)
        if self.auth:
            private, public = write_node_key(self.pki_dir / "nodes", name)
            node.private_key, node.public_key = str(private), str(public)
        return node

    def _node_env(self, node: NodeRecord) -> dict[str, str]:
        env = self.env(node.name)
        if node.threads is not None:
            # Read by torch in each ClientApp process: the nodes share this host's cores.
            env["OMP_NUM_THREADS"] = str(node.threads)
        if self.warm_start:
            warm_dir = self.state_dir / "warm" / node.name
            sock = warm_dir / "server.sock"
            if len(str(sock)) > 100:  # AF_UNIX paths are limited to 107 bytes
                sock = Path(tempfile.mkdtemp(prefix="fedhet-warm-")) / f"{node.name}.sock"
            shim = Path(forkserver.write_shim(str(warm_dir / "bin")))
            env[forkserver.SOCKET_ENV] = str(sock)
            env[forkserver.FALLBACK_ENV] = console_script("flwr-clientapp")
            # the SuperExec starts ``flwr-clientapp`` by name: the shim comes first on PATH
            env["PATH"] = os.pathsep.join([str(shim.parent), env["PATH"]])
        return env

    def _start_warm(self, nodes: Sequence[NodeRecord], timeout: float = 120.0) -> None:
        """Start the fork servers of ``nodes`` (all at once), then wait until each is ready."""
        started: list[tuple[NodeRecord, ProcessRecord, Path]] = []
        for node in nodes:
            env = self._node_env(node)
            command = [
                sys.executable,
                forkserver.__file__,
                "serve",
                "--socket",
                env[forkserver.SOCKET_ENV],
            ]
            sock = Path(env[forkserver.SOCKET_ENV])
            sock.unlink(missing_ok=True)  # a killed server leaves its socket behind
            log = self.log_dir / f"{node.name}-warm.log"
            node.warm = spawn(command, log, env, self.state_dir)
            started.append((node, node.warm, sock))
        for node, record, sock in started:
            wait_until(record, sock.exists, timeout, f"{node.name} fork server on {sock}")

    def _spawn_node(self, node: NodeRecord) -> None:
        command = self.supernode_command(node)
        if self.warm_start:  # the same arguments, through the tuned SuperNode entry
            command = [sys.executable, forkserver.__file__, "supernode", *command[1:]]
        node.process = spawn(
            command,
            self.log_dir / f"{node.name}.log",
            self._node_env(node),
            self.state_dir,
        )

    def add_nodes(self, count: int, register: bool = True) -> list[NodeRecord]:
        """Create, register (with authentication) and start ``count`` more SuperNodes.

        Node ``i`` gets ``partition-id=i``; keys are registered concurrently before any node
        starts, so every node is known to the SuperLink when it connects.

        Parameters
        ----------
        count : int
            Number of nodes.
        register : bool
            Register the keys first. False starts nodes the SuperLink does not know, which an
            authenticating SuperLink must refuse (the SuperNode exits with code 305).

        Returns
        -------
        list[NodeRecord]
            The new nodes.
        """
        new_nodes = [self._new_node(len(self.nodes) + k) for k in range(count)]
        if self.auth and register and new_nodes:
            keys = [Path(str(node.public_key)) for node in new_nodes]
            for node, node_id in zip(new_nodes, self.register_keys(keys), strict=True):
                node.node_id = node_id
        if self.warm_start:
            self._start_warm(new_nodes)
        for node in new_nodes:
            self._spawn_node(node)
            self.nodes.append(node)
        self.save()
        return new_nodes

    def add_node(self, register: bool = True) -> NodeRecord:
        """Create, register (with authentication) and start one more SuperNode."""
        return self.add_nodes(1, register=register)[0]

    def node(self, index: int) -> NodeRecord:
        """The node with this index."""
        for node in self.nodes:
            if node.index == index:
                return node
        raise FleetError(f"no node {index}; nodes are {[n.index for n in self.nodes]}")

    def kill_node(self, index: int) -> None:
        """SIGKILL SuperNode ``index`` and its ClientApp processes (a device losing power)."""
        node = self.node(index)
        terminate([p for p in (node.process, node.warm) if p is not None], signal.SIGKILL)
        self.save()

    def restart_node(self, index: int) -> NodeRecord:
        """Start SuperNode ``index`` again with the same key and node config."""
        node = self.node(index)
        if node.process is not None and node.process.is_alive():
            raise FleetError(f"{node.name} is still running")
        if self.warm_start:
            self._start_warm([node])
        self._spawn_node(node)
        self.save()
        return node

    def stop(self) -> None:
        """Stop every SuperNode, the SuperLink, then the front door; only recorded PIDs."""
        terminate([node.process for node in self.nodes if node.process is not None])
        terminate([node.warm for node in self.nodes if node.warm is not None])
        terminate([record for record in (self.superlink, self.frontdoor) if record is not None])
        self.save()
        logger.info("fleet in %s stopped", self.state_dir)

    def describe(self) -> str:
        """Human-readable summary: processes, connection and how to run and stop."""
        door = self.frontdoor
        lines = [
            f"devices     {self.address}  "
            + (
                f"front door pid {door.pid if door else '-'} (Fleet API only)"
                if self.front_door
                else "no front door: every SuperLink API is exposed"
            ),
            f"SuperLink   {self.superlink_address}  "
            f"pid {self.superlink.pid if self.superlink else '-'}  "
            f"TLS {'off' if self.insecure else 'on'}  node auth {'on' if self.auth else 'off'}",
            f"database    {self.database}",
        ]
        for node in self.nodes:
            alive = node.process is not None and node.process.is_alive()
            lines.append(
                f"{node.name:<11} pid {node.process.pid if node.process else '-'} "
                f"({'running' if alive else 'stopped'})  node-id {node.node_id}  "
                f"runtime port {node.runtime_port}  [{node.node_config}]"
                + (f"  warm-start pid {node.warm.pid}" if node.warm else "")
            )
        lines += [
            f"logs        {self.log_dir}",
            f"state       {self.state_file}",
            "",
            "Run the app against this fleet (operator, on this host; from the app folder):",
            f"  {self.run_command('.')}",
            f"  {self._cli_prefix()} flwr ls {self.connection_name} --format json",
            f"  {self._cli_prefix()} flwr supernode list {self.connection_name}",
            "Stop it:",
            f"  python -m fedhet.deploy stop --state-dir {shlex.quote(str(self.state_dir))}",
        ]
        return "\n".join(lines)


@contextlib.contextmanager
def local_fleet(state_dir: Path, num_nodes: int, **kwargs: Any) -> Iterator[LocalFleet]:
    """Context manager: a started :class:`LocalFleet` that is always stopped on exit."""
    fleet = LocalFleet(state_dir, **kwargs)
    try:
        fleet.start(num_nodes)
        yield fleet
    finally:
        fleet.stop()
