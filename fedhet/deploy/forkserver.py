"""Warm start for deployed ClientApps: one fork server per SuperNode.

Flower 1.41 runs a fresh ``flwr-clientapp`` process for every message: the SuperNode's SuperExec
(subprocess executor) starts the console script by name from ``PATH``, and that process pays the
interpreter start and the imports of torch, NumPy and Flower (≈ 3 s of CPU) before fedhet's
handler runs. With three nodes on a small host the imports of all ClientApps of a round run at
once, and they are most of a deployed round (``python -m benchmarks.deployment``).

The warm start keeps those imports done: a fork server started next to the SuperNode imports the
heavy third-party packages once (``--preload``; never fedhet's own code, which arrives in each
run's FAB and may change between runs) and forks one child per message. A shim named
``flwr-clientapp`` put first on the SuperNode's ``PATH`` takes the SuperExec's command line,
hands it to the server with its standard streams, environment and working directory, and exits
with the child's exit code. The child runs Flower's own ``flwr-clientapp`` entry with exactly
those arguments, so the message path (Runtime API, FAB install, ClientApp loading) is Flower's.

This file is the shim **and** the server, and imports only the standard library: the shim runs
as ``python -I -S`` (no site-packages, ≈ 20 ms) and the server must not import fedhet.

Protocol (one Unix-socket connection per ClientApp): the shim sends a 4-byte big-endian length
with its file descriptors 0, 1, 2 attached (``SCM_RIGHTS``), then that many bytes of JSON
``{"argv", "env", "cwd"}``; the server answers ``pid <n>`` when the child exists and
``exit <code>`` when it ended. If the server cannot be reached the shim runs the real
``flwr-clientapp`` (``FEDHET_WARM_FALLBACK``) instead, so a stopped server costs time, never a
message.

Risks, and what is done about them:

- **Pinned private behaviour**: this relies on Flower 1.41 starting ``flwr-clientapp`` by name
  from ``PATH`` and on its ``flwr.supernode.cli:flwr_clientapp`` entry; another Flower version
  may change either (the fallback keeps messages flowing, only the gain is lost).
- **Random state**: children of one server would share the server's random state; every child
  reseeds Python's, NumPy's and torch's generators from the OS (fedhet itself seeds from the run
  config and the device id, so results do not depend on either).
- **Threads**: the server imports torch with the node's ``OMP_NUM_THREADS`` and never runs an
  operator, so no OpenMP pool exists before a fork; the child sets torch's threads again.
- **Memory**: the server holds the imported packages (≈ 300–400 MB resident with torch); its
  children share those pages copy-on-write (``gc.freeze`` keeps the collector from touching them).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence

#: Environment of the shim: the server's socket and the real ``flwr-clientapp``.
SOCKET_ENV = "FEDHET_WARM_SOCKET"
FALLBACK_ENV = "FEDHET_WARM_FALLBACK"
#: Diagnostics: a folder where each child writes a cProfile dump of its ClientApp.
PROFILE_ENV = "FEDHET_WARM_PROFILE"
#: What the server imports before forking: heavy, third-party, the same for every run.
DEFAULT_PRELOAD = ("numpy", "torch", "pydantic", "yaml", "flwr.app", "flwr.supernode.cli")
#: Flower's ``flwr-clientapp`` console-script entry (flwr 1.41 ``entry_points.txt``).
DEFAULT_ENTRY = "flwr.supernode.cli:flwr_clientapp"
#: Packages that arrive in a run's FAB: importing them in the server would pin an old copy.
APP_PACKAGES = ("fedhet", "client_app", "server_app")
_HEADER = struct.Struct("!I")


# -- shim (the ``flwr-clientapp`` the SuperExec starts) -------------------------------------------


def _fallback(argv: Sequence[str]) -> int:
    real = os.environ.get(FALLBACK_ENV, "")
    if not real:
        sys.stderr.write(f"fedhet warm start: no server and no {FALLBACK_ENV}\n")
        return 1
    os.execv(real, [real, *argv[1:]])
    return 1  # not reached


def shim_main(argv: Sequence[str] | None = None) -> int:
    """Run one ClientApp through the fork server (or the real entry if none answers).

    Parameters
    ----------
    argv : Sequence[str] | None
        The command line the SuperExec gave (default ``sys.argv``).

    Returns
    -------
    int
        The child's exit code (128 + signal number if a signal ended it).
    """
    argv = list(sys.argv if argv is None else argv)
    path = os.environ.get(SOCKET_ENV, "")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return _fallback(argv)
    body = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    socket.send_fds(sock, [_HEADER.pack(len(body))], [0, 1, 2])
    sock.sendall(body)
    reader = sock.makefile("rb")
    first = reader.readline().split()
    if len(first) != 2 or first[0] != b"pid":
        sys.stderr.write(f"fedhet warm start: bad answer {first!r} from {path}\n")
        return 1
    child = int(first[1])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    last = reader.readline().split()
    if len(last) == 2 and last[0] == b"exit":
        code = int(last[1])
        return code if code >= 0 else 128 - code
    # The server went away: wait for the child itself, then report a failure.
    with contextlib.suppress(OSError):
        while True:
            os.kill(child, 0)
            time.sleep(0.2)
    return 1


# -- server ---------------------------------------------------------------------------------------


def _read_request(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    conn.settimeout(10.0)
    head, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    if len(head) != _HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"bad request header ({len(head)} bytes, {len(fds)} descriptors)")
    (size,) = _HEADER.unpack(head)
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = conn.recv(min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    request = json.loads(b"".join(chunks))
    if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
        for fd in fds:
            os.close(fd)
        raise ValueError("request without an argv list")
    return request, fds


def _reseed() -> None:
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.seed()
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))


def _run_child(entry: Callable[[], object], request: dict[str, object], fds: list[int]) -> int:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    env = request.get("env")
    if isinstance(env, dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    cwd = request.get("cwd")
    if isinstance(cwd, str):
        os.chdir(cwd)
    argv = request["argv"]
    sys.argv = [str(a) for a in argv] if isinstance(argv, list) else []
    _reseed()
    profile_dir = os.environ.get(PROFILE_ENV, "")
    try:
        if profile_dir:  # diagnostics: one cProfile dump per ClientApp
            import cProfile

            cProfile.runctx(
                "entry()", {}, {"entry": entry}, os.path.join(profile_dir, f"{os.getpid()}.prof")
            )
        else:
            entry()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return int(stop.code or 0)
        sys.stderr.write(f"{stop.code}\n")
        return 1
    return 0


#: Pauses of a warm ClientApp waiting for its message's objects (Flower's: 1 s doubling to 10 s).
FAST_BACKOFF_S = (0.05, 0.5)
#: How long a warm ClientApp waits for its message to be stored before giving up (seconds).
MESSAGE_WAIT_S = 10.0


def fast_backoff(
    pull: Callable[..., object], backoff: tuple[float, float] = FAST_BACKOFF_S
) -> bool:
    """Make a Flower 1.41 object-pull function back off from ``backoff[0]`` to ``backoff[1]`` s,
    with no cap on tries (its overall time limit stays); False, and nothing changed, when its
    keyword defaults are not the ones known."""
    defaults = dict(pull.__kwdefaults__ or {})
    if not {"initial_backoff", "backoff_cap", "max_tries_per_object"} <= set(defaults):
        return False
    first, cap = backoff
    defaults.update(initial_backoff=first, backoff_cap=cap, max_tries_per_object=None)
    pull.__kwdefaults__ = defaults
    return True


def _tune_flower() -> list[str]:
    """Adapt Flower 1.41's ClientApp to a process that starts in milliseconds.

    The SuperNode creates the ClientApp's task *before* it has pulled the message and its
    objects from the SuperLink (``flwr/supernode/start_client_internal.py``). A cold process
    spends seconds on imports, so both are there when it asks; a forked one asks at once and
    (1) finds no message yet, which Flower treats as a failure ("No messages received from
    Runtime API"), or (2) finds objects not yet stored and backs off 1 s, 2 s, 4 s … before asking
    again. Here (1) ``RuntimeHttpClient.PullMessages`` asks again every ≤ 0.2 s for up to
    :data:`MESSAGE_WAIT_S` while the list is empty, and (2) the object pull backs off from
    0.05 s to at most 0.5 s, with no cap on tries (Flower's 7,200 s overall limit stays). (3) A
    FAB already installed is not unpacked and re-verified again (:func:`installed_fab`).

    Returns
    -------
    list[str]
        What was changed, or why it could not be (another Flower version).
    """
    found = _flower_version()
    if found != FLOWER_VERSION:
        return [f"ClientApp waits NOT tuned: Flower {found}, tuned for {FLOWER_VERSION}"]
    done: list[str] = []
    try:
        from flwr.supercore.inflatable import inflatable_utils

        if fast_backoff(inflatable_utils.pull_and_inflate_object_from_tree):
            done.append(f"object pull backoff {FAST_BACKOFF_S[0]}-{FAST_BACKOFF_S[1]}s")
        else:
            done.append("object pull backoff NOT changed (unknown signature)")
    except (ImportError, AttributeError) as err:
        done.append(f"object pull backoff NOT changed ({err})")
    try:
        from flwr.supercore.runtime.runtime_http_client import RuntimeHttpClient

        original = RuntimeHttpClient.PullMessages

        def pull_messages(self: object, request: object) -> object:
            deadline = time.monotonic() + MESSAGE_WAIT_S
            pause = 0.02
            while True:
                response = original(self, request)  # type: ignore[arg-type]
                if getattr(response, "messages_list", True) or time.monotonic() > deadline:
                    return response
                time.sleep(pause)
                pause = min(2 * pause, 0.2)

        RuntimeHttpClient.PullMessages = pull_messages  # type: ignore[method-assign,assignment]
        done.append(f"message pull waits up to {MESSAGE_WAIT_S:.0f}s")
    except (ImportError, AttributeError) as err:
        done.append(f"message pull NOT changed ({err})")
    try:
        from flwr.supernode.runtime import run_clientapp

        install = run_clientapp.install_from_fab

        def install_once(fab_file: object, *args: object, **kwargs: object) -> object:
            if isinstance(fab_file, bytes) and not args and set(kwargs) <= {"skip_prompt"}:
                installed = installed_fab(fab_file)
                if installed is not None:
                    return installed
            return install(fab_file, *args, **kwargs)  # type: ignore[arg-type]

        run_clientapp.install_from_fab = install_once  # type: ignore[assignment]
        done.append("an installed FAB is not unpacked again")
    except (ImportError, AttributeError) as err:
        done.append(f"FAB install NOT changed ({err})")
    return done


def installed_fab(content: bytes) -> object | None:
    """The folder Flower installed this exact FAB in (by its SHA-256), or None.

    Flower 1.41's ``flwr-clientapp`` unpacks and re-verifies the FAB for every message, then finds
    the app already installed under ``$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash[:8]>``
    and uses that folder as it is. Identical bytes verify identically, so a warm child skips the
    unpacking when that folder exists (and keeps the bytecode Python cached there).
    """
    import hashlib
    from pathlib import Path

    from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION
    from flwr.supercore.utils import get_flwr_home

    digest = hashlib.sha256(content).hexdigest()[:FAB_HASH_TRUNCATION]
    found = [
        p
        for p in (Path(get_flwr_home()) / APP_DIR).glob(f"*.{digest}")
        if (p / "pyproject.toml").is_file()
    ]
    return found[0] if len(found) == 1 else None


#: Longest pause of a tuned SuperNode's loop (Flower's: 3 s idle pull, 0.5 s reply waits).
SUPERNODE_PAUSE_S = 0.2
#: The Flower release whose private waits :func:`tune_supernode` and :func:`_tune_flower` know.
FLOWER_VERSION = "1.41.0"


def _flower_version() -> str:
    from importlib.metadata import version

    return version("flwr")


class _ShortSleeps:
    """Stand-in for the ``time`` module inside one Flower module: ``sleep`` is capped."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def tune_supernode() -> list[str]:
    """Shorten the SuperNode's own waits, for the warm start (Flower 1.41 only).

    ``flwr/supernode/start_client_internal.py`` sleeps 3 s whenever a pull finds no message and
    polls every 0.5 s for the ClientApp's reply; its object pull from the SuperLink backs off from
    1 s (the strategy's Grid makes a message visible before it has uploaded the message's
    objects, so the first pull often misses). With a ClientApp that starts in milliseconds these
    waits are most of a round. Here every sleep of that module is capped at
    :data:`SUPERNODE_PAUSE_S` and the object pull backs off from 0.05 s to 0.5 s. The price: an
    idle SuperNode asks the SuperLink for work 5× a second instead of every 3 s — fine for a
    plant's tens of devices, not for thousands behind one SuperLink.

    Returns
    -------
    list[str]
        What was changed (nothing on another Flower release).
    """
    found = _flower_version()
    if found != FLOWER_VERSION:
        return [f"SuperNode NOT tuned: Flower {found}, tuned for {FLOWER_VERSION}"]
    from flwr.supernode import start_client_internal as loop

    loop.time = _ShortSleeps(SUPERNODE_PAUSE_S)  # type: ignore[assignment]
    first, cap = FAST_BACKOFF_S
    pulls = (
        f"object pull {first}-{cap}s"
        if fast_backoff(loop.pull_objects)
        else "object pull NOT changed"
    )
    return [f"SuperNode sleeps capped at {SUPERNODE_PAUSE_S}s", pulls]


def supernode_main(args: Sequence[str]) -> int:
    """``forkserver.py supernode <flower-supernode arguments>``: a tuned ``flower-supernode``."""
    for line in tune_supernode():
        print(f"fedhet warm start: {line}", flush=True)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()
    return 0


def _load_entry(spec: str) -> Callable[[], object]:
    module, _, name = spec.partition(":")
    func = getattr(importlib.import_module(module), name)
    if not callable(func):
        raise TypeError(f"{spec} is not callable")
    return func  # type: ignore[no-any-return]


def serve(
    socket_path: str, entry: str = DEFAULT_ENTRY, preload: Sequence[str] = DEFAULT_PRELOAD
) -> int:
    """Import ``preload``, then fork one child running ``entry`` per connection on ``socket_path``.

    Runs until SIGTERM/SIGINT. Single-threaded: children are reaped on SIGCHLD through a wake-up
    pipe, so no thread exists when the server forks.

    Parameters
    ----------
    socket_path : str
        Unix socket to listen on (replaced if it exists).
    entry : str
        ``module:function`` each child calls with the shim's ``sys.argv``.
    preload : Sequence[str]
        Modules imported once, before any fork.

    Returns
    -------
    int
        0 after a clean stop.
    """
    started = time.monotonic()
    for name in preload:
        importlib.import_module(name)
    func = _load_entry(entry)
    tuned = _tune_flower() if entry == DEFAULT_ENTRY else []
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in APP_PACKAGES)
    if leaked:
        raise RuntimeError(f"the fork server must not import app code, but imported {leaked}")
    gc.collect()
    gc.freeze()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _f: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _f: stopping.append(signum))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    print(
        f"fork server ready on {socket_path} after {time.monotonic() - started:.2f}s "
        f"(preloaded: {', '.join(preload)}; entry {entry}; {'; '.join(tuned) or 'Flower as is'})",
        flush=True,
    )
    while not stopping:
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(children)
                continue
            conn, _ = listener.accept()
            try:
                request, fds = _read_request(conn)
            except (OSError, ValueError) as err:
                print(f"dropped a bad request: {err}", flush=True)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:  # child: becomes the ClientApp
                code = 1
                try:
                    signal.set_wakeup_fd(-1)
                    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                        signal.signal(signum, signal.SIG_DFL)
                    selector.close()
                    listener.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    for other in children.values():
                        other.close()
                    conn.close()
                    code = _run_child(func, request, fds)
                except BaseException:  # the child must always leave through os._exit
                    traceback.print_exc()
                finally:
                    with contextlib.suppress(Exception):
                        sys.stdout.flush()
                        sys.stderr.flush()
                    os._exit(code)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            command = " ".join(str(a) for a in request["argv"])  # type: ignore[attr-defined]
            print(f"{time.time():.3f} forked pid {pid}: {command[:200]}", flush=True)
            with contextlib.suppress(OSError):
                conn.sendall(f"pid {pid}\n".encode())
        _reap(children)
    selector.close()
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    print(
        f"fork server stopped (signal {stopping[0]}); {len(children)} children still running",
        flush=True,
    )
    return 0


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        conn = children.pop(pid, None)
        print(f"{time.time():.3f} pid {pid} exited with {code}", flush=True)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {code}\n".encode())
            conn.close()


def write_shim(bin_dir: str, python: str | None = None) -> str:
    """Write the ``flwr-clientapp`` shim (this file, run by ``python -IS``) into ``bin_dir``.

    Returns
    -------
    str
        Path of the executable shim.
    """
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "flwr-clientapp")
    with open(__file__, encoding="utf-8") as source:
        text = source.read()
    with open(path, "w", encoding="utf-8") as shim:
        shim.write(f"#!{python or sys.executable} -IS\n{text}")
    os.chmod(path, 0o755)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``forkserver.py serve --socket PATH [--entry M:F] [--preload a,b]``; as ``flwr-clientapp``: the shim."""
    args = list(sys.argv if argv is None else argv)
    # run as a file, this folder is sys.path[0]: its modules must not shadow anything
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    if os.path.basename(args[0]) == "flwr-clientapp":
        return shim_main(args)
    if args[1:2] == ["supernode"]:
        return supernode_main(args[2:])
    import argparse

    parser = argparse.ArgumentParser(description="fedhet warm-start fork server")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--entry", default=DEFAULT_ENTRY)
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD))
    opts = parser.parse_args(args[1:])
    preload = [m for m in opts.preload.split(",") if m]
    return serve(opts.socket, opts.entry, preload)


if __name__ == "__main__":
    sys.exit(main())
