"""A real Flower deployment on 127.0.0.1: SuperLink (TLS + SuperNode auth) on loopback behind the
nginx front door, and SuperNodes connected through the door.

The small tests run in milliseconds and are always collected (the PKI has its own unit tests in
tests/unit/test_pki.py, the front door's rules in tests/unit/test_frontdoor.py). The fleet tests
start real ``flower-superlink`` / ``nginx`` / ``flower-supernode`` processes (marked
``deployment`` and ``integration``); they share one module-scoped fleet and run in file order:
connect -> kill a node -> an unregistered node is refused -> restart the SuperLink on its
database (the killed node ends up offline, the others reconnect) -> stop.

Reuse: the ``fleet`` fixture of ``tests/integration/conftest.py`` (or
:func:`fedhet.deploy.local_fleet`) gives a started :class:`fedhet.deploy.LocalFleet`; run an app with
``fleet.flwr(["run", str(app_dir), fleet.connection_name, "--format", "json"], cwd=app_dir)``
and check it with ``fleet.flwr(["ls", fleet.connection_name, "--format", "json"])``.

Timing facts of Flower 1.41 the tests rely on: a SIGKILLed SuperNode stays "online" until its
heartbeat expires (2 x 30 s after its last heartbeat); a SIGTERMed one deactivates at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from fedhet.deploy.fleet import FleetState, node_config_string
from fedhet.deploy.local import LocalFleet
from fedhet.deploy.processes import FleetError

#: SuperNodes the ``fleet`` fixture (tests/integration/conftest.py) starts.
NUM_NODES = 3
#: Upper bound for a SIGKILLed node to be reported offline (2 heartbeats of 30 s + slack).
OFFLINE_AFTER_KILL_S = 90.0


# ---------------------------------------------------------------------------------------------
# Fast, no processes
# ---------------------------------------------------------------------------------------------


def test_node_config_profiles_cycle() -> None:
    classes = [node_config_string(i, 4)[0] for i in range(4)]
    assert classes == ["strong", "medium", "weak", "strong"]
    _, config = node_config_string(1, 3, 'data-path="/data/press"')
    assert config == (
        'partition-id=1 num-partitions=3 device-id="node-1" device-class="medium" '
        'bandwidth-mbps=20.0 data-path="/data/press"'
    )


def test_load_without_state_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="no fleet state"):
        LocalFleet.load(tmp_path)


def test_fleet_json_round_trip_keeps_addresses(tmp_path: Path) -> None:
    state = FleetState(tmp_path, base_port=20000)
    assert (state.address, state.superlink_address) == ("127.0.0.1:20000", "127.0.0.1:20001")
    state.num_partitions = 3
    state.save()
    raw = json.loads(state.state_file.read_text())
    assert raw["address"] == "127.0.0.1:20000"  # what devices connect to: the front door
    assert raw["root_certificates"] == str(tmp_path.resolve() / "pki" / "ca.pem")
    assert raw["flwr_home"] == str(tmp_path.resolve() / "flwr-home")
    assert raw["connection_name"] == "fedhet-local"
    loaded = LocalFleet.load(tmp_path)
    assert (loaded.address, loaded.superlink_address) == (state.address, state.superlink_address)
    # Without a front door the SuperLink itself is what devices reach (development only).
    bare = FleetState(tmp_path, base_port=20000, front_door=False)
    assert bare.superlink_address == bare.address == "127.0.0.1:20000"


# ---------------------------------------------------------------------------------------------
# A real fleet
# ---------------------------------------------------------------------------------------------


def _registered_alive_ids(fleet: LocalFleet) -> set[int]:
    return {
        node.node_id
        for node in fleet.nodes
        if node.node_id is not None and node.process is not None and node.process.is_alive()
    }


@pytest.mark.deployment
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_nodes_connect_with_tls_and_auth(fleet: LocalFleet) -> None:
    assert not fleet.insecure and fleet.auth
    assert fleet.superlink is not None
    assert "--enable-supernode-auth" in fleet.superlink.command
    expected = _registered_alive_ids(fleet)
    assert len(expected) == NUM_NODES
    assert fleet.wait_for_nodes(NUM_NODES, timeout=60.0) == expected

    # Devices reach the front door; the SuperLink listens on loopback only.
    assert fleet.front_door and fleet.frontdoor is not None and fleet.frontdoor.is_alive()
    assert fleet.superlink_address == f"127.0.0.1:{fleet.superlink_port}" != fleet.address
    assert fleet.superlink.command[fleet.superlink.command.index("--host") + 1] == "127.0.0.1"
    assert all(n.process is not None and fleet.address in n.process.command for n in fleet.nodes)
    state = json.loads(fleet.state_file.read_text())
    assert state["address"] == fleet.address
    assert state["superlink_address"] == fleet.superlink_address
    assert [n["process"]["pid"] for n in state["nodes"]] == [
        n.process.pid for n in fleet.nodes if n.process
    ]
    config = (fleet.flwr_home / "config.toml").read_text()
    assert 'root-certificates = "' in config
    assert f'address = "{fleet.superlink_address}"' in config
    # The operator's Control API answers over TLS with the generated CA: what `flwr run` uses.
    runs = fleet.flwr(["ls", fleet.connection_name, "--format", "json"])
    assert json.loads(runs.stdout[runs.stdout.index("{") :])["success"] is True


@pytest.mark.deployment
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_kill_node(fleet: LocalFleet) -> None:
    node = fleet.node(1)
    assert node.process is not None and node.process.is_alive()
    proc = node.process.process()
    assert proc is not None
    children = proc.children(recursive=True)  # its SuperExec
    fleet.kill_node(1)
    assert not node.process.is_alive()
    assert not any(child.is_running() and child.status() != "zombie" for child in children)
    assert all(n.process is not None and n.process.is_alive() for n in fleet.nodes if n.index != 1)


@pytest.mark.deployment
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_unregistered_key_is_refused(fleet: LocalFleet) -> None:
    rogue = fleet.add_node(register=False)
    assert rogue.node_id is None and rogue.process is not None
    proc = rogue.process.process()
    assert proc is not None
    exit_code = proc.wait(timeout=60)  # a child of this process: psutil returns its status
    rogue_log = Path(rogue.process.log).read_text()
    assert exit_code != 0, rogue_log[-2000:]
    # Flower logs its own exit code (305: SuperLink connection failed); the status is 1.
    assert "Exit Code: 305" in rogue_log and "Failed to activate SuperNode" in rogue_log
    superlink_log = Path(fleet.log_dir / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    listed = {int(node["node-id"]) for node in fleet.list_nodes()}
    assert listed == {n.node_id for n in fleet.nodes if n.node_id is not None}


@pytest.mark.deployment
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_restart_superlink_on_same_database(fleet: LocalFleet) -> None:
    old = fleet.superlink
    registered = {n.node_id for n in fleet.nodes if n.node_id is not None}
    fleet.restart_superlink()
    assert old is not None and not old.is_alive()
    assert fleet.superlink is not None and fleet.superlink.pid != old.pid
    # Registrations survived in the database; surviving nodes reconnect on their own and the
    # killed node's heartbeat expires.
    assert {int(node["node-id"]) for node in fleet.list_nodes()} == registered
    expected = _registered_alive_ids(fleet)
    assert len(expected) == NUM_NODES - 1
    deadline = time.monotonic() + OFFLINE_AFTER_KILL_S
    online: set[int] = set()
    while time.monotonic() < deadline:
        online = fleet.online_node_ids()
        if online == expected:
            break
        time.sleep(2.0)
    assert online == expected


@pytest.mark.deployment
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_stop_ends_every_process(fleet: LocalFleet) -> None:
    family = []
    for record in fleet.processes():
        proc = record.process()
        if proc is not None:
            family += [proc, *proc.children(recursive=True)]
    assert family
    fleet.stop()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    assert not fleet.running()
