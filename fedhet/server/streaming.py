"""Streaming aggregation: a round's replies are added one by one, never held together (issue 15,
item 4, "Server memory").

For the sample-weighted mean (B2 ``plain``, :class:`fedhet.core.aggregate.WeightedSum`: FedAvg,
FedAvg-drop, pFedAFM's G) and the masked ``holders`` rule (:class:`~fedhet.core.aggregate.MaskedSum`
over one contribution per reply: HeteroFL, FedRolex), the server does not need every reply at
once: it can add each checked reply to float64 running sums and let it go. What it keeps per reply is bookkeeping (node, metrics, example count, update norm), so
the ServerApp's memory is a small multiple of the model plus per-device bookkeeping, whatever
the number of sampled devices.

Two paths, chosen by the run's norm-outlier filter (``outlier-factor``, :mod:`fedhet.server.trust`):

* **filter off** (``outlier-factor = 0`` or a method whose update sizes are not comparable): each
  checked reply is added to the running sum as soon as it is read; a reply whose update norm is
  not finite is dropped and logged first, as :func:`~fedhet.server.trust.drop_outliers` does.
  Replies are added in arrival order (on the in-process grid: send order).
* **filter on** (the default): whether a reply is an outlier depends on the round's median norm,
  which is known only after the last reply. Each checked reply's norm is computed when it is
  read, its arrays are written to a spill file in a temporary folder and released; once every
  reply is in, the outliers are dropped (the same rule, :func:`fedhet.core.robust.norm_outliers`)
  and the kept replies are read back one at a time, in send order, into the running sum. The
  result is bit-identical to the list-based aggregation (same contributions, same order, same
  float64 operations); the cost is one write and one read of each reply on local disk.

Every check that ran before a reply was aggregated still runs before it is added (a bad reply is
dropped with its reason, never added); an aggregate that is not finite is rolled back
(:func:`~fedhet.server.trust.guarded_aggregate`). Other methods' own ``aggregate`` (FIARSE,
CoCoFL, GENE-FL, FedIT, FL-TAC, Standalone) and the robust rules (``trimmed-mean``, ``median``:
coordinate-wise order statistics need every reply) keep the list-based path.

Replies are pulled a few message ids at a time (:func:`fedhet.server.messaging.pull_chunk_for`:
about 8 MB of replies per pull), so the pull itself never brings back the whole round.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedhet.core.aggregate import Contribution, MaskedSum, WeightedSum
from fedhet.core.robust import norm_outliers
from fedhet.server.ledger import RoundLog
from fedhet.server.replies import Reply
from fedhet.server.trust import guarded_aggregate, update_norms

log = logging.getLogger("fedhet")


class Spill:
    """Arrays of replies parked on local disk between the two passes of the filtered path.

    Each reply is one file of consecutive ``.npy`` records (no pickles); only the names stay in
    memory. Used as a context manager: the folder is removed on exit.
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="fedhet-spill-", dir=parent))
        self._names: dict[int, list[str]] = {}

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, key: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write ``arrays`` under ``key``."""
        with open(self.folder / f"{key}.npy", "wb") as f:
            for a in arrays.values():
                np.save(f, np.asarray(a), allow_pickle=False)
        self._names[key] = list(arrays)

    def get(self, key: int) -> dict[str, np.ndarray]:
        """The arrays written under ``key``."""
        with open(self.folder / f"{key}.npy", "rb") as f:
            return {name: np.load(f, allow_pickle=False) for name in self._names[key]}

    def close(self) -> None:
        """Remove the folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)


class PlainRule:
    """B2 ``plain``: the sample-weighted mean of the replies' arrays; a reply without examples
    adds nothing (the default ``aggregate``)."""

    def __init__(self, base: Mapping[str, np.ndarray]) -> None:
        self.acc = WeightedSum(base)

    @property
    def count(self) -> int:
        """Contributions added."""
        return self.acc.count

    def check(self, reply: Reply) -> None:
        """Raise ValueError if the reply cannot be added."""
        self.acc.check(reply.arrays)

    def add(self, reply: Reply) -> None:
        """Add the reply (checked first)."""
        if reply.num_examples > 0:
            self.acc.add(reply.arrays, float(reply.num_examples))

    def result(self) -> dict[str, np.ndarray]:
        """The new global arrays."""
        return self.acc.result()


class MaskedRule:
    """B2 ``holders`` / ``zero-fill`` over the contribution a method makes of each reply
    (:class:`fedhet.core.aggregate.MaskedSum`; HeteroFL, FedRolex)."""

    def __init__(
        self,
        base: Mapping[str, np.ndarray],
        contribution: Callable[[Reply], Contribution],
        mode: str = "holders",
        server_lr: float = 1.0,
    ) -> None:
        self.acc = MaskedSum(base)
        self.contribution = contribution
        self.mode, self.server_lr = mode, server_lr

    @property
    def count(self) -> int:
        """Contributions added."""
        return self.acc.count

    def check(self, reply: Reply) -> None:
        """Raise ValueError if the reply cannot be added."""
        self.acc.check(self.contribution(reply))

    def add(self, reply: Reply) -> None:
        """Add the reply's contribution (checked first)."""
        self.acc.add(self.contribution(reply))

    def result(self) -> dict[str, np.ndarray]:
        """The new global arrays."""
        return self.acc.result(mode=self.mode, server_lr=self.server_lr)


class _Streaming(Protocol):
    """The strategy side of :func:`stream_mean` (:class:`~fedhet.server.strategy.FedhetStrategy`)."""

    global_arrays: dict[str, np.ndarray]
    current: RoundLog
    run_dir: Any

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def note_replies(self, server_round: int, replies: list[Reply]) -> None: ...

    def stream_rule(self, server_round: int) -> PlainRule | MaskedRule: ...


def _drop(current: RoundLog, reply: Reply, reason: str) -> None:
    current.node(reply.node)["status"] = "dropped"
    current.drop(reply.node.node_id, reply.node.device_id, "train", reason)


def _light(reply: Reply) -> Reply:
    """The reply without its arrays: what the round's metrics need."""
    return Reply(reply.node, {}, reply.metrics, reply.num_examples)


def stream_mean(
    strategy: _Streaming,
    server_round: int,
    replies: Iterable[Reply],
    sent: Mapping[int, Mapping[str, np.ndarray]],
    factor: float,
    order: Mapping[int, int],
    spill_dir: str | Path | None = None,
) -> list[Reply]:
    """The strategy's streamed rule (:class:`PlainRule` or :class:`MaskedRule`, from its
    ``stream_rule``) over checked replies, one reply in memory at a time.

    Parameters
    ----------
    strategy : FedhetStrategy
        Its ``global_arrays`` are replaced by the mean (kept when no reply has examples or the
        result is not finite).
    server_round : int
        The round (for the log).
    replies : Iterable[Reply]
        Checked replies, as :func:`fedhet.server.replies.iter_train_replies` yields them.
    sent : Mapping[int, Mapping[str, np.ndarray]]
        What each node was sent for training, by node id (empty when replies are updates).
    factor : float
        ``outlier-factor``; 0 disables the norm test (non-finite updates are still dropped) and
        with it the spill.
    order : Mapping[int, int]
        Send position of each node id (the filtered path adds replies in this order).
    spill_dir : str or Path, optional
        Where the filtered path's temporary folder goes (default: the strategy's run folder, so
        the spill lands on the output disk rather than a RAM-backed ``/tmp``; without a run
        folder, the system's temporary folder).

    Returns
    -------
    list[Reply]
        The replies aggregated (outliers left out), without their arrays; the strategy's
        ``note_replies`` gets them after the mean.
    """
    acc = strategy.stream_rule(server_round)
    kept: list[Reply] = []
    norms: dict[Hashable, float] = {}
    if spill_dir is None and getattr(strategy, "run_dir", None) is not None:
        spill_dir = strategy.run_dir.path
    shared: tuple[int, dict[str, np.ndarray]] = (0, {})  # float64 copy of a payload sent to all
    with Spill(spill_dir) if factor > 0 else _NoSpill() as spill:
        for reply in replies:
            nid = reply.node.node_id
            ref = sent.get(nid, {})
            if ref is strategy.global_arrays:  # FedAvg: one conversion per round, not per reply
                if shared[0] != id(ref):
                    shared = (id(ref), {k: np.asarray(v, np.float64) for k, v in ref.items()})
                ref = shared[1]
            norm = update_norms({nid: reply.arrays}, {nid: ref})[nid]
            if not math.isfinite(norm):
                _drop(strategy.current, reply, "update norm is not finite")
                continue
            try:
                if factor > 0:
                    acc.check(reply)
                    spill.put(nid, reply.arrays)
                else:
                    with np.errstate(over="ignore", invalid="ignore"):
                        acc.add(reply)
            except Exception as exc:  # as in iter_train_replies: one reply never ends the round
                _drop(strategy.current, reply, f"{type(exc).__name__}: {exc}")
                continue
            norms[nid] = norm
            kept.append(_light(reply))
            del reply
        if factor > 0:
            bad = norm_outliers(norms, factor)
            for r in kept:
                if r.node.node_id in bad:
                    _drop(strategy.current, r, str(bad[r.node.node_id]))
            kept = [r for r in kept if r.node.node_id not in bad]
            kept.sort(key=lambda r: order.get(r.node.node_id, len(order)))

        def finish() -> None:
            if factor > 0:
                for r in kept:
                    acc.add(Reply(r.node, spill.get(r.node.node_id), r.metrics, r.num_examples))
            if acc.count:
                strategy.global_arrays = acc.result()

        if kept:
            guarded_aggregate(strategy, server_round, finish, strategy.current)
            strategy.note_replies(server_round, kept)  # metrics-only bookkeeping, after the mean
    return kept


class _NoSpill(Spill):
    """No folder: the unfiltered path adds replies at once."""

    def __init__(self) -> None:
        self._names = {}

    def close(self) -> None:
        """Nothing to remove."""
