"""What the server does with replies it cannot trust (DESIGN.md "Trust"; issue 10 items 2, 3, 5, 6).

The round loop calls these helpers so that one hostile or broken device can neither stop a round
nor poison the model or the report:

* :func:`read_train_reply` / :func:`read_eval_reply`: records, arrays and metrics checked before
  anything is decoded (:mod:`fedhet.server.validate`), example counts capped by what the node
  declared when it registered;
* :func:`update_norms`: each update's L2 norm relative to what the server sent that node, for the
  norm-outlier filter (:func:`fedhet.core.robust.norm_outliers`);
* :func:`drop_outliers` / :func:`guarded_aggregate`: the round's norm-outlier filter, and an
  aggregation that is rolled back (global arrays and method state) when its result is not finite;
* :class:`IdleWatch`: a run in which no node trained for ``max-idle-rounds`` consecutive rounds
  ends as failed with the reason;
* :func:`device_in_use`: a second live node claiming a ``device-id`` already in use is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fedhet.core.robust import non_finite, norm_outliers
from fedhet.server.validate import (
    ArraySpec,
    ReplyError,
    check_metrics,
    decode_arrays,
    validate_eval_metrics,
    validate_train_metrics,
)

log = logging.getLogger("fedhet")

#: The records a train/evaluate reply may carry (``fedhet.client.runtime.reply_content``).
REPLY_ARRAY_RECORDS = frozenset({"arrays"})
REPLY_METRIC_RECORDS = frozenset({"metrics"})


class RunFailed(RuntimeError):
    """The run cannot go on (e.g. no node trained for ``max-idle-rounds`` rounds)."""


@dataclass(frozen=True)
class TrustSettings:
    """The run-config keys of the trust boundary (``[tool.flwr.app.config]``)."""

    aggregation: str = "mean"
    trim_fraction: float = 0.2
    outlier_factor: float = 10.0
    max_reply_bytes: int = 0
    max_idle_rounds: int = 5

    @classmethod
    def from_shared(cls, shared: Any) -> TrustSettings:
        """Read the keys from a :class:`fedhet.config.SharedConfig`."""
        return cls(
            aggregation=str(shared.aggregation),
            trim_fraction=float(shared.trim_fraction),
            outlier_factor=float(shared.outlier_factor),
            max_reply_bytes=int(shared.max_reply_bytes),
            max_idle_rounds=int(shared.max_idle_rounds),
        )


@dataclass
class TrainReply:
    """A train reply's checked content."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, Any]
    num_examples: int
    infeasible: bool = False


def _check_records(content: Any) -> None:
    arrays = set(content.array_records)
    metrics = set(content.metric_records)
    configs = set(content.config_records)
    extra = sorted((arrays - REPLY_ARRAY_RECORDS) | (metrics - REPLY_METRIC_RECORDS) | configs)
    if extra:
        raise ReplyError(f"unexpected records {[str(e)[:40] for e in extra[:5]]} in the reply")


def reply_metrics(content: Any) -> dict[str, Any]:
    """The reply's ``metrics`` record, checked (finite, bounded, not too many values)."""
    _check_records(content)
    rec = content.metric_records.get("metrics")
    return check_metrics(dict(rec)) if rec is not None else {}


def read_train_reply(
    content: Any,
    spec: Mapping[str, ArraySpec],
    *,
    sizes: Mapping[str, int] | None = None,
    declared_examples: int | None = None,
    max_reply_bytes: int = 0,
    open_length_bytes: int = 0,
) -> TrainReply:
    """Check and decode a train reply (``RecordDict``) against the node's plan.

    Parameters
    ----------
    content : flwr.app.RecordDict
        The reply's content.
    spec : Mapping[str, ArraySpec]
        The arrays the server allows from this node this round (names, shapes, dtypes).
    sizes : Mapping[str, int], optional
        Exact element counts of open-length arrays.
    declared_examples : int, optional
        The training-set size the node declared at registration: ``num-examples`` is capped there.
    max_reply_bytes : int
        Run-config ``max-reply-bytes`` (0: only the plan's bound).
    open_length_bytes : int
        Plan bound for an open-length array without a size.

    Raises
    ------
    ReplyError
        Naming what is wrong; the caller drops the reply with this reason.
    """
    metrics = reply_metrics(content)
    if metrics.get("infeasible"):
        return TrainReply({}, metrics, 0, infeasible=True)
    rec = content.array_records.get("arrays", {})
    arrays = decode_arrays(
        rec,
        spec,
        sizes=sizes,
        max_bytes=max_reply_bytes,
        open_length_bytes=open_length_bytes,
    )
    n = validate_train_metrics(metrics, declared_examples)
    return TrainReply(arrays, metrics, n)


def read_eval_reply(
    content: Any, declared_test: int | None = None
) -> tuple[int, int, float, dict[str, Any]]:
    """``(correct, examples, loss_sum, metrics)`` of an evaluate reply, checked.

    ``examples`` is bounded by the node's declared local test size, ``correct <= examples``, every
    value finite: the federation's accuracy Σ correct / Σ examples stays in [0, 1].
    """
    metrics = reply_metrics(content)
    if content.array_records.get("arrays"):
        raise ReplyError("an evaluate reply carries no arrays")
    c, n, loss = validate_eval_metrics(metrics, declared_test)
    return c, n, loss, metrics


def update_norms(
    replies: Mapping[Any, Mapping[str, np.ndarray]],
    sent: Mapping[Any, Mapping[str, np.ndarray]],
) -> dict[Any, float]:
    """Root-mean-square size of each reply's update, relative to what the server sent that node.

    An array whose name and shape match an array sent to the node counts as ``reply − sent``
    (full models, submodel slices, adapter slots); any other array is taken as an update already
    (values of sparse updates, e.g. FIARSE's ``<name>.values``). Integer counters are skipped.

    The L2 norm is divided by √(number of uploaded values), so devices that train submodels or
    windows of different sizes (the point of a heterogeneous fleet) are compared per coordinate,
    not penalised for uploading more.
    """
    out: dict[Any, float] = {}
    for key, arrays in replies.items():
        base = sent.get(key, {})
        total = 0.0
        count = 0
        with np.errstate(over="ignore", invalid="ignore"):
            for name, arr in arrays.items():
                a = np.asarray(arr)
                if not np.issubdtype(a.dtype, np.floating):
                    continue
                diff = a.astype(np.float64)
                ref = base.get(name)
                if ref is not None and np.shape(ref) == a.shape:
                    diff = diff - np.asarray(ref, dtype=np.float64)
                total += float(np.sum(np.square(diff)))
                count += a.size
        out[key] = math.sqrt(total / max(count, 1)) if math.isfinite(total) else math.inf
    return out


class IdleWatch:
    """Counts consecutive rounds in which no node trained.

    Parameters
    ----------
    max_idle_rounds : int
        The run fails once this many consecutive rounds trained nothing (0: never).
    """

    def __init__(self, max_idle_rounds: int) -> None:
        self.max_idle_rounds = max_idle_rounds
        self.idle = 0

    def observe(self, server_round: int, num_trained: int) -> str | None:
        """Record a round; return the failure reason when the limit is reached."""
        self.idle = 0 if num_trained > 0 else self.idle + 1
        if self.max_idle_rounds and self.idle >= self.max_idle_rounds:
            return (
                f"no node trained for {self.idle} consecutive rounds (rounds "
                f"{server_round - self.idle + 1}-{server_round}; 'max-idle-rounds' is "
                f"{self.max_idle_rounds}): see 'dropped' in metrics.jsonl for why"
            )
        return None


def device_in_use(
    holders: Iterable[tuple[int, str]], node_id: int, device_id: str, live: set[int]
) -> int | None:
    """The live node (other than ``node_id``) that already holds ``device_id``, if any.

    ``holders`` are ``(node_id, device_id)`` pairs of registered nodes. A holder that is no longer
    connected does not count (a restarted device re-registers under a new node id).
    """
    for other, dev in holders:
        if dev == device_id and other != node_id and other in live:
            return other
    return None


class _Update(Protocol):
    """What the outlier filter needs of a validated reply (:class:`fedhet.server.replies.Reply`)."""

    @property
    def node(self) -> Any: ...

    @property
    def arrays(self) -> dict[str, np.ndarray]: ...


class _Ledger(Protocol):
    """What the round helpers write to (:class:`fedhet.server.ledger.RoundLog`)."""

    extras: dict[str, Any]

    def node(self, node: Any) -> dict[str, Any]: ...

    def drop(self, node_id: int, device_id: str | None, stage: str, reason: str) -> None: ...


def drop_outliers(
    valid: Sequence[_Update],
    sent: Mapping[int, Mapping[str, np.ndarray]],
    factor: float,
    current: _Ledger,
) -> list[Any]:
    """The replies whose update size is not far outside the round's others.

    Each dropped reply is logged in ``current`` (``dropped``, stage ``train``) with its norm and the
    round's median (:func:`fedhet.core.robust.norm_outliers` over :func:`update_norms`).

    Parameters
    ----------
    valid : Sequence[Reply]
        The round's validated replies.
    sent : Mapping[int, Mapping[str, np.ndarray]]
        What each node was sent for training (empty when replies are updates already).
    factor : float
        Run-config ``outlier-factor`` (0: only non-finite updates are dropped).
    current : RoundLog
        The round's ledger.
    """
    norms = update_norms({r.node.node_id: r.arrays for r in valid}, sent)
    bad = norm_outliers(norms, factor)
    for r in valid:
        if r.node.node_id in bad:
            current.node(r.node)["status"] = "dropped"
            current.drop(r.node.node_id, r.node.device_id, "train", str(bad[r.node.node_id]))
    return [r for r in valid if r.node.node_id not in bad]


def _non_finite_state(state: Any, path: str = "strategy") -> list[str]:
    """Paths of non-finite float tensors/arrays inside a method's ``state_dict``."""
    if isinstance(state, dict):
        return [p for k, v in state.items() for p in _non_finite_state(v, f"{path}/{k}")]
    if isinstance(state, list | tuple):
        return [p for i, v in enumerate(state) for p in _non_finite_state(v, f"{path}/{i}")]
    if isinstance(state, torch.Tensor) and state.is_floating_point():
        return [] if bool(torch.isfinite(state).all()) else [path]
    if isinstance(state, np.ndarray) and np.issubdtype(state.dtype, np.floating):
        return [] if bool(np.isfinite(state).all()) else [path]
    return []


class _Aggregating(Protocol):
    """The strategy side :func:`guarded_aggregate` works on (:class:`FedhetStrategy`)."""

    global_arrays: dict[str, np.ndarray]

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def guarded_aggregate(
    strategy: _Aggregating,
    server_round: int,
    aggregate: Callable[[], None],
    current: _Ledger,
) -> str:
    """Run ``aggregate``; keep its result only if every global array and method state is finite.

    Otherwise the previous global arrays and method state (``state_dict``) are restored, the reason
    goes to ``current.extras["rolled-back"]`` and the log. Returns the reason ('' when kept).
    """
    previous = {k: np.array(v, copy=True) for k, v in strategy.global_arrays.items()}
    previous_state = strategy.state_dict()
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            aggregate()
        bad = non_finite(strategy.global_arrays) + _non_finite_state(strategy.state_dict())
        reason = f"aggregate not finite in {bad[:5]}" if bad else ""
    except (ValueError, ArithmeticError) as exc:
        reason = f"aggregation failed: {type(exc).__name__}: {exc}"
    if reason:
        strategy.global_arrays = previous
        strategy.load_state_dict(previous_state)
        current.extras["rolled-back"] = reason
        log.error("round %d: %s; kept the previous global model", server_round, reason)
    return reason
