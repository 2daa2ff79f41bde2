"""A real Flower deployment on 127.0.0.1: SuperLink (TLS + SuperNode auth) and SuperNodes.

The certificate tests run in milliseconds and are always collected. The fleet tests start real
``flower-superlink`` / ``flower-supernode`` processes (marked ``deployment`` and
``integration``); they share one module-scoped fleet and run in file order:
connect -> kill a node -> an unregistered node is refused -> restart the SuperLink on its
database (the killed node ends up offline, the others reconnect) -> stop.

Reuse: the ``fleet`` fixture of ``tests/integration/conftest.py`` (or :func:`fedhet.deploy.local_fleet`) gives a started
:class:`fedhet.deploy.LocalFleet`; run an app with
``fleet.flwr(["run", str(app_dir), fleet.connection_name, "--format", "json"], cwd=app_dir)``
and check it with ``fleet.flwr(["ls", fleet.connection_name, "--format", "json"])``.

Timing facts of Flower 1.41 the tests rely on: a SIGKILLed SuperNode stays "online" until its
heartbeat expires (2 x 30 s after its last heartbeat); a SIGTERMed one deactivates at once.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedhet.deploy import (
    FleetError,
    LocalFleet,
    ProcessRecord,
    main,
    node_config_string,
    terminate,
    write_pki,
)

#: SuperNodes the ``fleet`` fixture (tests/integration/conftest.py) starts.
NUM_NODES = 3
#: Upper bound for a SIGKILLed node to be reported offline (2 heartbeats of 30 s + slack).
OFFLINE_AFTER_KILL_S = 90.0


# ---------------------------------------------------------------------------------------------
# Certificates and keys (fast, no processes)
# ---------------------------------------------------------------------------------------------


def test_pki_server_certificate_chain_and_sans(tmp_path: Path) -> None:
    paths = write_pki(tmp_path / "pki", ["superlink.plant.lan", "10.0.0.5"], ["press-1"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"superlink.plant.lan", "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct(paths.ca_key.stat().st_mode & 0o777) == "0o600"


def test_node_keys_are_what_flower_accepts(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    paths = write_pki(tmp_path / "pki", ["127.0.0.1"], ["node-0", "node-1"])
    private_path, public_path = paths.node_keys["node-0"]
    private = load_ssh_private_key(private_path.read_bytes(), None)  # as flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert try_load_public_key(public_path)  # as `flwr supernode register` does
    assert public_path.read_bytes() != paths.node_keys["node-1"][1].read_bytes()


def test_pki_rerun_keeps_ca_and_adds_nodes(tmp_path: Path) -> None:
    first = write_pki(tmp_path, ["127.0.0.1"], ["node-0"])
    ca_before, key_before = first.ca_cert.read_bytes(), first.node_keys["node-0"][1].read_bytes()
    second = write_pki(tmp_path, ["127.0.0.1"], ["node-0", "node-1"])
    assert second.ca_cert.read_bytes() == ca_before
    assert second.node_keys["node-0"][1].read_bytes() == key_before
    assert second.node_keys["node-1"][1].exists()


def test_certs_command(tmp_path: Path) -> None:
    assert main(["certs", "--out", str(tmp_path), "--hosts", "link.lan", "--nodes", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "nodes").iterdir()) == [
        "node-0.key",
        "node-0.pub",
        "node-1.key",
        "node-1.pub",
    ]


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


def test_terminate_skips_recycled_pid() -> None:
    """A record whose start time does not match the live PID must never be signalled."""
    me = psutil.Process()
    stale = ProcessRecord(me.pid, me.create_time() - 100.0, ["x"], "/dev/null")
    assert not stale.is_alive()
    terminate([stale], signal.SIGKILL)  # would kill pytest itself if it did not check
    assert me.is_running()


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
    assert "--enable-supernode-auth" in (fleet.superlink.command if fleet.superlink else [])
    expected = _registered_alive_ids(fleet)
    assert len(expected) == NUM_NODES
    assert fleet.wait_for_nodes(NUM_NODES, timeout=60.0) == expected

    state = json.loads(fleet.state_file.read_text())
    assert state["address"] == fleet.address
    assert [n["process"]["pid"] for n in state["nodes"]] == [
        n.process.pid for n in fleet.nodes if n.process
    ]
    assert 'root-certificates = "' in (fleet.flwr_home / "config.toml").read_text()
    # The Control API answers over TLS with the generated CA: what `flwr run` uses.
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
