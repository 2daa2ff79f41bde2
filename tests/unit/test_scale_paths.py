"""What keeps many simulated devices in one process cheap (issue 15, item 2 and 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fedhet.data.federated as federated
import fedhet.profile as profile_mod
import fedhet.server.registration as registration
from fedhet.client.runtime import loaded_model
from fedhet.plan import Budget, NodePlan
from fedhet.profile import DeviceProfile, build_profile, parse_node_config
from fedhet.server.registration import Node, NodeTable, sample_nodes
from fedhet.sim import LocalGrid


def test_partition_index_file_read_once_per_process(tmp_path: Path, monkeypatch) -> None:
    first = federated.federated_split("digits", 5, 1, cache_dir=tmp_path, local_test_size=20)

    def no_disk(*_a: object) -> None:
        raise AssertionError("partition cache re-read from disk")

    monkeypatch.setattr(federated, "_read_cache", no_disk)
    again = federated.federated_split("digits", 5, 1, cache_dir=tmp_path, local_test_size=20)
    other = federated.federated_split("digits", 5, 3, cache_dir=tmp_path, local_test_size=20)
    assert torch.equal(first.train.y, again.train.y) and torch.equal(first.train.x, again.train.x)
    assert len(other.train) > 0
    # other settings are another file: computed, never confused with the cached one
    monkeypatch.undo()
    seeded = federated.federated_split(
        "digits", 5, 1, cache_dir=tmp_path, seed=7, local_test_size=20
    )
    assert not torch.equal(seeded.train.y, first.train.y)


def test_simulated_profile_benchmarks_once_per_process(monkeypatch) -> None:
    calls: list[str] = []

    def fake_bench(model: str, batch_size: int, repeats: int = 5) -> float:
        calls.append(model)
        return 12.5

    monkeypatch.setattr(profile_mod, "bench_step_ms", fake_bench)
    profile_mod._host_bench_ms.cache_clear()
    for pid in range(5):
        node = parse_node_config({"partition-id": pid, "num-partitions": 5})
        prof = build_profile(
            node,
            fallback_device_id=f"p-{pid}",
            device_class="strong",
            simulated=True,
            bench_model="cnn_s",
            batch_size=32,
        )
        assert prof.bench_ms == 12.5
    assert calls == ["cnn_s"]
    node = parse_node_config({"device-id": "press-1"})
    for _ in range(2):  # a real device measures itself every time it is asked
        build_profile(
            node,
            fallback_device_id="press-1",
            device_class="strong",
            simulated=False,
            bench_model="cnn_s",
            batch_size=32,
        )
    assert calls == ["cnn_s", "cnn_s", "cnn_s"]
    profile_mod._host_bench_ms.cache_clear()


def test_loaded_model_reuses_one_instance_and_replaces_all_state() -> None:
    from fedhet.models import build_model

    a = build_model("cnn_s", num_classes=10).state_dict()
    b = build_model("cnn_s", num_classes=10).state_dict()
    arrays_a = {k: v.numpy().copy() for k, v in a.items()}
    arrays_b = {k: v.numpy().copy() for k, v in b.items()}
    m1 = loaded_model("cnn_s", arrays_a, num_classes=10)
    for p in m1.parameters():  # a previous device froze and trained it
        p.data.add_(1.0)
        p.requires_grad_(False)
    m1.eval()
    m2 = loaded_model("cnn_s", arrays_b, num_classes=10)
    assert m2 is m1
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), arrays_b[k])
    assert all(p.requires_grad and p.grad is None for p in m2.parameters()) and m2.training
    missing = dict(arrays_a)
    missing.pop(next(iter(missing)))
    with pytest.raises(RuntimeError, match="Missing key"):
        loaded_model("cnn_s", missing, num_classes=10)


def _node(node_id: int, device_id: str, availability: float = 1.0) -> Node:
    prof = DeviceProfile.model_validate(
        {
            "device-id": device_id,
            "device-class": "strong",
            "cores": 1,
            "mem-total-bytes": 10,
            "mem-avail-bytes": 5,
            "availability": availability,
        }
    )
    budget = Budget(time=1, memory=1, upload_min=1, upload_max=1)
    return Node(
        node_id,
        prof,
        NodePlan(node_id=node_id, device_id=device_id, device_class="strong", budget=budget),
    )


def test_node_table_reregistration_by_device_id() -> None:
    table = NodeTable()
    for i in range(3):
        n = _node(i, f"d{i}")
        table.add(i, n.profile, lambda nid, prof, n=n: n.plan)
    moved = _node(7, "d1")
    table.add(7, moved.profile, lambda nid, prof: moved.plan)
    assert sorted(table.nodes) == [0, 2, 7]
    again = _node(8, "d1")
    table.add(8, again.profile, lambda nid, prof: again.plan)
    assert sorted(table.nodes) == [0, 2, 8]


def test_sampling_draws_availability_only_for_part_time_devices(monkeypatch) -> None:
    nodes = {i: _node(i, f"d{i}", 1.0 if i % 2 else 0.5) for i in range(10)}
    drawn: list[object] = []
    real = registration.rng

    def counting(*key: object):
        drawn.append(key)
        return real(*key)

    monkeypatch.setattr(registration, "rng", counting)
    sample = sample_nodes(nodes, set(nodes), 0, 1, 0.5, "train")
    availability = [k for k in drawn if "available" in k]
    assert len(availability) == 5  # the five part-time devices, not the always-on ones
    assert all(n.profile.availability == 1.0 or n.node_id % 2 == 0 for n in sample)


def test_local_grid_can_forget_sent_messages() -> None:
    from flwr.app import Message, RecordDict

    def app(msg: Message, ctx: object) -> Message:
        return Message(RecordDict(), reply_to=msg)

    for keep in (True, False):
        grid = LocalGrid(app, [{"partition-id": 0, "num-partitions": 1}], {}, keep_sent=keep)
        msg = grid.create_message(RecordDict(), "query.profile", 1000, "")
        assert len(list(grid.send_and_receive([msg]))) == 1
        assert len(grid.sent_log) == (1 if keep else 0)


def test_scale_child_command_is_json_and_takes_out_as_an_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmarks.scale`` passed its output Path inside the JSON arguments (a TypeError before
    any child ran); the folder now travels as ``--out``."""
    import json
    import subprocess
    from types import SimpleNamespace

    from benchmarks import scale

    seen: dict[str, list[str]] = {}

    def run(cmd: list[str], **_: object) -> SimpleNamespace:
        seen["cmd"] = cmd
        return SimpleNamespace(returncode=0, stdout='{"ok": 1}\n', stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    assert scale._child("server-rss", tmp_path, 100, 10, True) == {"ok": 1}
    cmd = seen["cmd"]
    assert cmd[cmd.index("--out") + 1] == str(tmp_path)
    assert json.loads(cmd[-1]) == [100, 10, True]


def test_local_grid_can_answer_at_pull_time() -> None:
    """``reply_at_pull``: the handler runs when the reply is pulled, so the grid holds no reply
    of the round between the push and the pull (the server-memory benchmark relies on it)."""
    from flwr.app import Message, RecordDict

    calls: list[int] = []

    def app(msg: Message, ctx: object) -> Message:
        calls.append(msg.metadata.dst_node_id)
        return Message(RecordDict(), reply_to=msg)

    grid = LocalGrid(app, [{"partition-id": 0}, {"partition-id": 1}], {}, reply_at_pull=True)
    ids = list(
        grid.push_messages(
            [
                Message(RecordDict(), dst_node_id=n, message_type="train")
                for n in grid.get_node_ids()
            ]
        )
    )
    assert calls == [] and not grid._replies
    first = list(grid.pull_messages(ids[:1]))
    assert len(first) == 1 and calls == [1000]
    assert len(list(grid.pull_messages(ids))) == 1 and calls == [1000, 1001]
