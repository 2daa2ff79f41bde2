"""One toolkit for the Flower processes fedhet starts: start, record, wait, stop by PID.

Every long-running process of a deployment or a demo (``flower-superlink``,
``flower-supernode``, the simulation SuperLink, the nginx front door) is started with
:func:`spawn`: in its own process group, stdout and stderr appended to its log file, and
recorded as a :class:`ProcessRecord` (PID **and** OS start time). It is stopped with
:func:`terminate`, which signals only recorded processes whose start time still matches (a
recycled PID is never signalled), together with their descendants and their own process group.
Nothing is ever looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

#: Environment every Flower process gets on an offline host.
OFFLINE_ENV: dict[str, str] = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

_STOP_GRACE_S = 10.0


class FleetError(RuntimeError):
    """A deployment operation failed (process exited, timeout, CLI error)."""


@dataclass
class ProcessRecord:
    """A process fedhet started.

    Attributes
    ----------
    pid : int
        Process id.
    create_time : float
        Start time reported by the OS; guards against signalling a recycled PID.
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


def console_script(name: str) -> str:
    """Path of a console script, preferring the running interpreter's environment.

    Raises
    ------
    FileNotFoundError
        Neither next to ``sys.executable`` nor on ``PATH``.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} not found; is flwr installed?")
    return found


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: offline switches, ``FLWR_HOME``, venv on ``PATH``.

    SuperLink and SuperNode start ``flower-superexec`` and ``flwr-*app`` by name, so the
    folder holding the Flower console scripts is put first on ``PATH``.

    Parameters
    ----------
    flwr_home : Path
        ``FLWR_HOME`` of the process (created if missing).
    base : Mapping[str, str] | None
        Environment to start from; default ``os.environ``.
    """
    env = {**(os.environ if base is None else base), **OFFLINE_ENV}
    bin_dir = str(Path(console_script("flower-superlink")).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    flwr_home.mkdir(parents=True, exist_ok=True)
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["COLUMNS"] = "200"  # keep rich from wrapping CLI output
    return env


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
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def wait_port_closed(host: str, port: int, timeout: float) -> bool:
    """Wait until ``host:port`` can be bound again (its listener is gone).

    Returns
    -------
    bool
        True if the port was free before ``timeout`` seconds.
    """
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


def tail(path: str | Path, lines: int = 30) -> str:
    """Last ``lines`` lines of a log file ('' if it cannot be read)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def spawn(
    command: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path
) -> ProcessRecord:
    """Start a detached process (own session and process group), output to ``log_path``.

    Parameters
    ----------
    command : Sequence[str]
        Program and arguments.
    log_path : Path
        Log file (appended to; the command line is written first).
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


def wait_until(record: ProcessRecord, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``ready()`` until it is true; fail early, with the log's tail, if the process ends.

    Parameters
    ----------
    record : ProcessRecord
        The process being waited for.
    ready : Callable[[], bool]
        Readiness check (a port answers, a log line appeared ...).
    timeout : float
        Seconds.
    what : str
        What is awaited, for the error message (e.g. ``"SuperLink on 127.0.0.1:9092"``).

    Raises
    ------
    FleetError
        The process exited, or ``ready()`` stayed false for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not record.is_alive():
            raise FleetError(
                f"{what}: process {record.pid} exited; {record.log}:\n{tail(record.log)}"
            )
        if ready():
            return
        time.sleep(0.2)
    raise FleetError(f"{what}: not ready after {timeout:.0f}s; {record.log}:\n{tail(record.log)}")


def wait_for_log_line(record: ProcessRecord, pattern: str, timeout: float, what: str) -> str:
    """Wait until a line matching the regex ``pattern`` appears in the process's log.

    Returns
    -------
    str
        The first matching line.

    Raises
    ------
    FleetError
        See :func:`wait_until`.
    """
    regex = re.compile(pattern)
    found: list[str] = []

    def _ready() -> bool:
        found[:] = [line for line in tail(record.log, 400).splitlines() if regex.search(line)]
        return bool(found)

    wait_until(record, _ready, timeout, what)
    return found[0]


def _own_group(proc: psutil.Process) -> list[psutil.Process]:
    """Members of ``proc``'s process group if ``proc`` leads it (as :func:`spawn` makes it)."""
    try:
        if os.getpgid(proc.pid) != proc.pid:
            return []
    except OSError:
        return []
    members = []
    for other in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if other.pid != proc.pid and os.getpgid(other.pid) == proc.pid:
                members.append(other)
    return members


def terminate(
    records: Sequence[ProcessRecord], sig: int = signal.SIGTERM, grace: float = _STOP_GRACE_S
) -> None:
    """End processes fedhet started, and whatever they started, by recorded PID.

    Descendants (SuperExec, ServerApp/ClientApp processes, Ray workers) and members of the
    process group the record leads are collected before the signal is sent, all of them are
    signalled at once, and each one still running after ``grace`` seconds gets SIGKILL.
    Records whose process ended, or whose PID now belongs to another process (start time
    differs), are skipped.

    Parameters
    ----------
    records : Sequence[ProcessRecord]
        The processes to end.
    sig : int
        First signal (SIGTERM for a clean stop, SIGKILL for a simulated crash).
    grace : float
        Seconds to wait for a clean exit before SIGKILL.
    """
    family: dict[int, psutil.Process] = {}
    for record in records:
        proc = record.process()
        if proc is None:
            continue
        family[proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            family.update((child.pid, child) for child in proc.children(recursive=True))
        family.update((member.pid, member) for member in _own_group(proc))
    members = list(family.values())
    if not members:
        return
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.send_signal(sig)
    _, alive = psutil.wait_procs(members, timeout=grace if sig != signal.SIGKILL else 2.0)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            logger.warning("pid %d still running after %.0fs, sending SIGKILL", member.pid, grace)
            member.kill()
    psutil.wait_procs(alive, timeout=2.0)
    for record in records:  # reap direct children of this process, if any
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(record.pid, os.WNOHANG)
