"""An in-process Grid: the real ClientApp handlers on real Flower Messages, without Ray or a SuperLink.

Used by the method matrix tests (DESIGN.md "Testing") and by the benchmarks, where spawning a Ray
cluster per method would cost more than the training on 2 cores. Each node keeps its own
``Context`` (node config and ``context.state``) across rounds, as a SuperNode does. Nodes can be
made to fail (error replies, as the SuperLink sends for a dead node), to join late, or to corrupt
their replies, so the server's handling of each is testable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SUPERLINK_NODE_ID = 1


class LocalGrid(Grid):
    """Dispatch messages to an in-process ClientApp for a set of simulated nodes.

    Parameters
    ----------
    client_app : Any
        A ``flwr.clientapp.ClientApp`` (called as ``app(message, context)``).
    node_configs : list[dict]
        One node config per node (e.g. ``{"partition-id": i, "num-partitions": n}``).
    run_config : dict
        Flower's flat run config.
    run_id : int
        The run id the nodes' contexts carry.
    keep_sent : bool
        Keep every sent message in :attr:`sent_log` (tests inspect them). Off for long runs: with
        100 devices a round's messages hold 100 copies of the model.
    reply_at_pull : bool
        Run a node's handler when its reply is pulled, not when the message is pushed, so the
        grid never holds a round's replies (as a SuperLink holds them outside the ServerApp's
        process); the server-memory benchmark measures the ServerApp alone this way.
    """

    def __init__(
        self,
        client_app: Any,
        node_configs: list[dict[str, Any]],
        run_config: dict[str, Any],
        run_id: int = 1,
        keep_sent: bool = True,
        reply_at_pull: bool = False,
    ) -> None:
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = 0
        self.client_app = client_app
        self.run_config = dict(run_config)
        self.contexts: dict[int, Context] = {}
        self.offline: set[int] = set()
        self.fail_next: dict[int, str] = {}
        self.corrupt: Callable[[int, Message], Message | None] | None = None
        self._replies: dict[str, Message | None] = {}
        self._run: Any = None
        self.sent_log: list[Message] = []
        self.keep_sent = keep_sent
        self.reply_at_pull = reply_at_pull
        self._pushed: dict[str, Message] = {}
        for cfg in node_configs:
            self.add_node(cfg)

    def add_node(self, node_config: dict[str, Any]) -> int:
        """Connect a new node (e.g. one joining mid-run); returns its node id."""
        node_id = 1000 + len(self.contexts)
        self.contexts[node_id] = Context(
            run_id=TaskIdentity.run_id,
            node_id=node_id,
            node_config=dict(node_config),
            state=RecordDict(),
            run_config=self.run_config,
        )
        return node_id

    # Grid API --------------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            ids.append(msg.metadata.message_id)
            if self.keep_sent:
                self.sent_log.append(msg)
            if self.reply_at_pull:
                self._pushed[msg.metadata.message_id] = msg
            else:
                self._replies[msg.metadata.message_id] = self._handle(msg)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        for i in ids:
            if i in self._pushed:
                self._replies[i] = self._handle(self._pushed.pop(i))
        replies = [self._replies.pop(i, None) for i in ids]
        return [r for r in replies if r is not None]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return [r for r in self.pull_messages(ids) if r is not None]

    # dispatch --------------------------------------------------------------------------------
    def _error(self, msg: Message, reason: str) -> Message:
        reply = Message(Error(code=0, reason=reason), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # as the SuperLink sends it
        return reply

    def _handle(self, msg: Message) -> Message | None:
        node_id = msg.metadata.dst_node_id
        if node_id in self.offline or node_id not in self.contexts:
            return self._error(msg, "node is offline")
        if node_id in self.fail_next:
            return self._error(msg, self.fail_next.pop(node_id))
        reply = self.client_app(msg, self.contexts[node_id])
        if self.corrupt is not None:
            reply = self.corrupt(node_id, reply)
        return reply


def simulated_node_configs(num_nodes: int, **extra: Any) -> list[dict[str, Any]]:
    """Node configs as Flower's simulation engine makes them (partition-id, num-partitions)."""
    return [{"partition-id": i, "num-partitions": num_nodes, **extra} for i in range(num_nodes)]


def build_local(
    raw: dict[str, Any],
    node_configs: list[dict[str, Any]],
    run_dir: str | Path,
    *,
    client_app: Any = None,
    keep_sent: bool = False,
) -> tuple[Any, LocalGrid]:
    """The strategy of ``raw``'s method and an in-process grid of ``node_configs``, not started.

    Parameters
    ----------
    raw : dict
        Flower's flat run config (parsed with :func:`fedhet.methods.parse_run_config`).
    node_configs : list of dict
        One node config per simulated device (e.g. from :func:`simulated_node_configs`).
    run_dir : str or Path
        The run folder.
    client_app : ClientApp, optional
        Defaults to fedhet's ClientApp.
    keep_sent : bool
        Keep every sent message in ``grid.sent_log`` (tests; costs memory at scale).

    Returns
    -------
    tuple
        ``(strategy, grid)``; the grid keeps each device's ``context.state``.
    """
    from fedhet.methods import get_method, parse_run_config
    from fedhet.server.run_dir import RunDir

    if client_app is None:
        from client_app.app import app as client_app
    cfg = parse_run_config(raw)
    grid = LocalGrid(client_app, node_configs, raw, keep_sent=keep_sent)
    strategy = get_method(cfg.shared.method).strategy_cls(cfg, RunDir(run_dir))
    return strategy, grid


def run_local(
    raw: dict[str, Any],
    node_configs: list[dict[str, Any]],
    run_dir: str | Path,
    *,
    client_app: Any = None,
) -> Any:
    """Run (or resume) the method of ``raw`` on an in-process grid of ``node_configs``.

    The real ClientApp handlers (``client_app.app`` unless ``client_app`` is given) answer real
    Messages; the strategy writes its normal run folder at ``run_dir``. See :func:`build_local`.

    Returns
    -------
    FedhetStrategy
        The strategy after :meth:`start` (its ``history`` holds this call's rounds).
    """
    strategy, grid = build_local(raw, node_configs, run_dir, client_app=client_app)
    strategy.start(grid)
    return strategy
