"""GENE-FL on a real deployment: a SuperNode that connects after the clustering round is
initialised through the newcomer path and then trains in its cluster (issue 11, METHODS.md §3.2).

The module's ``fleet`` (tests/integration/conftest.py) is a SuperLink with TLS, SuperNode
authentication and a database on 127.0.0.1 behind the nginx front door, with SuperNodes
``node-0..2`` (``num-partitions=4``). A 5-round GENE-FL run (``genefl.warmup=1``: round 1
warm-up, round 2 clustering, rounds 3-5 gene) is submitted with ``flwr run``; once the
clustering round is in ``metrics.jsonl``, ``node-3`` is started. fedhet's registration finds it at
the start of a later round; the server then sends it P (phase ``probe``), assigns its signature to
the nearest centroid and sends Θ_k* (``newcomer-init``), all before that round's training, so the
same round trains it in its cluster. Its personal model lives in the SuperNode's
``context.state`` across the ClientApp processes of each message.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fedhet.deploy.local import LocalFleet

pytestmark = [pytest.mark.deployment, pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN_NAME = "plant-genefl"
ROUND_TIMEOUT_S = 75
ROUNDS = 6


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for_lines(fleet: LocalFleet, run_id: int, path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    next_status = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        if len(_json_lines(path)) >= count:
            return
        if time.monotonic() > next_status:
            try:
                status = fleet.run_status(run_id)
            except subprocess.TimeoutExpired:  # `flwr ls` on a loaded host: poll again later
                status = "unknown"
            if status.startswith("finished"):
                pytest.fail(f"run {status} before {count} rounds were logged")
            next_status = time.monotonic() + 20.0
        time.sleep(0.5)
    pytest.fail(f"fewer than {count} rounds in {path} after {timeout:.0f} s")


@pytest.mark.timeout(1800)
def test_supernode_joining_after_clustering_takes_the_newcomer_path(
    fleet: LocalFleet, tmp_path: Path
) -> None:
    assert len(fleet.wait_for_nodes(3, timeout=60.0)) == 3
    run_dir = tmp_path / RUN_NAME
    metrics = run_dir / "metrics.jsonl"
    config = (
        f"method='genefl' num-server-rounds={ROUNDS} min-nodes=3 round-timeout={ROUND_TIMEOUT_S} "
        "dataset='digits' local-steps=2 batch-size=16 max-train-per-client=100 "
        "local-test-size=40 fraction-evaluate=0.0 profile-bench=false genefl.warmup=1 "
        f"output-dir='{tmp_path}' run-name='{RUN_NAME}'"
    )
    run_id = fleet.submit_run(REPO, config)
    _wait_for_lines(fleet, run_id, metrics, 2, 600.0)
    # a clustering round may get no signature on a loaded host (replies past round-timeout)
    # and is then repeated: start node-3 once the clusters exist
    deadline = time.monotonic() + 600.0
    while not any(r.get("genefl-clusters") for r in _json_lines(metrics)):
        if time.monotonic() > deadline:
            pytest.fail(f"no clustering after 600 s: {_json_lines(metrics)}")
        time.sleep(1.0)
    joined = fleet.add_node()
    _wait_for_lines(fleet, run_id, metrics, ROUNDS, 900.0)
    assert fleet.wait_for_run(run_id, timeout=60.0) == "finished:completed"

    rows = _json_lines(metrics)
    phases = [r["genefl-phase"] for r in rows]
    n_clustering = phases.index("gene") - 1
    assert phases == ["warmup"] + ["clustering"] * n_clustering + ["gene"] * (
        ROUNDS - 1 - n_clustering
    )
    clustered = rows[n_clustering]
    founders = {e["device-id"]: e for e in clustered["nodes"] if e["status"] == "trained"}
    assert founders and set(founders) <= {"node-0", "node-1", "node-2"}
    assert all(e["genefl-role"] == "founder" and "genefl-cluster" in e for e in founders.values())

    late = [
        (r["round"], e)
        for r in rows[n_clustering + 1 :]
        for e in r["nodes"]
        if e["device-id"] == joined.name
    ]
    assert late, (
        f"{joined.name} never appeared after the clustering round: {rows[n_clustering + 1 :]}"
    )
    first_round, first = late[0]
    assert first["genefl-role"] == "newcomer"
    assert isinstance(first["genefl-cluster"], int)
    assert first["genefl-newcomer-bytes-down"] > 0 and first["genefl-newcomer-bytes-up"] > 0
    # it then trains in its cluster (in the round it was assigned, or later), uploading 𝓖 only
    trained = [e for _, e in late if e["status"] == "trained"]
    assert trained, late
    assert {e["genefl-cluster"] for e in trained} == {first["genefl-cluster"]}
    full_upload = min(e["bytes-up"] for e in rows[0]["nodes"] if e["status"] == "trained")
    gene_upload = trained[-1]["bytes-up"] - trained[-1].get("genefl-newcomer-bytes-up", 0)
    assert 0 < gene_upload <= 0.25 * full_upload
    assert first_round > clustered["round"]
