"""Registration: the profile query, the Node table, planning, ``profiles.json`` (METHODS.md §2).

Before every round, nodes the server has not seen get a ``query.profile`` message; a valid
:class:`~fedhet.profile.DeviceProfile` becomes a :class:`~fedhet.plan.NodePlan` (budget + the
method's typed knobs) and the node joins the :class:`NodeTable`. A bad profile is rejected with
its reason and the node is left out of planning, and asked again next round; a node that does not
answer is asked again. A second live node claiming a ``device-id`` already in use is refused the
same way (the first keeps training). The time reference of measured budgets is fixed once, from
the first registration that carries measurements (:func:`fedhet.plan.reference_bench_ms`), so
budgets do not depend on registration order.
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
from fedhet.plan import NodePlan, reference_bench_ms
from fedhet.profile import DeviceProfile, parse_profile
from fedhet.server.messaging import send_and_receive
from fedhet.server.run_dir import RunDir
from fedhet.server.trust import device_in_use

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
    #: Step time measured time budgets are relative to; fixed once for the run.
    reference_bench_ms: float | None = None
    #: The round each node was last asked for its profile.
    asked: dict[int, int] = field(default_factory=dict)
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

    def unseen(self, live: list[int], server_round: int = 0) -> list[int]:
        """Live node ids not registered, sorted; a rejected one only if not yet asked this round."""
        return sorted(
            n
            for n in live
            if n not in self.nodes and (n not in self.rejected or self.asked.get(n) != server_round)
        )

    def save(self, run_dir: RunDir | None) -> None:
        """Write ``profiles.json``: profiles, plans and rejections by node id."""
        if run_dir is None:
            return
        run_dir.save_profiles(
            {
                "nodes": {str(k): n.profile.to_record() for k, n in self.nodes.items()},
                "plans": {str(k): json.loads(n.plan.to_json()) for k, n in self.nodes.items()},
                "rejected": {str(k): v for k, v in self.rejected.items()},
                "reference-bench-ms": self.reference_bench_ms,
            }
        )

    def restore(self, run_dir: RunDir | None, live: set[int]) -> None:
        """Reload the registered nodes still connected (``live``) from ``profiles.json``."""
        if run_dir is None:
            return
        data = run_dir.load_profiles()
        ref = data.get("reference-bench-ms")
        if isinstance(ref, int | float) and not isinstance(ref, bool) and ref > 0:
            self.reference_bench_ms = float(ref)
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
    server_round: int = 0,
    ref_bench_ms: float = 0.0,
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
    server_round : int
        The round registering (a rejected node is asked again once per round).
    ref_bench_ms : float
        Run-config ``ref-bench-ms`` (0: fix the reference from the first measured profiles).

    Returns
    -------
    list[Node]
        The nodes registered by this call.
    """
    live = list(grid.get_node_ids())
    unseen = table.unseen(live, server_round)
    if not unseen:
        return []
    for n in unseen:
        table.asked[n] = server_round
    msgs = [
        Message(RecordDict({"config": query}), dst_node_id=n, message_type=QUERY_PROFILE)
        for n in unseen
    ]
    exchange = send_and_receive(grid, msgs, timeout)
    replies, sent = exchange.replies, exchange.dst
    batch: list[tuple[int, DeviceProfile]] = []
    for reply in replies:
        node_id = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if node_id not in unseen:
            continue  # not a node asked now
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
            holders = [(nid, n.device_id) for nid, n in table.nodes.items()]
            holders += [(nid, p.device_id) for nid, p in batch]
            other = device_in_use(holders, node_id, profile.device_id, set(live))
            if other is not None:
                raise ConfigError(
                    f"device-id {profile.device_id!r} is already in use by live node {other}"
                )
        except Exception as exc:  # one bad profile never stops registration
            table.rejected[node_id] = str(exc)
            log.error(
                "node %s: profile rejected, node left out of planning (asked again next round): %s",
                node_id,
                exc,
            )
            continue
        batch.append((node_id, profile))
    if table.reference_bench_ms is None or ref_bench_ms:
        measured = [p.bench_ms for _, p in batch if not p.simulated and p.bench_ms]
        if measured or ref_bench_ms:
            table.reference_bench_ms = reference_bench_ms(measured, ref_bench_ms)
    new: list[Node] = []
    for node_id, profile in batch:
        table.rejected.pop(node_id, None)
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
    *,
    eligible_only: bool = True,
    size_of_all: bool = False,
) -> list[Node]:
    """Seeded sample of live, available nodes.

    A node is available in a round with its profile's probability, seeded by (run, device,
    round). The pool is the available nodes whose plan participates (``eligible_only``, training)
    or every available node (evaluation: every device can run the global model, so the evaluated
    devices do not depend on training eligibility). ``m = max(1, ⌊fraction·N⌋)`` with N the pool
    size, or with ``size_of_all`` the number of available nodes whether eligible or not
    (FedAvg-drop: the m every other method samples); ``min(m, |pool|)`` are drawn, seeded by
    (run, round, ``purpose``).
    A node with availability 1 is always available, so no generator is built for it (the draw
    could only succeed): sampling 100 of 10,000 always-on devices touches no per-device random
    state.

    Returns
    -------
    list[Node]
        The sample in node-id order; empty when nobody is available or ``fraction`` is 0.
    """
    available = [
        n
        for nid, n in sorted(nodes.items())
        if nid in live
        and (
            n.profile.availability >= 1.0
            or rng(seed, n.device_id, server_round, "available").random() < n.profile.availability
        )
    ]
    pool = [n for n in available if n.plan.participate or not eligible_only]
    if not pool or fraction <= 0:
        return []
    base = len(available) if size_of_all else len(pool)
    k = max(1, min(len(pool), int(base * fraction)))
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
