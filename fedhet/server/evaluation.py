"""Evaluation on the server: pooling the devices' local-test replies, and the global test set.

Federated accuracy is Σ correct / Σ samples over the nodes' local test sets, never a mean of
per-node means (METHODS.md §7.2 step 7). The global test set is loaded once, lazily; a server
that cannot load it (data only on the devices) logs why and skips server-side evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from flwr.app import Message, MetricRecord

from fedhet.data.base import TensorData
from fedhet.server.ledger import RoundLog
from fedhet.server.registration import Node
from fedhet.server.trust import read_eval_reply
from fedhet.server.validate import ReplyError

log = logging.getLogger("fedhet")


class GlobalTest:
    """The run's global test set, loaded on first use; ``None`` when disabled or unavailable.

    Parameters
    ----------
    dataset : str
        Registered dataset name.
    enabled : bool
        ``server-eval`` of the run config.
    """

    def __init__(self, dataset: str, enabled: bool) -> None:
        self.dataset = dataset
        self.disabled = not enabled
        self._data: TensorData | None = None

    def get(self) -> TensorData | None:
        """The test set, or ``None`` (server-side evaluation off or the data is not here)."""
        if self.disabled:
            return None
        if self._data is None:
            try:
                from fedhet.data import global_test

                self._data = global_test(self.dataset)
            except Exception as exc:  # data may live only on the devices in deployment
                log.warning("server-side evaluation disabled: %s", exc)
                self.disabled = True
                return None
        return self._data


def global_model_metrics(
    model_name: str, arrays: Mapping[str, np.ndarray], data: TensorData
) -> dict[str, float]:
    """Accuracy and mean loss of the full global model on ``data``.

    Returns
    -------
    dict[str, float]
        ``server-accuracy`` and ``server-loss``.
    """
    from fedhet.core.training import evaluate_model
    from fedhet.models import build_model

    model = build_model(model_name, num_classes=data.num_classes)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    correct, total, loss = evaluate_model(model, data, batch_size=256)
    return {"server-accuracy": correct / max(total, 1), "server-loss": loss / max(total, 1)}


def pool_eval_replies(
    replies: Iterable[Message],
    node_of: Callable[[Message], Node | None],
    current: RoundLog,
    totals: dict[str, int],
) -> MetricRecord | None:
    """Validate evaluate replies and pool them; bad ones are dropped with a logged reason.

    Each reply must carry ``eval-correct``, ``num-examples`` and ``eval-loss`` (summed over the
    node's samples), finite, with ``eval-correct <= num-examples <=`` the local test size the node
    declared (:func:`~fedhet.server.trust.read_eval_reply`), so the pooled accuracy stays in [0, 1]. The node's entry gets ``eval-accuracy``, ``eval-examples`` and any other
    ``eval-*`` metric the device sent; its bytes are added to the ledger.

    Parameters
    ----------
    replies : Iterable[Message]
        The round's evaluate replies.
    node_of : Callable[[Message], Node | None]
        The registered node a reply answers for (``None``: unknown).
    current : RoundLog
        The round's ledger, updated in place.
    totals : dict[str, int]
        Run byte totals, updated in place.

    Returns
    -------
    MetricRecord | None
        ``eval-accuracy``, ``eval-loss`` and ``eval-examples``; ``None`` without usable replies.
    """
    correct = total = 0
    loss = 0.0
    for reply in replies:
        node = node_of(reply)
        if node is None or reply.has_error():
            reason = str(reply.error.reason) if reply.has_error() else "unknown node"
            # an error reply's sender is the SuperLink: name the node it was meant for
            node_id = node.node_id if node else reply.metadata.src_node_id
            current.drop(node_id, node.device_id if node else None, "evaluate", reason)
            continue
        try:
            totals["bytes-up"] += current.count(node, reply.content, "up", payload=False)
            c, n, lo, m = read_eval_reply(reply.content, node.profile.num_test)
        except Exception as exc:  # no exception from one reply escapes the round
            reason = str(exc) if isinstance(exc, ReplyError) else f"{type(exc).__name__}: {exc}"
            current.drop(node.node_id, node.device_id, "evaluate", f"bad reply: {reason}")
            continue
        correct, total, loss = correct + c, total + n, loss + lo
        entry = current.node(node)
        entry["eval-accuracy"] = c / n if n else None
        entry["eval-examples"] = n
        entry.update({k: v for k, v in m.items() if k.startswith("eval-") and k not in entry})
    if total == 0:
        return None
    return MetricRecord(
        {"eval-accuracy": correct / total, "eval-loss": loss / total, "eval-examples": total}
    )
