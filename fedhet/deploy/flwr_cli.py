"""Wrappers around the ``flwr`` CLI: connections, ``flwr run``, ``flwr ls``, node registration.

Flower 1.41 facts these wrappers rely on:

* ``flwr`` reads SuperLink connections from ``$FLWR_HOME/config.toml`` as
  ``[superlink.<name>]`` tables (``address`` = Control API, ``root-certificates`` or
  ``insecure = true``), not from ``pyproject.toml``; a ``[tool.flwr.federations]`` table left in
  a ``pyproject.toml`` of the working directory is migrated and commented out in place, so every
  command except ``flwr run`` runs in a folder without one.
* ``flwr run`` only submits a run and exits 0 even if it later fails: the status comes from
  ``flwr ls --run-id <id> --format json``.
* ``flwr supernode register --format json`` exits 0 even on failure; ``success`` tells.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedhet.deploy.processes import FleetError, console_script, flower_env

logger = logging.getLogger(__name__)


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
    payload = last_json_object(stdout)
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


def last_json_object(text: str) -> dict[str, Any]:
    """Parse the JSON object that ``flwr ... --format json`` prints (last ``{`` block)."""
    start = text.find("{")
    while start != -1:
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(text[start:])
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return {}


def submit_run(
    app_dir: Path,
    connection: str,
    flwr_home: Path,
    run_config: str = "",
    extra_args: Sequence[str] = (),
    timeout: float = 180.0,
) -> tuple[int | None, subprocess.CompletedProcess[str]]:
    """``flwr run <app_dir> <connection> --format json [-c run_config]``.

    ``flwr run`` only submits the run (builds the FAB, uploads it) and exits 0 even if the run
    later fails: follow it with :func:`run_status` / :func:`wait_for_run`.

    Parameters
    ----------
    app_dir : Path
        Folder with the app's ``pyproject.toml`` (also the working directory).
    connection : str
        Connection name in ``<flwr_home>/config.toml``.
    flwr_home : Path
        Flower config folder of the CLI.
    run_config : str
        Run-config overrides, e.g. ``"num-server-rounds=3 run-name='line-4'"``.
    extra_args : Sequence[str]
        More ``flwr run`` arguments (e.g. ``--federation-config ...``).
    timeout : float
        Seconds for the submission.

    Returns
    -------
    tuple[int | None, subprocess.CompletedProcess[str]]
        The run id (None if none was started) and the CLI's result.
    """
    args = ["run", str(app_dir), connection, "--format", "json", *extra_args]
    if run_config.strip():
        args += ["-c", run_config]
    result = run_flwr(args, flwr_home, app_dir, timeout=timeout, check=False)
    payload = last_json_object(result.stdout)
    if not payload.get("success") or "run-id" not in payload:
        return None, result
    return int(payload["run-id"]), result


def run_status(run_id: int, connection: str, flwr_home: Path, cwd: Path) -> str:
    """Status of a run from ``flwr ls --run-id``: ``running``, ``finished:completed`` ...

    Returns ``unknown`` when the SuperLink cannot be asked (e.g. while it restarts) or does not
    answer within the CLI's timeout (a SuperLink busy with a large simulation on a loaded host):
    callers poll again rather than give up on a run that is still going.
    """
    try:
        result = run_flwr(
            ["ls", connection, "--run-id", str(run_id), "--format", "json"],
            flwr_home,
            cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        logger.warning("flwr ls did not answer in %.0f s; asking again later", err.timeout)
        return "unknown"
    runs = last_json_object(result.stdout).get("runs", [])
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def wait_for_run(
    run_id: int,
    connection: str,
    flwr_home: Path,
    cwd: Path,
    timeout: float,
    poll: float = 3.0,
) -> str:
    """Poll :func:`run_status` until the run is ``finished:*`` or ``timeout`` seconds pass.

    Returns
    -------
    str
        The final status, or the last one seen followed by ``(timeout)``.
    """
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = run_status(run_id, connection, flwr_home, cwd)
        if status.startswith("finished"):
            return status
        time.sleep(poll)
    return f"{status} (timeout)"


def list_nodes(connection: str, flwr_home: Path, cwd: Path) -> list[dict[str, Any]]:
    """``flwr supernode list --format json``: the SuperLink's view of its nodes."""
    result = run_flwr(["supernode", "list", connection, "--format", "json"], flwr_home, cwd)
    nodes = last_json_object(result.stdout).get("nodes", [])
    return list(nodes) if isinstance(nodes, list) else []


def run_log(run_id: int, connection: str, flwr_home: Path, cwd: Path) -> str:
    """``flwr log <run-id> <connection> --show``: the ServerApp's log so far."""
    result = run_flwr(
        ["log", str(run_id), connection, "--show"], flwr_home, cwd, timeout=60.0, check=False
    )
    return result.stdout
