"""A run's output folder: ``<output-dir>/<run-name>/`` (DESIGN.md "Outputs of a run").

``config.json``, ``profiles.json``, ``plans.jsonl``, ``metrics.jsonl`` and
``checkpoints/round-<n>.pt``. Writes are atomic (temp file + ``os.replace``) so a crash never leaves a
half-written checkpoint or profile file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

#: Keys that may change between a run and its resumption.
RESUMABLE_KEYS = frozenset({"num-server-rounds", "round-timeout", "min-nodes", "output-dir"})
KEEP_CHECKPOINTS = 3


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """The files of one run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)

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
        with (self.path / "plans.jsonl").open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    # metrics ------------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        f = self.path / "metrics.jsonl"
        if not f.exists():
            return []
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_round: int) -> None:
        """Drop metric lines of rounds after ``last_round`` (written after the last checkpoint)."""
        rows = [r for r in self.read_metrics() if r.get("round", 0) <= last_round]
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

    def load_latest_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        rounds = self.checkpoint_rounds()
        if not rounds:
            return None
        path = self.path / "checkpoints" / f"round-{rounds[-1]}.pt"
        return rounds[-1], torch.load(path, weights_only=False)
