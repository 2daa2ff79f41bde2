"""End to end on a real deployment: ``flwr run`` of fedavg on a TLS + auth fleet on 127.0.0.1.

The module's ``fleet`` (tests/integration/conftest.py) is a SuperLink with TLS, SuperNode
authentication and a database, listening on 127.0.0.1 only behind the nginx front door, and
SuperNodes ``node-0..2`` (``num-partitions=4``) connected through the door. The tests run in
file order on it:

0. **Trust boundary.** An outsider holding only ``ca.pem`` points the ``flwr`` CLI at the
   device-facing address: ``flwr supernode register``, ``flwr ls`` and ``flwr run`` all fail
   (403 from the front door) and nothing was registered or started; the operator's own
   loopback connection on the server host works.
1. **Membership.** A 3-round run is submitted with ``flwr run``. Once round 1's devices are
   registered, ``node-3`` (registered key) and ``node-4`` (a key the SuperLink does not know)
   are started; as soon as round 1 is in ``metrics.jsonl``, ``node-1`` is SIGKILLed (a power
   cut). The run must end ``finished:completed`` (read with ``flwr ls``: ``flwr run`` exits 0
   either way); the dead node must come back as an error reply in round 2 (logged under its
   own node id) and be gone from round 3; ``node-3`` must be registered (profile query) at
   the start of a later round and train from then on; ``node-4`` must be refused and appear
   nowhere.
2. **Restart.** The SuperLink is restarted on its database; the first run is still listed,
   the surviving nodes reconnect, the killed node is started again (same key, same node id)
   and is used again, and the same run name started again with
   ``num-server-rounds=4`` resumes from the round-3 checkpoint: rounds 1-3 are kept as they
   were, only round 4 is trained, and the registered devices are not asked again.

Timing (Flower 1.41): a SIGKILLed SuperNode stays "online" until 2 x 30 s after its last
heartbeat, after which the SuperLink answers its pending messages with "Node Unavailable".
``round-timeout`` is above that, so the dead node is always noticed through the error reply
and no round waits longer than the heartbeat expiry. Evaluation is off (``fraction-evaluate=0``):
each message starts a ClientApp process, and on 2 shared cores a second phase per round would
double the run time; evaluation error replies are covered in tests/methods/test_server.py.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedhet.deploy.fleet import NodeRecord
from fedhet.deploy.flwr_cli import last_json_object, run_flwr, submit_run, write_flower_config
from fedhet.deploy.local import LocalFleet
from fedhet.deploy.pki import write_node_key

pytestmark = [pytest.mark.deployment, pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN_NAME = "plant-e2e"
#: Above the 60 s heartbeat expiry of a killed node (see the module docstring).
ROUND_TIMEOUT_S = 75
#: Upper bound for round 1 (fleet warm-up: FAB install, registration, first ClientApps).
FIRST_ROUND_S = 150.0
#: Upper bound for the whole run after round 1.
REST_OF_RUN_S = 200.0


def run_config(output_dir: Path, rounds: int) -> str:
    """Run-config overrides of the tiny fedavg run (digits, 2 local steps, no evaluation)."""
    return (
        f"method='fedavg' num-server-rounds={rounds} min-nodes=2 round-timeout={ROUND_TIMEOUT_S} "
        "dataset='digits' local-steps=2 batch-size=16 max-train-per-client=100 "
        "local-test-size=40 fraction-evaluate=0.0 profile-bench=false "
        f"output-dir='{output_dir}' run-name='{RUN_NAME}'"
    )


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` file; empty if it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nodes_by_device(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{device-id: node entry}`` of one ``metrics.jsonl`` row."""
    return {entry["device-id"]: entry for entry in row["nodes"]}


def run_diagnostics(fleet: LocalFleet, run_id: int) -> str:
    """ServerApp log and SuperLink log tail, for assertion messages."""
    logs = fleet.flwr(["log", str(run_id), fleet.connection_name, "--show"], check=False)
    superlink = Path(fleet.log_dir / "superlink.log").read_text(errors="replace")
    return f"--- flwr log ---\n{logs.stdout[-4000:]}\n--- superlink.log ---\n{superlink[-3000:]}"


def wait_for_lines(
    fleet: LocalFleet, run_id: int, path: Path, count: int, timeout: float, what: str
) -> None:
    """Wait (bounded) until ``path`` has ``count`` lines; fail early if the run ends."""
    wait_until(fleet, run_id, lambda: len(json_lines(path)) >= count, timeout, what)


def wait_until(
    fleet: LocalFleet, run_id: int, ready: Callable[[], bool], timeout: float, what: str
) -> None:
    """Wait (bounded) until ``ready()``; fail early if the run ends.

    Polled every 0.5 s; ``flwr ls`` (a CLI process, costly on 2 shared cores) every 20 s.
    """
    deadline = time.monotonic() + timeout
    next_status_check = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        if ready():
            return
        if time.monotonic() > next_status_check:
            status = fleet.run_status(run_id)
            if status.startswith("finished"):
                pytest.fail(f"run {status} before {what}\n" + run_diagnostics(fleet, run_id))
            next_status_check = time.monotonic() + 20.0
        time.sleep(0.5)
    pytest.fail(f"no {what} after {timeout:.0f} s\n" + run_diagnostics(fleet, run_id))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``output-dir`` of the runs (the ServerApp writes ``<output-dir>/<run-name>/``)."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.timeout(240)
def test_outsider_with_only_the_ca_cannot_register_list_or_run(
    fleet: LocalFleet, tmp_path: Path
) -> None:
    assert fleet.root_certificates is not None
    # The outsider: ca.pem (handed to every device) and the device-facing address, nothing else.
    home = tmp_path / "outsider-home"
    write_flower_config(home, "plant", fleet.address, fleet.root_certificates)
    _, own_key = write_node_key(tmp_path / "outsider-keys", "intruder")

    register = run_flwr(
        ["supernode", "register", str(own_key), "plant", "--format", "json"], home, tmp_path
    )
    listing = run_flwr(["ls", "plant", "--format", "json"], home, tmp_path)
    run_id, submitted = submit_run(REPO, "plant", home, "num-server-rounds=1", timeout=180.0)
    for what, result in [("register", register), ("ls", listing), ("run", submitted)]:
        payload = last_json_object(result.stdout)
        assert payload.get("success") is False, (what, result.stdout, result.stderr)
        assert "403 Forbidden" in str(payload.get("error-message")), (what, result.stdout)
    assert run_id is None

    # The door itself: Fleet API and health pass, Control and Runtime APIs are refused.
    trust = ssl.create_default_context(cafile=str(fleet.root_certificates))
    with httpx.Client(verify=trust, timeout=10.0) as client:
        base = f"https://{fleet.address}"
        assert client.get(f"{base}/health").status_code == 200
        for path in ("/v1/control/list-runs", "/v1/runtime/acquire-task", "/docs"):
            assert client.post(f"{base}{path}").status_code == 403, path

    # The operator, on the server host, uses the loopback Control API: it works, and it sees
    # that the outsider neither registered a key nor started a run.
    runs = last_json_object(fleet.flwr(["ls", fleet.connection_name, "--format", "json"]).stdout)
    assert runs["success"] is True and runs["runs"] == []
    listed = {int(node["node-id"]) for node in fleet.list_nodes()}
    assert listed == {n.node_id for n in fleet.nodes if n.node_id is not None}


#: What the membership test leaves for the restart test.
_first_run: dict[str, Any] = {}


@pytest.mark.timeout(480)
def test_fedavg_run_survives_dead_node_and_registers_new_one(
    fleet: LocalFleet, outputs: Path
) -> None:
    registered = {n.node_id for n in fleet.nodes if n.node_id is not None}
    assert fleet.wait_for_nodes(3, timeout=60.0) == registered
    run_dir = outputs / RUN_NAME
    metrics = run_dir / "metrics.jsonl"

    run_id = fleet.submit_run(REPO, run_config(outputs, rounds=3))
    # node-3 joins once round 1's registration is done (3 plans): the server must find it at
    # the start of a later round. Its key is registered; node-4's key is not.
    wait_for_lines(fleet, run_id, run_dir / "plans.jsonl", 3, FIRST_ROUND_S, "registration")
    joined = fleet.add_node()
    rogue = fleet.add_node(register=False)
    # Hold the process now: once it exits, the fleet's liveness checks reap it (status lost).
    assert rogue.process is not None
    rogue_proc = rogue.process.process()
    assert rogue_proc is not None
    # Round 1's training is done when its checkpoint exists (its metrics line waits for the
    # fused evaluation carried by round 2's train replies).
    round_1 = run_dir / "checkpoints" / "round-1.pt"
    wait_until(fleet, run_id, round_1.exists, FIRST_ROUND_S, "round 1")
    dead: NodeRecord = fleet.node(1)
    fleet.kill_node(1)  # SIGKILL right after round 1: a power cut

    # The unregistered key is refused: the SuperNode exits, Flower logs its exit code 305.
    assert rogue_proc.wait(timeout=60) != 0
    assert "Exit Code: 305" in Path(rogue.process.log).read_text()

    wait_for_lines(fleet, run_id, metrics, 3, REST_OF_RUN_S, "round 3")
    status = fleet.wait_for_run(run_id, timeout=60.0)
    assert status == "finished:completed", run_diagnostics(fleet, run_id)
    rows = json_lines(metrics)
    assert [row["round"] for row in rows] == [1, 2, 3]
    first, second, third = (nodes_by_device(row) for row in rows)

    assert {d for d, e in first.items() if e["status"] == "trained"} == {
        "node-0",
        "node-1",
        "node-2",
    }
    # The dead node is noticed through the SuperLink's error reply; the round goes on.
    assert second["node-1"]["status"] == "error", rows[1]
    assert second["node-0"]["status"] == second["node-2"]["status"] == "trained"
    drops = [d for d in rows[1]["dropped"] if d["device-id"] == "node-1"]
    assert drops and all(d["node-id"] == dead.node_id for d in drops), drops
    assert any("Node Unavailable" in d["reason"] for d in drops), drops
    # ... and is not planned again while it is offline.
    assert "node-1" not in third

    # The new node was registered through the profile query at the start of the next round
    # after it connected (2, or 3 if it was slow to start) and trained from that round on.
    plans = {p["device-id"]: p for p in json_lines(run_dir / "plans.jsonl")}
    assert plans["node-3"]["node-id"] == joined.node_id
    joined_round = plans["node-3"]["round"]
    assert joined_round in (2, 3), plans["node-3"]
    profiles = json.loads((run_dir / "profiles.json").read_text())
    assert profiles["nodes"][str(joined.node_id)]["device-id"] == "node-3"
    for row in rows[joined_round - 1 :]:
        entry = nodes_by_device(row)["node-3"]
        assert entry["status"] == "trained" and entry["num-examples"] > 0, row
    assert {d for d, e in third.items() if e["status"] == "trained"} == {
        "node-0",
        "node-2",
        "node-3",
    }

    # The refused node never reached the ServerApp.
    assert "node-4" not in plans and all("node-4" not in nodes_by_device(r) for r in rows)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("round-*.pt"))[-1] == (
        "round-3.pt"
    )
    _first_run.update(
        run_id=run_id,
        metrics=metrics.read_text(),
        plan_lines=len(json_lines(run_dir / "plans.jsonl")),
    )


@pytest.mark.timeout(300)
def test_restart_superlink_and_resume_run_from_checkpoint(fleet: LocalFleet, outputs: Path) -> None:
    if not _first_run:
        pytest.skip("needs the completed run of the membership test")
    run_dir = outputs / RUN_NAME
    fleet.restart_superlink()
    # The database kept the finished run; node-0, node-2 and node-3 reconnect by themselves,
    # and the device killed in the first test comes back with its key (same node id).
    assert fleet.run_status(_first_run["run_id"]) == "finished:completed"
    fleet.restart_node(1)
    alive = {fleet.node(i).node_id for i in (0, 1, 2, 3)}
    assert fleet.wait_for_nodes(4, timeout=90.0) == alive

    run_id = fleet.submit_run(REPO, run_config(outputs, rounds=4))
    wait_for_lines(fleet, run_id, run_dir / "metrics.jsonl", 4, REST_OF_RUN_S, "round 4")
    status = fleet.wait_for_run(run_id, timeout=60.0)
    assert status == "finished:completed", run_diagnostics(fleet, run_id)

    text = (run_dir / "metrics.jsonl").read_text()
    assert text.startswith(_first_run["metrics"]), "rounds 1-3 must be kept as they were"
    rows = json_lines(run_dir / "metrics.jsonl")
    assert [row["round"] for row in rows] == [1, 2, 3, 4]
    last = nodes_by_device(rows[-1])
    assert {d for d, e in last.items() if e["status"] == "trained"} == {
        "node-0",
        "node-1",
        "node-2",
        "node-3",
    }
    # profiles.json was restored: the registered devices (node-1 too) were not asked again.
    assert len(json_lines(run_dir / "plans.jsonl")) == _first_run["plan_lines"]
    assert (run_dir / "checkpoints" / "round-4.pt").exists()
