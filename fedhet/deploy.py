"""Real Flower deployments: certificates, node keys and a local SuperLink + SuperNode fleet.

This module is the implementation behind ``deploy/local/fleet.sh`` and the deployment tests.
It drives the Flower 1.41 command line tools only (``flower-superlink``, ``flower-supernode``,
``flwr``), the same way a plant's IT department would, so what works here works on real hosts.

What Flower 1.41 expects (read from the installed ``flwr`` package, not from older docs)
---------------------------------------------------------------------------------------
* The SuperLink serves the Fleet, Control and Runtime APIs over HTTPS on **one** port
  (``--host`` / ``--port``, default 8000). TLS needs ``--ssl-ca-certfile``, ``--ssl-certfile`` and
  ``--ssl-keyfile``; ``--database FILE`` keeps runs and registered nodes across restarts.
* With the default ``--isolation subprocess`` the SuperLink starts its own ``flower-superexec``,
  which connects back to ``127.0.0.1:<port>`` with TLS, so the server certificate must always
  carry ``127.0.0.1`` and ``localhost`` in its subject alternative names.
* SuperNode authentication (``--enable-supernode-auth``, TLS only) uses one **NIST EC key pair
  per SuperNode in OpenSSH format** (we use P-384). The SuperNode gets the private key with
  ``--auth-supernode-private-key``; the public key is registered on the running SuperLink with
  ``flwr supernode register <key.pub> <connection>`` (stored in the SuperLink database). There
  is no CSV of public keys any more (``--auth-list-public-keys`` is rejected).
* The ``flwr`` CLI no longer reads federations from ``pyproject.toml``: SuperLink connections
  live in ``$FLWR_HOME/config.toml`` as ``[superlink.<name>]`` with ``address`` (Control API,
  i.e. the SuperLink port) and ``root-certificates`` (or ``insecure = true``), and a run is
  started with ``flwr run <app-dir> <name>``. If ``pyproject.toml`` still holds a
  ``[tool.flwr.federations]`` table, ``flwr run`` migrates it and comments it out in place.
* Every SuperNode also serves a local Runtime API for its ClientApp processes (``--port``,
  default 9094), so several SuperNodes on one host need distinct ports.

Examples
--------
Local fleet (TLS + node authentication)::

    python -m fedhet.deploy start --nodes 3
    FLWR_HOME=deploy/local/.certs/flwr-home flwr run . fedhet-local
    python -m fedhet.deploy stop

Certificates and keys for a real plant::

    python -m fedhet.deploy certs --out pki --hosts superlink.plant.lan 10.0.0.5 --nodes 12
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

#: Environment every Flower process gets on an offline host.
OFFLINE_ENV: dict[str, str] = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}
#: Device classes given to local SuperNodes in turn.
DEVICE_CLASSES: tuple[str, ...] = ("strong", "medium", "weak")
#: Declared uplink bandwidth per device class (Mbit/s).
BANDWIDTH_MBPS: dict[str, float] = {"strong": 100.0, "medium": 20.0, "weak": 2.0}
#: Name of the SuperLink connection written to the fleet's Flower config.
CONNECTION_NAME = "fedhet-local"
#: Name of the fleet's state file inside the state directory.
STATE_FILE = "fleet.json"
#: Hosts always put into a server certificate (the SuperLink's own SuperExec uses them).
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")

_CERT_DAYS = 825
_STOP_GRACE_S = 10.0


# --------------------------------------------------------------------------------------------
# Certificates and keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PkiPaths:
    """Files written by :func:`write_pki`.

    Attributes
    ----------
    ca_cert : Path
        CA certificate (PEM). Every SuperNode and every ``flwr`` CLI user needs it.
    ca_key : Path
        CA private key (PEM). Keep it offline; it is only needed to issue new server certs.
    server_cert : Path
        SuperLink certificate (PEM) signed by the CA.
    server_key : Path
        SuperLink private key (PEM).
    node_keys : dict[str, tuple[Path, Path]]
        Per node name: (private key, public key), both OpenSSH format, EC P-384.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: dict[str, tuple[Path, Path]] = field(default_factory=dict)


def _new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_ca(
    common_name: str = "fedhet CA",
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a self-signed certificate authority.

    Parameters
    ----------
    common_name : str
        Subject common name of the CA.

    Returns
    -------
    tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
        The CA key (EC P-384) and its certificate.
    """
    key = _new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *LOOPBACK_HOSTS]:
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def generate_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a SuperLink TLS certificate signed by ``ca_cert``.

    Parameters
    ----------
    ca_key : ec.EllipticCurvePrivateKey
        CA private key used to sign.
    ca_cert : x509.Certificate
        CA certificate (issuer).
    hosts : Sequence[str]
        Host names and IP addresses the SuperLink is reached under. ``localhost`` and
        ``127.0.0.1`` are always added, because the SuperLink's own SuperExec connects to
        the loopback address.

    Returns
    -------
    tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
        Server key (EC P-384) and certificate.
    """
    key = _new_ec_key()
    common_name = hosts[0] if hosts else "localhost"
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def generate_node_keypair() -> tuple[bytes, bytes]:
    """Create a SuperNode authentication key pair.

    Returns
    -------
    tuple[bytes, bytes]
        (private key, public key), OpenSSH encoded, EC P-384: what
        ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register``
        accept.
    """
    key = _new_ec_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_node_key(out_dir: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.key`` and ``<out_dir>/<name>.pub`` for one SuperNode.

    Parameters
    ----------
    out_dir : Path
        Folder for the key files (created if missing).
    name : str
        Node name, used as file stem.
    overwrite : bool
        Replace an existing key pair; by default an existing pair is kept.

    Returns
    -------
    tuple[Path, Path]
        Private and public key paths.
    """
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if overwrite or not (private_path.exists() and public_path.exists()):
        private, public = generate_node_keypair()
        _write_private(private_path, private)
        public_path.write_bytes(public)
    return private_path, public_path


def write_pki(
    out_dir: Path,
    hosts: Sequence[str],
    node_names: Sequence[str] = (),
    overwrite: bool = False,
) -> PkiPaths:
    """Write a CA, a SuperLink certificate and SuperNode key pairs.

    Layout: ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``, ``nodes/<name>.key|.pub``.
    Existing CA and server files are kept unless ``overwrite`` is set, so re-running adds
    node keys without invalidating certificates already deployed.

    Parameters
    ----------
    out_dir : Path
        Output folder (created with mode 0700).
    hosts : Sequence[str]
        Names and addresses the SuperLink is reached under (loopback is always added).
    node_names : Sequence[str]
        One key pair is written per name.
    overwrite : bool
        Regenerate everything.

    Returns
    -------
    PkiPaths
        Paths of everything written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        out_dir.chmod(0o700)
    paths = PkiPaths(
        ca_cert=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
    )
    if overwrite or not (paths.ca_cert.exists() and paths.ca_key.exists()):
        ca_key, ca_cert = generate_ca()
        _write_private(paths.ca_key, _key_pem(ca_key))
        paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        overwrite = True  # a new CA invalidates the old server certificate
    else:
        loaded = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{paths.ca_key} is not an EC private key")
        ca_key = loaded
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    if overwrite or not (paths.server_cert.exists() and paths.server_key.exists()):
        server_key, server_cert = generate_server_certificate(ca_key, ca_cert, hosts)
        _write_private(paths.server_key, _key_pem(server_key))
        paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    for name in node_names:
        paths.node_keys[name] = write_node_key(out_dir / "nodes", name, overwrite=overwrite)
    logger.info("PKI in %s: CA, server cert for %s, %d node keys", out_dir, hosts, len(node_names))
    return paths


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class ProcessRecord:
    """A process this module started.

    Attributes
    ----------
    pid : int
        Process id.
    create_time : float
        Start time reported by the OS; guards against killing a recycled PID.
    command : list[str]
        Full command line.
    log : str
        File receiving stdout and stderr.
    """

    pid: int
    create_time: float
    command: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        """Return the live process, or None if it ended or the PID now belongs to another."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1e-3:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                # Reap it if it is our child: until then its SuperExec (watching
                # --parent-pid) sees the PID as alive and keeps running.
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(self.pid, os.WNOHANG)
                return None
            return proc
        except psutil.Error:
            return None

    def is_alive(self) -> bool:
        """Whether the process is still running."""
        return self.process() is not None


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


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Wait until a TCP connection to ``host:port`` succeeds.

    Returns
    -------
    bool
        True if the port accepted a connection before ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.2)
    return False


def console_script(name: str) -> str:
    """Path of a console script, preferring the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} not found; is flwr installed?")
    return found


def spawn(
    command: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path
) -> ProcessRecord:
    """Start a detached process (own session) with stdout and stderr to ``log_path``.

    Parameters
    ----------
    command : Sequence[str]
        Program and arguments.
    log_path : Path
        Log file (appended to).
    env : Mapping[str, str]
        Full environment of the process.
    cwd : Path
        Working directory.

    Returns
    -------
    ProcessRecord
        PID, start time, command and log of the new process.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        log_file.write(f"\n# {time.strftime('%F %T')} $ {shlex.join(command)}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(
            list(command),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        create_time = 0.0
    logger.info("started pid %d: %s", popen.pid, shlex.join(command))
    return ProcessRecord(popen.pid, create_time, list(command), str(log_path))


def terminate(
    records: Sequence[ProcessRecord], sig: int = signal.SIGTERM, grace: float = _STOP_GRACE_S
) -> None:
    """End processes we started, and whatever they started, by PID.

    Descendants (SuperExec, ServerApp/ClientApp processes) are collected before the signal
    is sent, all processes are signalled at once, and each one still running after
    ``grace`` seconds gets SIGKILL. Records whose process ended, or whose PID now belongs
    to another process, are skipped.

    Parameters
    ----------
    records : Sequence[ProcessRecord]
        The processes to end.
    sig : int
        First signal (SIGTERM for a clean stop, SIGKILL for a simulated crash).
    grace : float
        Seconds to wait for a clean exit before SIGKILL.
    """
    family: list[psutil.Process] = []
    for record in records:
        proc = record.process()
        if proc is None:
            continue
        family.append(proc)
        with contextlib.suppress(psutil.Error):
            family.extend(proc.children(recursive=True))
    if not family:
        return
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.send_signal(sig)
    _, alive = psutil.wait_procs(family, timeout=grace if sig != signal.SIGKILL else 2.0)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            logger.warning("pid %d still running after %.0fs, sending SIGKILL", member.pid, grace)
            member.kill()
    psutil.wait_procs(alive, timeout=2.0)
    for record in records:  # reap direct children of this process, if any
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(record.pid, os.WNOHANG)


# --------------------------------------------------------------------------------------------
# flwr CLI: connections and node registration
# --------------------------------------------------------------------------------------------


class FleetError(RuntimeError):
    """A deployment operation failed (process exited, timeout, CLI error)."""


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: offline switches, ``FLWR_HOME``, venv on ``PATH``.

    SuperLink and SuperNode start ``flower-superexec`` and ``flwr-*app`` by name, so the
    folder holding the Flower console scripts is put first on ``PATH``.
    """
    env = {**(os.environ if base is None else base), **OFFLINE_ENV}
    bin_dir = str(Path(console_script("flower-superlink")).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    flwr_home.mkdir(parents=True, exist_ok=True)
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["COLUMNS"] = "200"  # keep rich from wrapping CLI output
    return env


def connection_toml(name: str, address: str, root_certificates: Path | None) -> str:
    """A ``[superlink.<name>]`` table of the Flower config (``$FLWR_HOME/config.toml``).

    Parameters
    ----------
    name : str
        Connection name, used as ``flwr run <app> <name>``.
    address : str
        ``host:port`` of the SuperLink (Control API; same port as Fleet API in 1.41).
    root_certificates : Path | None
        CA certificate; None writes ``insecure = true``.
    """
    lines = [f"[superlink.{name}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates.resolve()}"')
    return "\n".join(lines) + "\n"


def write_flower_config(
    flwr_home: Path, name: str, address: str, root_certificates: Path | None
) -> Path:
    """Write ``<flwr_home>/config.toml`` with one connection, made the default.

    Returns
    -------
    Path
        The config file.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    text = f'[superlink]\ndefault = "{name}"\n\n' + connection_toml(
        name, address, root_certificates
    )
    path.write_text(text, encoding="utf-8")
    return path


def run_flwr(
    args: Sequence[str],
    flwr_home: Path,
    cwd: Path,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run the ``flwr`` CLI with ``FLWR_HOME=flwr_home``.

    Run it in a folder without a ``pyproject.toml`` unless it is ``flwr run``: ``flwr``
    migrates a ``[tool.flwr.federations]`` table of a ``pyproject.toml`` in its working
    directory into the Flower config and comments it out in place.

    Parameters
    ----------
    args : Sequence[str]
        Arguments after ``flwr``.
    flwr_home : Path
        Folder with ``config.toml``.
    cwd : Path
        Working directory.
    timeout : float
        Seconds before the command is killed.
    check : bool
        Raise :class:`FleetError` on a non-zero exit status.

    Returns
    -------
    subprocess.CompletedProcess[str]
        Exit status and captured output.
    """
    command = [console_script("flwr"), *args]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=flower_env(flwr_home),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise FleetError(
            f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


#: ``flwr supernode register`` error for a key the SuperLink already knows.
ALREADY_REGISTERED = "Public key already in use"


def _register_args(public_key: Path, connection: str) -> list[str]:
    # --name is the key file's stem (node-3, press-07): shown by `flwr supernode list -v`.
    return [
        "supernode",
        "register",
        str(public_key),
        connection,
        "--name",
        public_key.stem,
        "--format",
        "json",
    ]


def _register_outcome(stdout: str) -> tuple[bool, int | None, str]:
    """(done, node id, message) from ``flwr supernode register --format json`` output.

    With ``--format json`` the CLI exits 0 even on failure; ``success`` tells.
    """
    payload = _last_json_object(stdout)
    if payload.get("success"):
        return True, int(payload["node-id"]), ""
    message = str(payload.get("error-message", stdout.strip()[-500:]))
    return ALREADY_REGISTERED in message, None, message


def register_public_keys(
    public_keys: Sequence[Path],
    connection: str,
    flwr_home: Path,
    cwd: Path,
    timeout: float = 60.0,
) -> dict[Path, int | None]:
    """Register SuperNode public keys on a running SuperLink with ``flwr supernode register``.

    All keys are tried concurrently (one ``flwr`` process each); failures are retried one by
    one until ``timeout`` (the SuperLink may still be starting). A key that is already
    registered counts as done.

    Parameters
    ----------
    public_keys : Sequence[Path]
        OpenSSH public keys (EC, NIST curve).
    connection : str
        Connection name in ``<flwr_home>/config.toml``.
    flwr_home : Path
        Flower config folder of the CLI.
    cwd : Path
        Working directory for ``flwr`` (no ``pyproject.toml`` there).
    timeout : float
        Overall seconds.

    Returns
    -------
    dict[Path, int | None]
        Node id per key; None where the key was registered before.

    Raises
    ------
    FleetError
        A key could not be registered before the deadline.
    """
    deadline = time.monotonic() + timeout
    env = flower_env(flwr_home)
    procs = [
        subprocess.Popen(
            [console_script("flwr"), *_register_args(key, connection)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        for key in public_keys
    ]
    results: dict[Path, int | None] = {}
    for key, proc in zip(public_keys, procs, strict=True):
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
        done, node_id, message = _register_outcome(stdout)
        while not done:
            if time.monotonic() > deadline:
                raise FleetError(f"registering {key} failed: {message}")
            time.sleep(1.0)
            result = run_flwr(_register_args(key, connection), flwr_home, cwd, check=False)
            done, node_id, message = _register_outcome(result.stdout)
        if node_id is None:
            logger.info("%s was already registered", key)
        else:
            logger.info("registered %s as node %d", key, node_id)
        results[key] = node_id
    return results


# --------------------------------------------------------------------------------------------
# Local fleet
# --------------------------------------------------------------------------------------------


def default_state_dir() -> Path:
    """``deploy/local/.certs`` of the source checkout, else ``./.fedhet/deploy``."""
    repo = Path(__file__).resolve().parents[1]
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
    device_class = DEVICE_CLASSES[index % len(DEVICE_CLASSES)]
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


class LocalFleet:
    """A SuperLink and N SuperNodes on one host, started through Flower's CLIs.

    Parameters
    ----------
    state_dir : Path
        Holds certificates, keys, logs, the SuperLink database, the Flower config for the
        ``flwr`` CLI (``flwr-home/config.toml``) and the state file ``fleet.json``.
    insecure : bool
        No TLS (implies no node authentication).
    auth : bool
        SuperNode authentication (needs TLS).
    host : str
        Address the SuperLink binds and nodes connect to.
    base_port : int | None
        SuperLink port; SuperNode ``i`` uses ``base_port + 1 + i`` for its Runtime API.
        None picks free ports.
    extra_node_config : str
        Appended to every node's ``--node-config`` (e.g. ``data-path="/data"``).

    Examples
    --------
    >>> fleet = LocalFleet(Path("/tmp/fleet"))  # doctest: +SKIP
    >>> fleet.start(num_nodes=3)  # doctest: +SKIP
    >>> fleet.wait_for_nodes(3)  # doctest: +SKIP
    >>> fleet.flwr(["run", "/path/to/app", fleet.connection_name])  # doctest: +SKIP
    >>> fleet.stop()  # doctest: +SKIP
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
        self.port: int = base_port if base_port is not None else 0
        self.num_partitions = 0
        self.superlink: ProcessRecord | None = None
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
        """``FLWR_HOME`` of the ``flwr`` CLI; holds ``config.toml`` with the connection."""
        return self.state_dir / "flwr-home"

    @property
    def root_certificates(self) -> Path | None:
        """CA certificate the CLI and SuperNodes verify the SuperLink with (None if insecure)."""
        return None if self.insecure else self.pki_dir / "ca.pem"

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Fleet, Control and Runtime APIs)."""
        return f"{self.host}:{self.port}"

    @property
    def connection_name(self) -> str:
        """SuperLink connection name to pass to ``flwr run <app> <name>``."""
        return CONNECTION_NAME

    @property
    def state_file(self) -> Path:
        """JSON with every PID, port and key path."""
        return self.state_dir / STATE_FILE

    def env(self, role: str) -> dict[str, str]:
        """Environment of a Flower process: offline switches and its own ``FLWR_HOME``.

        Parameters
        ----------
        role : str
            ``cli`` for the ``flwr`` CLI, otherwise a process name (``superlink``, ``node-0``).
        """
        home = self.flwr_home if role == "cli" else self.state_dir / "homes" / role
        return flower_env(home)

    def connection_toml(self) -> str:
        """The ``[superlink.<name>]`` table for a Flower config file."""
        return connection_toml(self.connection_name, self.address, self.root_certificates)

    def run_command(self, app_dir: str = ".") -> str:
        """Shell command that submits the Flower app in ``app_dir`` to this fleet."""
        return f"{self._cli_prefix()} flwr run {app_dir} {self.connection_name}"

    def _cli_prefix(self) -> str:
        return f"FLWR_HOME={shlex.quote(str(self.flwr_home))}"

    def _write_flower_config(self) -> None:
        write_flower_config(
            self.flwr_home, self.connection_name, self.address, self.root_certificates
        )
        (self.state_dir / "connection.toml").write_text(self.connection_toml(), encoding="utf-8")

    # -- state file -----------------------------------------------------------------------

    def save(self) -> None:
        """Write ``fleet.json``."""
        state: dict[str, Any] = {
            "state_dir": str(self.state_dir),
            "insecure": self.insecure,
            "auth": self.auth,
            "host": self.host,
            "port": self.port,
            "base_port": self.base_port,
            "address": self.address,
            "extra_node_config": self.extra_node_config,
            "num_partitions": self.num_partitions,
            "connection_name": self.connection_name,
            "flwr_home": str(self.flwr_home),
            "root_certificates": str(self.root_certificates) if self.root_certificates else None,
            "database": str(self.database),
            "superlink": asdict(self.superlink) if self.superlink else None,
            "nodes": [asdict(node) for node in self.nodes],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, state_dir: Path) -> LocalFleet:
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
        )
        fleet.port = int(state["port"])
        fleet.num_partitions = int(state["num_partitions"])
        fleet.superlink = ProcessRecord(**state["superlink"]) if state["superlink"] else None
        for raw in state["nodes"]:
            proc = raw.pop("process")
            fleet.nodes.append(NodeRecord(**raw, process=ProcessRecord(**proc) if proc else None))
        return fleet

    # -- flwr CLI -------------------------------------------------------------------------

    def flwr(
        self,
        args: Sequence[str],
        timeout: float = 60.0,
        cwd: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this fleet.

        Runs in the state directory unless ``cwd`` is given: ``flwr`` rewrites a
        ``pyproject.toml`` with ``[tool.flwr.federations]`` in its working directory.

        Parameters
        ----------
        args : Sequence[str]
            Arguments after ``flwr``.
        timeout : float
            Seconds before the command is killed.
        cwd : Path | None
            Working directory (the app folder for ``flwr run``).
        check : bool
            Raise :class:`FleetError` on a non-zero exit status.

        Returns
        -------
        subprocess.CompletedProcess[str]
            Exit status and captured output.
        """
        return run_flwr(args, self.flwr_home, cwd or self.state_dir, timeout=timeout, check=check)

    def list_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list --format json``: the SuperLink's view of its nodes."""
        result = self.flwr(["supernode", "list", self.connection_name, "--format", "json"])
        payload = _last_json_object(result.stdout)
        nodes = payload.get("nodes", [])
        return list(nodes) if isinstance(nodes, list) else []

    def online_node_ids(self) -> set[int]:
        """Node ids the SuperLink currently reports as online."""
        return {
            int(node["node-id"])
            for node in self.list_nodes()
            if str(node.get("status", "")).lower() == "online"
        }

    def submit_run(self, app_dir: Path, run_config: str = "", timeout: float = 180.0) -> int:
        """``flwr run <app_dir> <connection> --format json -c <run_config>``; return the run id.

        ``flwr run`` only submits the run (it builds the FAB and uploads it) and exits 0 even
        if the run later fails: follow it with :meth:`run_status` / :meth:`wait_for_run`.

        Parameters
        ----------
        app_dir : Path
            Folder with the app's ``pyproject.toml``.
        run_config : str
            Run-config overrides, e.g. ``"num-server-rounds=3 run-name='line-4'"``.
        timeout : float
            Seconds for the submission (building a FAB of a large checkout takes a while).

        Raises
        ------
        FleetError
            The CLI printed no run id.
        """
        args = ["run", str(app_dir), self.connection_name, "--format", "json"]
        if run_config.strip():
            args += ["-c", run_config]
        result = self.flwr(args, timeout=timeout, cwd=app_dir, check=False)
        payload = _last_json_object(result.stdout)
        if not payload.get("success") or "run-id" not in payload:
            raise FleetError(f"flwr run did not start a run:\n{result.stdout}\n{result.stderr}")
        return int(payload["run-id"])

    def run_status(self, run_id: int) -> str:
        """Status of a run from ``flwr ls --run-id``: ``running``, ``finished:completed`` …

        Returns ``unknown`` when the SuperLink cannot be asked (e.g. while it restarts).
        """
        result = self.flwr(
            ["ls", self.connection_name, "--run-id", str(run_id), "--format", "json"],
            check=False,
        )
        runs = _last_json_object(result.stdout).get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def wait_for_run(self, run_id: int, timeout: float, poll: float = 3.0) -> str:
        """Poll :meth:`run_status` until the run is ``finished:*`` or ``timeout`` seconds pass.

        Returns
        -------
        str
            The final status, or the last one seen followed by ``(timeout)``.
        """
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(poll)
        return f"{status} (timeout)"

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> set[int]:
        """Wait until exactly ``count`` nodes are online.

        Returns
        -------
        set[int]
            The online node ids.

        Raises
        ------
        FleetError
            On timeout (the message carries the last listing).
        """
        deadline = time.monotonic() + timeout
        online: set[int] = set()
        while time.monotonic() < deadline:
            online = self.online_node_ids()
            if len(online) == count:
                return online
            time.sleep(0.5)
        raise FleetError(f"expected {count} online nodes after {timeout}s, got {sorted(online)}")

    # -- lifecycle ------------------------------------------------------------------------

    def start(
        self, num_nodes: int, num_partitions: int | None = None, timeout: float = 60.0
    ) -> None:
        """Generate certificates and keys, start the SuperLink and ``num_nodes`` SuperNodes.

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
            previous = LocalFleet.load(self.state_dir)
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
        self.num_partitions = num_partitions if num_partitions is not None else num_nodes
        self.database.unlink(missing_ok=True)
        if not self.insecure:
            write_pki(self.pki_dir, [self.host])
        self._write_flower_config()
        self.start_superlink(timeout=timeout)
        self.add_nodes(num_nodes)
        logger.info("fleet up: SuperLink %s, %d SuperNodes", self.address, num_nodes)

    def processes(self) -> list[ProcessRecord]:
        """SuperLink and SuperNode processes this fleet started (ended ones included)."""
        records = [self.superlink] + [node.process for node in self.nodes]
        return [record for record in records if record is not None]

    def running(self) -> bool:
        """Whether any process of this fleet is still alive."""
        return any(record.is_alive() for record in self.processes())

    def superlink_command(self) -> list[str]:
        """The ``flower-superlink`` command line of this fleet."""
        command = [
            console_script("flower-superlink"),
            "--host",
            self.host,
            "--port",
            str(self.port),
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
        self.superlink = spawn(
            self.superlink_command(),
            self.log_dir / "superlink.log",
            self.env("superlink"),
            self.state_dir,
        )
        self.save()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.superlink.is_alive():
                raise FleetError(
                    f"SuperLink exited; see {self.superlink.log}:\n{_tail(self.superlink.log)}"
                )
            if wait_for_port(self.host, self.port, timeout=0.5):
                return self.superlink
        raise FleetError(f"SuperLink not listening on {self.address} after {timeout}s")

    def stop_superlink(self, sig: int = signal.SIGTERM) -> None:
        """Stop the SuperLink process (and its SuperExec / ServerApp children)."""
        if self.superlink is not None:
            terminate([self.superlink], sig)
            self.save()

    def restart_superlink(self, timeout: float = 60.0) -> ProcessRecord:
        """Stop the SuperLink and start it again on the same port and database."""
        self.stop_superlink()
        if not _wait_port_closed(self.host, self.port, timeout=10.0):
            raise FleetError(f"port {self.port} still busy after stopping the SuperLink")
        return self.start_superlink(timeout=timeout)

    def register_keys(self, public_keys: Sequence[Path], timeout: float = 60.0) -> list[int]:
        """Register public keys on the running SuperLink (``flwr supernode register``).

        Returns
        -------
        list[int]
            Node ids, in the order of ``public_keys``.

        Raises
        ------
        FleetError
            A key was already registered (a fresh fleet never reuses keys) or timed out.
        """
        node_ids = register_public_keys(
            public_keys, self.connection_name, self.flwr_home, self.state_dir, timeout
        )
        missing = [str(key) for key, node_id in node_ids.items() if node_id is None]
        if missing:
            raise FleetError(f"keys already registered on this SuperLink: {missing}")
        return [node_id for key in public_keys if (node_id := node_ids[key]) is not None]

    def supernode_command(self, node: NodeRecord, private_key: Path | None = None) -> list[str]:
        """The ``flower-supernode`` command line of ``node``."""
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
        runtime_port = (
            self.base_port + 1 + index
            if self.base_port is not None
            else find_free_port("127.0.0.1")
        )
        node = NodeRecord(index, name, device_class, node_config, runtime_port)
        if self.auth:
            private, public = write_node_key(self.pki_dir / "nodes", name)
            node.private_key, node.public_key = str(private), str(public)
        return node

    def _spawn_node(self, node: NodeRecord) -> None:
        node.process = spawn(
            self.supernode_command(node),
            self.log_dir / f"{node.name}.log",
            self.env(node.name),
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
        for node in new_nodes:
            self._spawn_node(node)
            self.nodes.append(node)
        self.save()
        return new_nodes

    def add_node(self, register: bool = True) -> NodeRecord:
        """Create, register (with authentication) and start one more SuperNode.

        See :meth:`add_nodes`.
        """
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
        if node.process is not None:
            terminate([node.process], signal.SIGKILL)
        self.save()

    def restart_node(self, index: int) -> NodeRecord:
        """Start SuperNode ``index`` again with the same key and node config."""
        node = self.node(index)
        if node.process is not None and node.process.is_alive():
            raise FleetError(f"{node.name} is still running")
        self._spawn_node(node)
        self.save()
        return node

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink; only PIDs recorded by this fleet."""
        terminate([node.process for node in self.nodes if node.process is not None])
        if self.superlink is not None:
            terminate([self.superlink])
        self.save()
        logger.info("fleet in %s stopped", self.state_dir)

    def describe(self) -> str:
        """Human-readable summary: processes, connection and how to run and stop."""
        lines = [
            f"SuperLink   {self.address}  pid {self.superlink.pid if self.superlink else '-'}  "
            f"TLS {'off' if self.insecure else 'on'}  node auth {'on' if self.auth else 'off'}",
            f"database    {self.database}",
        ]
        for node in self.nodes:
            alive = node.process is not None and node.process.is_alive()
            lines.append(
                f"{node.name:<11} pid {node.process.pid if node.process else '-'} "
                f"({'running' if alive else 'stopped'})  node-id {node.node_id}  "
                f"runtime port {node.runtime_port}  [{node.node_config}]"
            )
        lines += [
            f"logs        {self.log_dir}",
            f"state       {self.state_file}",
            "",
            "Run the app against this fleet (from the app folder):",
            f"  {self.run_command('.')}",
            f"  {self._cli_prefix()} flwr ls {self.connection_name} --format json",
            f"  {self._cli_prefix()} flwr supernode list {self.connection_name}",
            "Stop it:",
            f"  python -m fedhet.deploy stop --state-dir {shlex.quote(str(self.state_dir))}",
        ]
        return "\n".join(lines)


def _last_json_object(text: str) -> dict[str, Any]:
    """Parse the JSON object that ``flwr ... --format json`` prints (last ``{`` block)."""
    start = text.find("{")
    while start != -1:
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(text[start:])
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return {}


def _tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_port_closed(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
            return True
        except OSError:
            time.sleep(0.2)
    return False


@contextlib.contextmanager
def local_fleet(state_dir: Path, num_nodes: int, **kwargs: Any) -> Iterator[LocalFleet]:
    """Context manager: a started :class:`LocalFleet` that is always stopped on exit."""
    fleet = LocalFleet(state_dir, **kwargs)
    try:
        fleet.start(num_nodes)
        yield fleet
    finally:
        fleet.stop()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedhet.deploy",
        description="Certificates, node keys and a local SuperLink + SuperNodes fleet for fedhet.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=default_state_dir(),
            help="certificates, keys, logs, database and fleet.json (default: %(default)s)",
        )
        return p

    start = with_state_dir(sub.add_parser("start", help="start a SuperLink and N SuperNodes"))
    start.add_argument("--nodes", type=int, default=3, help="number of SuperNodes (default 3)")
    start.add_argument(
        "--num-partitions",
        type=int,
        default=None,
        help="num-partitions node-config value (default: --nodes); more leaves room for add-node",
    )
    start.add_argument("--insecure", action="store_true", help="no TLS (implies --no-auth)")
    start.add_argument("--no-auth", action="store_true", help="no SuperNode authentication")
    start.add_argument("--host", default="127.0.0.1", help="SuperLink address (default 127.0.0.1)")
    start.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="SuperLink port; node i uses base+1+i for its Runtime API (default: free ports)",
    )
    start.add_argument(
        "--node-config",
        default="",
        help="extra node config for every node, e.g. 'data-path=\"/d\"'",
    )

    with_state_dir(sub.add_parser("stop", help="stop exactly the processes the fleet started"))
    with_state_dir(sub.add_parser("status", help="show processes and connection"))
    add = with_state_dir(
        sub.add_parser("add-node", help="register a new key and start a SuperNode")
    )
    add.add_argument("--unregistered", action="store_true", help="do not register the key (test)")
    kill = with_state_dir(sub.add_parser("kill-node", help="SIGKILL SuperNode i"))
    kill.add_argument("index", type=int)
    restart = with_state_dir(sub.add_parser("restart-node", help="start a killed SuperNode again"))
    restart.add_argument("index", type=int)
    with_state_dir(
        sub.add_parser("restart-superlink", help="restart the SuperLink on its database")
    )

    certs = sub.add_parser("certs", help="CA, SuperLink certificate and node keys for a plant")
    certs.add_argument("--out", type=Path, required=True, help="output folder")
    certs.add_argument(
        "--hosts", nargs="+", required=True, help="SuperLink host names / IPs (for the certificate)"
    )
    certs.add_argument(
        "--nodes",
        nargs="+",
        default=[],
        help="node names, or one integer N for node-0..node-N-1",
    )
    certs.add_argument("--overwrite", action="store_true", help="regenerate CA and server cert")

    register = sub.add_parser(
        "register",
        help="register SuperNode public keys on a running SuperLink (waits for it to start)",
    )
    register.add_argument("--superlink", required=True, help="SuperLink host:port")
    trust = register.add_mutually_exclusive_group(required=True)
    trust.add_argument("--root-certificates", type=Path, help="CA certificate (PEM)")
    trust.add_argument("--insecure", action="store_true", help="SuperLink without TLS")
    register.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    register.add_argument("public_keys", nargs="+", type=Path, help="<name>.pub files")

    keygen = sub.add_parser(
        "keygen", help="one more SuperNode key pair (then `flwr supernode register`)"
    )
    keygen.add_argument(
        "--out", type=Path, required=True, help="folder for <name>.key / <name>.pub"
    )
    keygen.add_argument("name", help="node name, e.g. press-07")
    return parser


def _node_names(values: Sequence[str]) -> list[str]:
    if len(values) == 1 and values[0].isdigit():
        return [f"node-{i}" for i in range(int(values[0]))]
    return list(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fedhet.deploy``.

    Returns
    -------
    int
        Process exit status.
    """
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "certs":
            paths = write_pki(
                args.out, args.hosts, _node_names(args.nodes), overwrite=args.overwrite
            )
            print(f"CA certificate      {paths.ca_cert}  (copy to every SuperNode and CLI user)")
            print(f"CA key              {paths.ca_key}  (keep offline)")
            print(f"SuperLink cert/key  {paths.server_cert}  {paths.server_key}")
            for name, (private, public) in paths.node_keys.items():
                print(f"{name:<19} {private}  {public}")
            return 0
        if args.command == "keygen":
            private, public = write_node_key(args.out, args.name)
            print(f"private key (copy to the device only): {private}")
            print(f"public key: {public}")
            print(f"register it: flwr supernode register {public} <connection> --name {args.name}")
            return 0
        if args.command == "register":
            with tempfile.TemporaryDirectory(prefix="fedhet-register-") as tmp:
                home = Path(tmp)
                ca = None if args.insecure else args.root_certificates
                write_flower_config(home, "fedhet-register", args.superlink, ca)
                ids = register_public_keys(
                    args.public_keys, "fedhet-register", home, home, timeout=args.timeout
                )
            for key, node_id in ids.items():
                print(f"{key}: {'already registered' if node_id is None else node_id}")
            return 0
        if args.command == "start":
            fleet = LocalFleet(
                args.state_dir,
                insecure=args.insecure,
                auth=not args.no_auth,
                host=args.host,
                base_port=args.base_port,
                extra_node_config=args.node_config,
            )
            try:
                fleet.start(args.nodes, num_partitions=args.num_partitions)
            except BaseException:
                fleet.stop()
                raise
            print(fleet.describe())
            return 0
        fleet = LocalFleet.load(args.state_dir)
        if args.command == "stop":
            fleet.stop()
            print(f"stopped fleet in {fleet.state_dir}")
        elif args.command == "status":
            print(fleet.describe())
        elif args.command == "add-node":
            node = fleet.add_node(register=not args.unregistered)
            print(f"started {node.name} (pid {node.process.pid if node.process else '-'})")
        elif args.command == "kill-node":
            fleet.kill_node(args.index)
            print(f"killed node-{args.index}")
        elif args.command == "restart-node":
            fleet.restart_node(args.index)
            print(f"restarted node-{args.index}")
        elif args.command == "restart-superlink":
            record = fleet.restart_superlink()
            print(f"SuperLink restarted (pid {record.pid}) on {fleet.database}")
        return 0
    except FleetError as err:
        logger.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
