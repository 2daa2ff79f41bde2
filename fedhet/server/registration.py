"""Registration: the profile query, the Node table, planning, ``profiles.json`` (METHODS.md §2).

Before every round, nodes the server has not seen get a ``query.profile`` message; a valid
:class:`~fedhet.profile.DeviceProfile` becomes a :class:`~fedhet.plan.NodePlan` (budget + the
method's typed knobs) and the node joins the :class:`NodeTable`. A bad profile is rejected with
its reason and the node is left out of planning; a node that does not answer is asked again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedhet.config import ConfigError
from fedhet.core.seeding import rng
from fedhet.plan import NodePlan
from fedhet.profile import DeviceProfile, parse_profile
from fedhet.server.run_dir import RunDir

log = logging.getLogger("fedhet")

QUERY_PROFILE = "query.profile"
REGISTRATION_TIMEOUT_S = 120.0

#: Plans a node: ``(node_id, profile) → NodePlan``.
Planner = Callable[[int, DeviceProfile], NodePlan]


@dataclass
class Node:
    """A registered device: its Flower node id, its profile and the server's plan for it."""

    node_id: int
    profile: DeviceProfile
    plan: NodePlan

    @property
    def device_id(self) -> str:
        """The device's stable id (survives a SuperNode restart under a new node id)."""
        return self.profile.device_id


@dataclass
class NodeTable:
    """Registered nodes by node id, and rejected node ids with the reason."""

    nodes: dict[int, Node] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    #: node id by device id, so registering N devices costs O(N), not O(N²).
    _by_device: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, node_id: int, profile: DeviceProfile, planner: Planner) -> Node:
        """Plan and register ``node_id``; a device seen before under another node id keeps one entry.

        A restarted insecure SuperNode comes back under a new node id with the same device id:
        its old entry is removed before the new one is planned.
        """
        old_id = self._by_device.get(profile.device_id)
        if old_id is not None and old_id != node_id:
            old = self.nodes.get(old_id)
            if old is not None and old.device_id == profile.device_id:
                log.info(
                    "device %s re-registered: node %s → %s", profile.device_id, old_id, node_id
                )
                del self.nodes[old_id]
        previous = self.nodes.get(node_id)
        if previous is not None and previous.device_id != profile.device_id:
            self._by_device.pop(previous.device_id, None)
        node = Node(node_id, profile, planner(node_id, profile))
        self.nodes[node_id] = node
        self._by_device[profile.device_id] = node_id
        return node

    def unseen(self, live: list[int]) -> list[int]:
        """Live node ids that are neither registered nor rejected, sorted."""
        return sorted(n for n in live if n not in self.nodes and n not in self.rejected)

    def save(self, run_dir: RunDir | None) -> None:
        """Write ``profiles.json``: profiles, plans and rejections by node id."""
        if run_dir is None:
            return
        run_dir.save_profiles(
            {
                "nodes": {str(k): n.profile.to_record() for k, n in self.nodes.items()},
                "plans": {str(k): json.loads(n.plan.to_json()) for k, n in self.nodes.items()},
                "rejected": {str(k): v for k, v in self.rejected.items()},
            }
        )

    def restore(self, run_dir: RunDir | None, live: set[int]) -> None:
        """Reload the registered nodes still connected (``live``) from ``profiles.json``."""
        if run_dir is None:
            return
        data = run_dir.load_profiles()
        for key, raw in data.get("nodes", {}).items():
            node_id = int(key)
            if node_id in live:
                profile = parse_profile(raw)
                plan = NodePlan.model_validate(data["plans"][key])
                self.nodes[node_id] = Node(node_id, profile, plan)
                self._by_device[profile.device_id] = node_id
        if self.nodes:
            log.info("restored %d registered nodes from profiles.json", len(self.nodes))


def query_profiles(
    grid: Grid,
    table: NodeTable,
    query: ConfigRecord,
    planner: Planner,
    timeout: float,
) -> list[Node]:
    """Ask every unseen live node for its profile; plan and register the valid ones.

    Parameters
    ----------
    grid : Grid
        Where the nodes are.
    table : NodeTable
        Registered and rejected nodes; updated in place.
    query : ConfigRecord
        The ``config`` record of the profile query (run name, fleet).
    planner : Planner
        Builds the plan of a newly registered node.
    timeout : float
        Seconds to wait for the replies; a node that does not answer is asked again next time.

    Returns
    -------
    list[Node]
        The nodes registered by this call.
    """
    unseen = table.unseen(list(grid.get_node_ids()))
    if not unseen:
        return []
    msgs = [
        Message(RecordDict({"config": query}), dst_node_id=n, message_type=QUERY_PROFILE)
        for n in unseen
    ]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
    new: list[Node] = []
    for reply in replies:
        node_id = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            log.warning(
                "node %s: profile query failed (%s); will ask again next round",
                node_id,
                reply.error.reason,
            )
            continue
        try:
            if "profile" not in reply.content.config_records:
                raise ConfigError("reply carries no 'profile' record")
            profile = parse_profile(dict(reply.content.config_records["profile"]))
        except ConfigError as exc:
            table.rejected[node_id] = str(exc)
            log.error("node %s: profile rejected, node left out of planning: %s", node_id, exc)
            continue
        new.append(table.add(node_id, profile, planner))
    answered = {sent.get(r.metadata.reply_to_message_id) for r in replies}
    for node_id in sorted(set(unseen) - answered):
        log.warning("node %s: no profile reply within %.0f s; will ask again", node_id, timeout)
    return new


def log_registration(node: Node) -> None:
    """One INFO line per newly planned node (class, budget, exclusion reason)."""
    budget, plan = node.plan.budget, node.plan
    log.info(
        "node %s registered: device %s, class %s, budget T=%.2f M=%.2f D=[%.2f, %.2f]%s",
        node.node_id,
        node.device_id,
        node.profile.device_class,
        budget.time,
        budget.memory,
        budget.upload_min,
        budget.upload_max,
        "" if plan.participate else f", excluded: {plan.reason}",
    )


def sample_nodes(
    nodes: dict[int, Node],
    live: set[int],
    seed: int,
    server_round: int,
    fraction: float,
    purpose: str,
) -> list[Node]:
    """Seeded sample of live, participating, available nodes.

    A node is available in a round with its profile's probability, seeded by (run, device,
    round); ``max(1, ⌊fraction·|pool|⌋)`` of the available ones are drawn, seeded by (run, round,
    ``purpose``). A node with availability 1 is always available, so no generator is built for it
    (the draw could only succeed): sampling 100 of 10,000 always-on devices touches no per-device
    random state.

    Returns
    -------
    list[Node]
        The sample in node-id order; empty when nobody is available or ``fraction`` is 0.
    """
    pool = [
        n
        for nid, n in sorted(nodes.items())
        if nid in live
        and n.plan.participate
        and (
            n.profile.availability >= 1.0
            or rng(seed, n.device_id, server_round, "available").random() < n.profile.availability
        )
    ]
    if not pool or fraction <= 0:
        return []
    k = max(1, min(len(pool), int(len(pool) * fraction)))
    idx = rng(seed, server_round, purpose).choice(len(pool), size=k, replace=False)
    return [pool[i] for i in sorted(idx)]


def wait_for_nodes(
    grid: Grid,
    register: Callable[[], object],
    table: NodeTable,
    min_nodes: int,
    timeout: float,
    server_round: int,
) -> None:
    """Register nodes until ``min_nodes`` registered nodes are connected.

    Raises
    ------
    RuntimeError
        If fewer are there after ``timeout`` seconds (naming ``min-nodes``).
    """
    deadline = time.time() + timeout
    while True:
        register()
        live = set(grid.get_node_ids())
        ready = [n for n in table.nodes if n in live]
        if len(ready) >= min_nodes:
            return
        if time.time() > deadline:
            raise RuntimeError(
                f"round {server_round}: only {len(ready)} registered nodes after "
                f"{timeout:.0f} s; 'min-nodes' is {min_nodes}"
            )
        log.info("waiting for nodes: %d registered and connected, need %d", len(ready), min_nodes)
        time.sleep(1.0)
