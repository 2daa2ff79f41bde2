"""A run's output folder: ``<output-dir>/<run-name>/`` (DESIGN.md "Outputs of a run").

``config.json``, ``profiles.json``, ``plans.jsonl``, ``metrics.jsonl`` and
``checkpoints/round-<n>.pt``. Writes are atomic (temp file + ``os.replace``) so a crash never leaves a
half-written checkpoint or profile file, and durable: the file and its folder are fsynced, and
metric lines are fsynced as they are appended (DESIGN.md "Trust").

Checkpoints hold tensors, numbers, strings and containers only and are read with
``torch.load(weights_only=True)``: a planted pickle cannot run code. A checkpoint that does not
load or does not match the run (method name, global array names and shapes, finite values) is set
aside as ``round-<n>.pt.rejected`` and the newest good one is used, with a warning. A torn last line
of ``metrics.jsonl`` (a crash mid-write) is dropped on resume.

While a server uses the folder it holds an exclusive ``fcntl.flock`` on ``<run>/.lock`` (which names
its PID): a second server with the same run name fails at start instead of interleaving rounds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("fedhet")

#: Keys that may change between a run and its resumption.
RESUMABLE_KEYS = frozenset({"num-server-rounds", "round-timeout", "min-nodes", "output-dir"})
KEEP_CHECKPOINTS = 3


LOCK_FILE = ".lock"


class RunDirLocked(RuntimeError):
    """Another live server holds the run folder."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _append_line(path: Path, line: str) -> None:
    """Append one line and fsync it (and the folder when the file is new)."""
    new = not path.exists()
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        _fsync_dir(path.parent)


def check_checkpoint(
    state: Any, method: str | None, shapes: Mapping[str, tuple[int, ...]] | None
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a checkpoint of this run.

    Parameters
    ----------
    state : Any
        What ``torch.load(weights_only=True)`` returned.
    method : str, optional
        The run's method name; the checkpoint's ``method`` must equal it.
    shapes : Mapping[str, tuple[int, ...]], optional
        Global arrays the run starts from; each must be in the checkpoint with this shape
        (methods that add arrays during the run, e.g. FedIT's task heads, may have more).
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"not a checkpoint dict ({type(state).__name__})")
    rnd = state.get("round")
    if not isinstance(rnd, int) or rnd < 1:
        raise CheckpointError(f"bad 'round' {rnd!r}")
    if method is not None and state.get("method") != method:
        raise CheckpointError(f"written by method {state.get('method')!r}, this run is {method!r}")
    glob = state.get("global")
    if not isinstance(glob, dict) or not all(isinstance(v, torch.Tensor) for v in glob.values()):
        raise CheckpointError("'global' is not a dict of tensors")
    for name, shape in (shapes or {}).items():
        if name not in glob:
            raise CheckpointError(f"global array {name!r} missing")
        if tuple(glob[name].shape) != tuple(shape):
            raise CheckpointError(
                f"global array {name!r}: shape {tuple(glob[name].shape)}, run has {tuple(shape)}"
            )
    for name, t in glob.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"global array {name!r} is not finite")
    totals = state.get("totals", {})
    if not isinstance(totals, dict) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in totals.values()
    ):
        raise CheckpointError("bad 'totals'")
    if not isinstance(state.get("strategy", {}), dict):
        raise CheckpointError("'strategy' is not a dict")


class RunDir:
    """The files of one run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        self._lock_fd: int | None = None

    # lock ---------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the run folder for this process.

        Raises
        ------
        RunDirLocked
            When another process (or another ``RunDir`` of this one) holds it; the message names the
            folder and the holder's PID.
        """
        if self._lock_fd is not None:
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirLocked(
                f"run folder {self.path} is in use by another fedhet server (PID {holder}). "
                "Stop that server first, or start this run with another 'run-name'."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release :meth:`lock` (also released when the process exits)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        """``with run_dir.locked(): ...`` holds the folder for the block."""
        self.lock()
        try:
            yield self
        finally:
            self.unlock()

    # config -------------------------------------------------------------------------------------
    def stored_config(self) -> dict[str, Any] | None:
        f = self.path / "config.json"
        return json.loads(f.read_text()) if f.exists() else None

    def config_conflicts(self, raw: dict[str, Any]) -> list[str]:
        """Keys whose value differs from the config the run was started with."""
        old = self.stored_config()
        if old is None:
            return []
        keys = (set(old) | set(raw)) - RESUMABLE_KEYS
        return sorted(
            f"{k}: {old.get(k)!r} → {raw.get(k)!r}" for k in keys if old.get(k) != raw.get(k)
        )

    def write_config(self, raw: dict[str, Any]) -> None:
        data = json.dumps(raw, indent=2, sort_keys=True).encode()
        _atomic_write(self.path / "config.json", lambda fh: fh.write(data))

    # profiles and plans ------------------------------------------------------------------------
    def load_profiles(self) -> dict[str, Any]:
        f = self.path / "profiles.json"
        return json.loads(f.read_text()) if f.exists() else {"nodes": {}, "rejected": {}}

    def save_profiles(self, data: dict[str, Any]) -> None:
        blob = json.dumps(data, indent=2, sort_keys=True).encode()
        _atomic_write(self.path / "profiles.json", lambda fh: fh.write(blob))

    def append_plan(self, record: dict[str, Any]) -> None:
        _append_line(self.path / "plans.jsonl", json.dumps(record, sort_keys=True))

    # metrics ------------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        _append_line(self.path / "metrics.jsonl", json.dumps(record))

    def read_metrics(self) -> list[dict[str, Any]]:
        """Rows of ``metrics.jsonl``; a torn last line (crash mid-write) is dropped with a warning.

        Raises
        ------
        ValueError
            When a line other than the last is not a JSON object (the file was edited or damaged).
        """
        f = self.path / "metrics.jsonl"
        if not f.exists():
            return []
        lines = [(i, line) for i, line in enumerate(f.read_text().splitlines(), 1) if line.strip()]
        rows: list[dict[str, Any]] = []
        for pos, (lineno, line) in enumerate(lines):
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if pos == len(lines) - 1:
                    log.warning("%s: dropping torn last line %d (%s)", f, lineno, exc)
                    break
                raise ValueError(f"{f}: line {lineno} is not a metrics record ({exc})") from None
            rows.append(row)
        return rows

    def truncate_metrics(self, last_round: int) -> None:
        """Drop metric lines of rounds after ``last_round`` (written after the last checkpoint) and a
        torn last line."""
        rows = [r for r in self.read_metrics() if _round_of(r) <= last_round]
        blob = "".join(json.dumps(r) + "\n" for r in rows).encode()
        _atomic_write(self.path / "metrics.jsonl", lambda fh: fh.write(blob))

    # checkpoints --------------------------------------------------------------------------------
    def checkpoint_rounds(self) -> list[int]:
        rounds = []
        for f in (self.path / "checkpoints").glob("round-*.pt"):
            m = re.fullmatch(r"round-(\d+)\.pt", f.name)
            if m:
                rounds.append(int(m.group(1)))
        return sorted(rounds)

    def save_checkpoint(self, server_round: int, state: dict[str, Any]) -> Path:
        path = self.path / "checkpoints" / f"round-{server_round}.pt"
        _atomic_write(path, lambda fh: torch.save(state, fh))
        for old in self.checkpoint_rounds()[:-KEEP_CHECKPOINTS]:
            (self.path / "checkpoints" / f"round-{old}.pt").unlink(missing_ok=True)
        return path

    def load_checkpoint(
        self,
        server_round: int,
        method: str | None = None,
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> dict[str, Any]:
        """Load ``round-<n>.pt`` tensor-only (``weights_only=True``) and check it against the run.

        Raises
        ------
        CheckpointError
            If it does not load (truncated, empty, a pickle with code) or does not match.
        """
        path = self.path / "checkpoints" / f"round-{server_round}.pt"
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
            raise CheckpointError(
                f"{path.name} does not load: {type(exc).__name__}: {exc}"
            ) from None
        check_checkpoint(state, method, shapes)
        if state["round"] != server_round:
            raise CheckpointError(f"{path.name} holds round {state['round']}")
        return dict(state)

    def load_latest_checkpoint(
        self, method: str | None = None, shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """The newest checkpoint that loads and matches the run, or ``None``.

        A bad one is renamed ``round-<n>.pt.rejected`` (kept for inspection, never loaded again)
        and the next older one is tried, with a warning.
        """
        for rnd in reversed(self.checkpoint_rounds()):
            try:
                return rnd, self.load_checkpoint(rnd, method, shapes)
            except CheckpointError as exc:
                path = self.path / "checkpoints" / f"round-{rnd}.pt"
                log.warning("checkpoint %s rejected, trying an older one: %s", path, exc)
                path.replace(path.with_name(path.name + ".rejected"))
        return None


def _round_of(row: dict[str, Any]) -> int:
    r = row.get("round", 0)
    return r if isinstance(r, int) else 0
