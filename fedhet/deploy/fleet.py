"""State of a local fleet: settings, paths, connection info, process records, ``fleet.json``.

A local fleet (:class:`fedhet.deploy.local.LocalFleet`) is a SuperLink on loopback, an nginx
front door and N SuperNodes on one host. Trust boundary (as on a plant, see ``deploy/systemd/``):
the SuperLink binds ``127.0.0.1`` only (its Fleet, Control and Runtime APIs share one port); the
SuperNodes connect to the front door (:mod:`fedhet.deploy.frontdoor`), which forwards
``/v1/fleet/*`` and ``/health`` and answers 403 to everything else; the operator's ``flwr`` CLI
uses its own connection to the loopback port.

``fleet.json`` in the state folder records every PID (with its start time), port and key path:
``address`` is what devices connect to (the front door), ``root_certificates`` the CA they get,
``flwr_home`` / ``connection_name`` the operator's loopback connection. Other processes (``python
-m fedhet.deploy stop``) rebuild the fleet from it.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from fedhet.deploy import flwr_cli
from fedhet.deploy.frontdoor import DEFAULT_MAX_BODY_MB
from fedhet.deploy.processes import FleetError, ProcessRecord, flower_env

logger = logging.getLogger(__name__)

#: Device classes given to local SuperNodes in turn (a subset of fedhet.plan.DEVICE_CLASSES;
#: this package imports nothing else of fedhet, a unit test checks they agree).
LOCAL_FLEET_CLASSES: tuple[str, ...] = ("strong", "medium", "weak")
#: Declared uplink bandwidth per device class (Mbit/s).
BANDWIDTH_MBPS: dict[str, float] = {"strong": 100.0, "medium": 20.0, "weak": 2.0}
#: Name of the operator's SuperLink connection written to the fleet's Flower config.
CONNECTION_NAME = "fedhet-local"
#: Name of the fleet's state file inside the state directory.
STATE_FILE = "fleet.json"
#: Seconds between a SuperExec's polls for new ServerApp/ClientApp tasks (Flower's default: 1).
TASK_POLL_INTERVAL_S = 0.2


@dataclass
class NodeRecord:
    """One SuperNode of a local fleet.

    Attributes
    ----------
    index : int
        Position in the fleet (``node-<index>``).
    name : str
        ``node-<index>``; also the ``device-id`` node-config value.
    device_class : str
        ``strong``, ``medium`` or ``weak``.
    node_config : str
        The ``--node-config`` string.
    runtime_port : int
        Port of the SuperNode's local Runtime API.
    private_key : str | None
        Path of the authentication private key (None without node authentication).
    public_key : str | None
        Path of the public key registered on the SuperLink.
    node_id : int | None
        Node id returned by ``flwr supernode register``.
    process : ProcessRecord | None
        The ``flower-supernode`` process, None before start.
    threads : int | None
        ``OMP_NUM_THREADS`` of its ClientApps: the host's cores divided by the SuperNodes
        sharing it.
    warm : ProcessRecord | None
        Its warm-start fork server (:mod:`fedhet.deploy.forkserver`), None without warm start.
    """

    index: int
    name: str
    device_class: str
    node_config: str
    runtime_port: int
    private_key: str | None = None
    public_key: str | None = None
    node_id: int | None = None
    process: ProcessRecord | None = None
    threads: int | None = None
    warm: ProcessRecord | None = None


def default_state_dir() -> Path:
    """``deploy/local/.certs`` of the source checkout, else ``./.fedhet/deploy``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "deploy" / "local").is_dir():
        return repo / "deploy" / "local" / ".certs"
    return Path.cwd() / ".fedhet" / "deploy"


def node_config_string(index: int, num_partitions: int, extra: str = "") -> tuple[str, str]:
    """Node config of local SuperNode ``index``.

    Device classes cycle strong/medium/weak; ``partition-id=index``,
    ``num-partitions=num_partitions``, ``device-id="node-<index>"``.

    Returns
    -------
    tuple[str, str]
        (device class, ``--node-config`` string).
    """
    device_class = LOCAL_FLEET_CLASSES[index % len(LOCAL_FLEET_CLASSES)]
    parts = [
        f"partition-id={index}",
        f"num-partitions={num_partitions}",
        f'device-id="node-{index}"',
        f'device-class="{device_class}"',
        f"bandwidth-mbps={BANDWIDTH_MBPS[device_class]}",
    ]
    if extra.strip():
        parts.append(extra.strip())
    return device_class, " ".join(parts)


class FleetState:
    """Settings, paths, processes and ``fleet.json`` of a local fleet (no process control here).

    :class:`fedhet.deploy.local.LocalFleet` adds starting and stopping; this class is what
    ``fleet.json`` holds.

    Parameters
    ----------
    state_dir : Path
        Holds certificates, keys, logs, the SuperLink database, the operator's Flower config
        (``flwr-home/config.toml``), the front door's nginx files and ``fleet.json``.
    insecure : bool
        No TLS (implies no node authentication).
    auth : bool
        SuperNode authentication (needs TLS).
    host : str
        Address devices connect to (the front door binds it).
    base_port : int | None
        Device-facing port P; the SuperLink uses P+1 on loopback and SuperNode ``i`` P+2+i
        for its Runtime API (without a front door: SuperLink P, node ``i`` P+1+i). None picks
        free ports.
    extra_node_config : str
        Appended to every node's ``--node-config`` (e.g. ``data-path="/data"``).
    front_door : bool
        Put the SuperLink behind the nginx front door (default). False exposes all its APIs
        on ``host`` (development only).
    max_body_mb : int
        Largest request body the front door accepts.
    warm_start : bool
        Start each SuperNode with a fork server that keeps torch/NumPy/Flower imported and
        forks one ClientApp per message (:mod:`fedhet.deploy.forkserver`). Off by default.

    """

    def __init__(
        self,
        state_dir: Path,
        *,
        insecure: bool = False,
        auth: bool = True,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        extra_node_config: str = "",
        front_door: bool = True,
        max_body_mb: int = DEFAULT_MAX_BODY_MB,
        warm_start: bool = False,
    ) -> None:
        if insecure and auth:
            logger.warning("--insecure: SuperNode authentication needs TLS, turning it off")
            auth = False
        self.state_dir = state_dir.resolve()
        self.insecure = insecure
        self.auth = auth
        self.host = host
        self.base_port = base_port
        self.extra_node_config = extra_node_config
        self.front_door = front_door
        self.max_body_mb = max_body_mb
        self.warm_start = warm_start
        self.port: int = base_port if base_port is not None else 0
        self.superlink_port: int = 0
        if base_port is not None:
            self.superlink_port = base_port + 1 if front_door else base_port
        self.num_partitions = 0
        self.superlink: ProcessRecord | None = None
        self.frontdoor: ProcessRecord | None = None
        self.nodes: list[NodeRecord] = []

    # -- paths and connection info --------------------------------------------------------

    @property
    def pki_dir(self) -> Path:
        """Certificates and node keys."""
        return self.state_dir / "pki"

    @property
    def log_dir(self) -> Path:
        """One log file per process."""
        return self.state_dir / "logs"

    @property
    def database(self) -> Path:
        """SQLite state of the SuperLink (runs, registered nodes)."""
        return self.state_dir / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the operator's ``flwr`` CLI (loopback connection)."""
        return self.state_dir / "flwr-home"

    @property
    def root_certificates(self) -> Path | None:
        """CA certificate devices and the CLI verify with (None if insecure)."""
        return None if self.insecure else self.pki_dir / "ca.pem"

    @property
    def address(self) -> str:
        """``host:port`` devices connect to: the front door (Fleet API only)."""
        return f"{self.host}:{self.port}"

    @property
    def superlink_address(self) -> str:
        """``host:port`` of the SuperLink itself: loopback behind a front door."""
        return f"127.0.0.1:{self.superlink_port}" if self.front_door else self.address

    @property
    def connection_name(self) -> str:
        """The operator's connection name, for ``flwr run <app> <name>``."""
        return CONNECTION_NAME

    @property
    def state_file(self) -> Path:
        """JSON with every PID, port and key path."""
        return self.state_dir / STATE_FILE

    @property
    def frontdoor_dir(self) -> Path:
        """The front door's generated ``nginx.conf``, temp folders and logs."""
        return self.state_dir / "frontdoor"

    def env(self, role: str) -> dict[str, str]:
        """Environment of a Flower process: offline switches and its own ``FLWR_HOME``.

        Parameters
        ----------
        role : str
            ``cli`` for the ``flwr`` CLI, otherwise a process name (``superlink``, ``node-0``).
        """
        home = self.flwr_home if role == "cli" else self.state_dir / "homes" / role
        env = flower_env(home)
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(TASK_POLL_INTERVAL_S)
        return env

    def connection_toml(self) -> str:
        """The operator's ``[superlink.<name>]`` table (loopback Control API)."""
        return flwr_cli.connection_toml(
            self.connection_name, self.superlink_address, self.root_certificates
        )

    def run_command(self, app_dir: str = ".") -> str:
        """Shell command that submits the Flower app in ``app_dir`` to this fleet."""
        return f"{self._cli_prefix()} flwr run {app_dir} {self.connection_name}"

    def _cli_prefix(self) -> str:
        return f"FLWR_HOME={shlex.quote(str(self.flwr_home))}"

    def _write_flower_config(self) -> None:
        flwr_cli.write_flower_config(
            self.flwr_home, self.connection_name, self.superlink_address, self.root_certificates
        )
        (self.state_dir / "connection.toml").write_text(self.connection_toml(), encoding="utf-8")

    # -- state file -----------------------------------------------------------------------

    def save(self) -> None:
        """Write ``fleet.json`` (atomically)."""
        state: dict[str, Any] = {
            "state_dir": str(self.state_dir),
            "insecure": self.insecure,
            "auth": self.auth,
            "host": self.host,
            "port": self.port,
            "base_port": self.base_port,
            "address": self.address,
            "superlink_address": self.superlink_address,
            "superlink_port": self.superlink_port,
            "front_door": self.front_door,
            "max_body_mb": self.max_body_mb,
            "warm_start": self.warm_start,
            "extra_node_config": self.extra_node_config,
            "num_partitions": self.num_partitions,
            "connection_name": self.connection_name,
            "flwr_home": str(self.flwr_home),
            "root_certificates": str(self.root_certificates) if self.root_certificates else None,
            "database": str(self.database),
            "superlink": asdict(self.superlink) if self.superlink else None,
            "frontdoor": asdict(self.frontdoor) if self.frontdoor else None,
            "nodes": [asdict(node) for node in self.nodes],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, state_dir: Path) -> Self:
        """Rebuild a fleet from its ``fleet.json`` (to stop or change it from another process)."""
        path = state_dir / STATE_FILE
        if not path.exists():
            raise FleetError(
                f"no fleet state in {path}; was the fleet started with this state dir?"
            )
        state = json.loads(path.read_text(encoding="utf-8"))
        fleet = cls(
            Path(state["state_dir"]),
            insecure=state["insecure"],
            auth=state["auth"],
            host=state["host"],
            base_port=state["base_port"],
            extra_node_config=state["extra_node_config"],
            front_door=bool(state.get("front_door", False)),
            max_body_mb=int(state.get("max_body_mb", DEFAULT_MAX_BODY_MB)),
            warm_start=bool(state.get("warm_start", False)),
        )
        fleet.port = int(state["port"])
        fleet.superlink_port = int(state.get("superlink_port", state["port"]))
        fleet.num_partitions = int(state["num_partitions"])
        fleet.superlink = ProcessRecord(**state["superlink"]) if state["superlink"] else None
        door = state.get("frontdoor")
        fleet.frontdoor = ProcessRecord(**door) if door else None
        for raw in state["nodes"]:
            proc, warm = raw.pop("process"), raw.pop("warm", None)
            fleet.nodes.append(
                NodeRecord(
                    **raw,
                    process=ProcessRecord(**proc) if proc else None,
                    warm=ProcessRecord(**warm) if warm else None,
                )
            )
        return fleet

    def processes(self) -> list[ProcessRecord]:
        """Processes this fleet started (ended ones included)."""
        records = [self.superlink, self.frontdoor] + [node.process for node in self.nodes]
        records += [node.warm for node in self.nodes]
        return [record for record in records if record is not None]

    def running(self) -> bool:
        """Whether any process of this fleet is still alive."""
        return any(record.is_alive() for record in self.processes())
