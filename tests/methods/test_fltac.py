"""FL-TAC (arXiv 2404.15384) and FedIT (arXiv 2305.05644): method-specific checks (METHODS.md §4).

Tiny random BERT and the built-in ``synthetic-text`` tasks, so no model or data package is needed.
The registry-wide two-round checks live in tests/methods/test_matrix.py.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord

from fedhet.core.task_eval import SLOT_TASK, task_tag
from fedhet.data.synthetic_text import SYNTHETIC_TASKS
from fedhet.data.text_slots import TextDataSpec, slot_order
from fedhet.methods.fedit.wire import head_task
from fedhet.methods.fltac.client import slots_this_round
from fedhet.methods.fltac.strategy import FltacStrategy, cluster_slot_states
from fedhet.methods.fltac.wire import slot_arrays, split_slot_arrays
from fedhet.server.strategy import Reply
from fedhet.server.validate import ReplyError
from tests.methods.helpers import make

LORA = ["m.l0.q.lora_A.weight", "m.l0.q.lora_B.weight", "m.l1.v.lora_A.weight"]
HEAD = ["m.classifier.bias"]


def _planted(groups: int, per_group: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Slot states whose LoRA tensors sit around one of ``groups`` well-separated centres."""
    gen = np.random.default_rng(seed)
    centres = [
        {k: gen.normal(0, 1, (4, 3)).astype(np.float32) * 5 for k in LORA} for _ in range(groups)
    ]
    states, truth = [], []
    for i in range(groups * per_group):
        g = int(gen.integers(groups)) if i >= groups else i  # every group non-empty
        state = {k: centres[g][k] + gen.normal(0, 0.1, (4, 3)).astype(np.float32) for k in LORA}
        state[HEAD[0]] = np.full(6, float(g), np.float32)
        states.append(dict(sorted(state.items())))
        truth.append(g)
    return states, np.array(truth)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


def test_clustering_recovers_planted_task_groups_and_averages_heads_along() -> None:
    states, truth = _planted(3, 6)
    labels, means = cluster_slot_states(states, k=3, seed=0)
    assert _same_partition(labels, truth)
    for c, mean in enumerate(means):
        members = [s for s, lab in zip(states, labels, strict=True) if lab == c]
        for key in LORA + HEAD:
            np.testing.assert_allclose(
                mean[key], np.mean([m[key] for m in members], axis=0), rtol=1e-6
            )
    # the head is not clustered on: scrambling heads leaves the labels unchanged
    scrambled = [
        dict(s, **{HEAD[0]: np.full(6, 100.0 * i, np.float32)}) for i, s in enumerate(states)
    ]
    assert np.array_equal(cluster_slot_states(scrambled, k=3, seed=0)[0], labels)


def test_cluster_mean_unweighted_by_default_weighted_on_request() -> None:
    states, _ = _planted(1, 2)
    states = states[:2]
    _, (plain,) = cluster_slot_states(states, k=1, seed=0)
    _, (weighted,) = cluster_slot_states(states, k=1, seed=0, weights=[3.0, 1.0])
    key = LORA[0]
    np.testing.assert_allclose(plain[key], (states[0][key] + states[1][key]) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        weighted[key], 0.75 * states[0][key] + 0.25 * states[1][key], rtol=1e-6
    )


def test_slot_wire_names_round_trip_by_name() -> None:
    states, _ = _planted(2, 2)
    slots = {3: states[0], 0: states[1]}
    wire = slot_arrays(slots)
    assert next(iter(wire)).startswith("slot0/") and f"slot3/{LORA[0]}" in wire
    back = split_slot_arrays(wire)
    assert list(back) == [0, 3]
    for s in slots:
        assert list(back[s]) == sorted(slots[s])
        for key in slots[s]:
            assert back[s][key] is wire[f"slot{s}/{key}"]
    with pytest.raises(ValueError, match="slot<s>"):
        split_slot_arrays({"cluster0/x": np.zeros(1)})
    assert head_task("base_model.model.classifier.heads.sms-spam.weight") == ("sms-spam", "weight")
    assert head_task("base_model.model.bert.layer.0.query.lora_A.weight") is None


@pytest.fixture(scope="module")
def strategy_and_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fltac")
    strategy, grid = make("fltac", tmp, num_nodes=3)
    nodes = strategy.register_nodes(grid, 1)
    return strategy, sorted(nodes, key=lambda n: n.device_id)


def _planted_like(strategy: FltacStrategy, group: int, noise_seed: int) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(noise_seed)
    centre = np.random.default_rng(1000 + group)
    return {
        k: (centre.normal(0, 3, v.shape) + gen.normal(0, 0.01, v.shape)).astype(v.dtype)
        for k, v in strategy.v0.items()
    }


def test_each_uploaded_slot_gets_its_cluster_mean_back(strategy_and_nodes) -> None:
    strategy, nodes = strategy_and_nodes
    # device 0: slot 0 ~ task A, slot 1 ~ task B; device 1: slot 0 ~ B, slot 2 ~ C;
    # device 2: slot 0 ~ C, slot 1 ~ A  (slot numbers say nothing about tasks)
    plan = {0: {0: 0, 1: 1}, 1: {0: 1, 2: 2}, 2: {0: 2, 1: 0}}
    replies, uploads = [], {}
    for d, node in enumerate(nodes):
        slots = {s: _planted_like(strategy, g, 10 * d + s) for s, g in plan[d].items()}
        uploads.update({(node.device_id, s): (g, slots[s]) for s, g in plan[d].items()})
        arrays = slot_arrays(slots)
        metrics = {
            "num-examples": 10,
            "train-loss": 1.0,
            "train-seconds": 0.1,
            "slot-loss": [1.0] * len(slots),
            "slot-examples": [5] * len(slots),
        }
        strategy.validate_reply(node, 1, arrays, metrics)
        replies.append(Reply(node, arrays, metrics, 10))
    strategy.aggregate(1, replies)
    for group in range(3):
        owners = [o for o, (g, _) in uploads.items() if g == group]
        expected = {k: np.mean([uploads[o][1][k] for o in owners], axis=0) for k in strategy.v0}
        for device, s in owners:
            for key, value in expected.items():
                np.testing.assert_allclose(strategy.slots[device][s][key], value, rtol=1e-5)
        assert len({strategy.round_labels[o] for o in owners}) == 1
    # what travels next: each device gets exactly its slots, under its slot numbers
    for d, node in enumerate(nodes):
        payload, extra = strategy.train_payload(node, 2)
        assert sorted(split_slot_arrays(payload)) == sorted(plan[d])
        assert extra["num-slots"] == len(plan[d])
    # a reply naming a slot the device does not hold, or a non-slot array, is rejected
    bad = slot_arrays({7: _planted_like(strategy, 0, 99)})
    metrics = {"slot-loss": [1.0], "slot-examples": [1]}
    with pytest.raises(ReplyError, match="slot 7"):
        strategy.validate_reply(nodes[0], 2, bad, metrics)
    with pytest.raises(ReplyError):
        strategy.validate_reply(nodes[0], 2, {"init/x": np.zeros(1, np.float32)}, metrics)


def test_device_with_zero_examples_of_a_task_sends_no_adapter_for_it(tmp_path) -> None:
    declared = f"{SYNTHETIC_TASKS[0]},not-held-here,{SYNTHETIC_TASKS[2]}"
    strategy, grid = make(
        "fltac",
        tmp_path,
        num_nodes=2,
        node_extra={"tasks": declared},
        num_server_rounds=1,
        **{"fltac.oracle-eval": True},
    )
    strategy.start(grid)
    history = strategy.history
    uploaded = set(strategy.round_labels)
    assert uploaded, "nothing was uploaded"
    assert all(s in (0, 2) for _, s in uploaded)
    assert {s for _, s in uploaded} == {0, 2}
    sent_train = [m for m in grid.sent_log if m.metadata.message_type == "train"]
    assert all(
        any(k.startswith("slot1/") for k in m.content.array_records["arrays"]) for m in sent_train
    )  # the server offered slot 1 (declared) ...
    assert history[0]["fltac-uploaded-slots"] == 4  # ... but 2 devices × 2 held tasks came back
    # oracle evaluator (simulation): per-task accuracy covers only the held tasks, purity logged
    assert set(history[0]["task-accuracy"]) == {SYNTHETIC_TASKS[0], SYNTHETIC_TASKS[2]}
    # purity recomputed here by brute force over cluster→task matchings, against the planted
    # slot→task map (slot s of every device holds declared task s), not the server's record
    import itertools

    owners = sorted(strategy.round_labels)
    tasks = [declared.split(",")[s] for _, s in owners]
    labels = [strategy.round_labels[o] for o in owners]
    names = sorted(set(tasks))
    best = max(
        sum(1 for lab, t in zip(labels, tasks, strict=True) if perm[lab] == t)
        for perm in itertools.permutations(names + [None] * (max(labels) + 1), max(labels) + 1)
    )
    assert history[0]["cluster-purity"] == pytest.approx(best / len(owners))


def test_slot_order_is_blind_and_declared_order_wins() -> None:
    base = dict(
        dataset="synthetic-text",
        data_path=None,
        partition_id=0,
        num_partitions=2,
        alpha=0.5,
        seed=0,
        max_train=0,
        local_test_size=0,
        model="tiny-bert",
        max_length=16,
    )
    held = list(SYNTHETIC_TASKS)
    orders = {
        tuple(
            t
            for _, t in slot_order(TextDataSpec(declared_tasks=(), device_id=f"d{i}", **base), held)
        )
        for i in range(12)
    }
    assert len(orders) > 1  # slot numbers do not encode the task
    spec = TextDataSpec(declared_tasks=("b", "a", "c"), device_id="d", **base)
    assert slot_order(spec, ["a", "c"]) == [(1, "a"), (2, "c")]
    assert task_tag("trec") == task_tag("trec") != task_tag("sms-spam")


def test_scale_slots_rotates_through_every_slot() -> None:
    slots = list(range(5))
    seen = set()
    for rnd in range(1, 4):
        chosen = slots_this_round(slots, 0.33, rnd)  # type: ignore[arg-type]
        assert len(chosen) == 2
        seen.update(chosen)
    assert seen == set(slots)
    assert slots_this_round(slots, 1.0, 1) == slots  # type: ignore[arg-type]


def test_fltac_uploads_fewer_values_than_fedit(tmp_path) -> None:
    tac, grid = make("fltac", tmp_path, num_nodes=3, num_server_rounds=1)
    fit, grid2 = make("fedit", tmp_path, num_nodes=3, num_server_rounds=1)
    tac.start(grid)
    fit.start(grid2)
    h_tac, h_fit = tac.history[0], fit.history[0]
    assert h_tac["lora-params-per-slot"] == 2 * 2 * (64 + 64) * 1  # L·2·(h+h)·r, METHODS.md B8
    assert h_fit["lora-params"] == 2 * 2 * (64 + 64) * 16
    assert h_tac["uploaded-params"] < h_fit["uploaded-params"]
    assert h_tac["payload-bytes-up"] < h_fit["payload-bytes-up"]
    assert set(h_fit["task-accuracy"]) <= set(SYNTHETIC_TASKS)


# ------------------------------------------------------------------------------------------------
# Task identity never leaves a device outside the simulation oracle (issue 10 item 8)
# ------------------------------------------------------------------------------------------------
def _capture_eval_metrics(grid, tamper=None) -> list[dict[str, Any]]:
    """Record the metrics of every evaluate reply (after ``tamper``, if given) as sent."""
    seen: list[dict[str, Any]] = []

    def capture(node_id: int, reply: Message) -> Message:
        if tamper is not None:
            reply = tamper(node_id, reply)
        if not reply.has_error() and reply.metadata.message_type == MessageType.EVALUATE:
            seen.append(dict(reply.content.metric_records["metrics"]))
        return reply

    grid.corrupt = capture
    return seen


def _with_metrics(reply: Message, update) -> Message:
    metrics = dict(reply.content.metric_records["metrics"])
    update(metrics)
    reply.content.metric_records["metrics"] = MetricRecord(metrics)
    return reply


def test_without_oracle_eval_no_task_tag_travels_and_no_task_map_is_kept(tmp_path) -> None:
    strategy, grid = make("fltac", tmp_path, num_nodes=3)
    replies = _capture_eval_metrics(grid)
    strategy.start(grid)
    history = strategy.history
    assert replies and all(SLOT_TASK not in m for m in replies)
    assert all("eval-slot-index" in m for m in replies)  # per-slot results, task-free
    lines = (tmp_path / "t-fltac" / "metrics.jsonl").read_text()
    for key in ("cluster-purity", "task-accuracy", SLOT_TASK):
        assert key not in lines
        assert all(key not in h for h in history)
    assert strategy.eval_slot_tasks == {}
    _, checkpoint = strategy.run_dir.load_latest_checkpoint()
    assert set(checkpoint["strategy"]) == {"slots"}
    text = json.dumps({k: sorted(v) for k, v in checkpoint["strategy"]["slots"].items()})
    assert all(name not in text for name in SYNTHETIC_TASKS)
    # an older checkpoint's task map is ignored on load
    strategy.load_state_dict({"slots": {}, "eval-slot-tasks": [["partition-0", 0, 7]]})
    assert strategy.eval_slot_tasks == {}


def test_task_tags_a_node_may_not_send_are_never_read_nor_logged(tmp_path) -> None:
    strategy, grid = make("fltac", tmp_path, num_nodes=3, num_server_rounds=1)

    def plant(node_id: int, reply: Message) -> Message:
        if reply.has_error() or reply.metadata.message_type != MessageType.EVALUATE:
            return reply
        n = len(list(reply.content.metric_records["metrics"]["eval-slot-index"]))
        return _with_metrics(reply, lambda m: m.update({SLOT_TASK: [task_tag("trec")] * n}))

    replies = _capture_eval_metrics(grid, plant)
    strategy.start(grid)
    history = strategy.history
    assert replies and all(SLOT_TASK in m for m in replies)  # the tags were on the wire ...
    assert "cluster-purity" not in history[0] and "task-accuracy" not in history[0]
    assert all(SLOT_TASK not in node for node in history[0]["nodes"])  # ... but never logged
    assert strategy.eval_slot_tasks == {}


def test_oracle_eval_is_simulation_only(tmp_path) -> None:
    strategy, grid = make(
        "fltac", tmp_path, num_nodes=2, num_server_rounds=1, **{"fltac.oracle-eval": True}
    )
    for i, ctx in enumerate(grid.contexts.values()):  # deployed devices: own id, own cache
        ctx.node_config = {
            **dict(ctx.node_config),
            "device-id": f"plant-{i}",
            "cache-dir": str(tmp_path / "nodes"),
        }
    replies = _capture_eval_metrics(grid)
    strategy.start(grid)
    history = strategy.history
    assert replies and all(SLOT_TASK not in m for m in replies)
    assert history[0]["num-trained"] == 2
    assert "cluster-purity" not in history[0] and "task-accuracy" not in history[0]


def _run_recording(tmp_path, corrupt=None) -> tuple[Any, Any, list[dict], list[dict]]:
    strategy, grid = make(
        "fltac", tmp_path, num_nodes=3, num_server_rounds=3, **{"fltac.oracle-eval": True}
    )
    labels, stored = [], []
    aggregate = strategy.aggregate

    def recording(server_round, replies):
        aggregate(server_round, replies)
        labels.append(dict(strategy.round_labels))
        stored.append(
            {(d, s): dict(st) for d, slots in strategy.slots.items() for s, st in slots.items()}
        )

    strategy.aggregate = recording
    grid.corrupt = corrupt
    return strategy, grid, labels, stored


def test_scrambled_task_tags_leave_clustering_and_slot_states_bit_identical(tmp_path) -> None:
    gen = np.random.default_rng(0)

    def scramble(node_id: int, reply: Message) -> Message:
        if reply.has_error() or reply.metadata.message_type != MessageType.EVALUATE:
            return reply
        metrics = reply.content.metric_records["metrics"]
        n = len(list(metrics[SLOT_TASK]))
        return _with_metrics(
            reply, lambda m: m.update({SLOT_TASK: [int(t) for t in gen.integers(0, 2**31, n)]})
        )

    a, grid_a, labels_a, stored_a = _run_recording(tmp_path / "a")
    b, grid_b, labels_b, stored_b = _run_recording(tmp_path / "b", scramble)
    a.start(grid_a)
    b.start(grid_b)
    hist_a, hist_b = a.history, b.history
    # the scramble took effect: the evaluator saw other tasks ...
    assert set(hist_a[-1]["task-accuracy"]) <= set(SYNTHETIC_TASKS)
    assert not set(hist_b[-1]["task-accuracy"]) & set(SYNTHETIC_TASKS)
    # ... and the algorithm did not notice: same clusters, same slot states, same payloads
    assert len(labels_a) == len(labels_b) == 3
    assert labels_a == labels_b
    for round_a, round_b in zip(stored_a, stored_b, strict=True):
        assert round_a.keys() == round_b.keys()
        for owner, state in round_a.items():
            for key, value in state.items():
                other = round_b[owner][key]
                assert value.dtype == other.dtype and value.tobytes() == other.tobytes()
    assert a.global_arrays.keys() == b.global_arrays.keys()
    assert all(
        a.global_arrays[k].tobytes() == b.global_arrays[k].tobytes() for k in a.global_arrays
    )
    train_a = [m for m in grid_a.sent_log if m.metadata.message_type == "train"]
    train_b = [m for m in grid_b.sent_log if m.metadata.message_type == "train"]
    assert len(train_a) == len(train_b)
    for ma, mb in zip(train_a, train_b, strict=True):
        ra, rb = ma.content.array_records["arrays"], mb.content.array_records["arrays"]
        assert list(ra) == list(rb)
        assert all(ra[k].numpy().tobytes() == rb[k].numpy().tobytes() for k in ra)


@pytest.mark.parametrize("budget", ["matched", "repository"])
def test_fedit_step_budget_counts_steps_per_device(tmp_path, budget) -> None:
    """matched: n_i·τ steps (FL-TAC's compute); repository: τ steps in all (FL-TAC's code)."""
    fit, grid = make(
        "fedit",
        tmp_path,
        num_nodes=3,
        num_server_rounds=1,
        **{"fedit.steps": 3, "fedit.step-budget": budget},
    )
    seen: list[dict[str, Any]] = []

    def capture(node_id: int, reply: Message) -> Message:
        if not reply.has_error() and reply.metadata.message_type == MessageType.TRAIN:
            seen.append(dict(reply.content.metric_records["metrics"]))
        return reply

    grid.corrupt = capture
    fit.start(grid)
    assert len(seen) == 3
    for metrics in seen:
        tasks = len(metrics["task-examples"])
        assert tasks >= 1
        assert metrics["train-steps"] == (3 * tasks if budget == "matched" else 3)
    assert any(len(m["task-examples"]) > 1 for m in seen)  # the two budgets differ somewhere


def test_label_offsets_stack_tasks_by_name() -> None:
    from fedhet.methods.fedit.wire import label_offsets

    assert label_offsets({"topic": 4, "question": 6, "sentiment": 2}) == {
        "question": 0,
        "sentiment": 6,
        "topic": 8,
    }


def test_fedit_shared_head_is_one_union_head_and_never_told_the_task(tmp_path) -> None:
    from fedhet.data.text import task_classes
    from fedhet.methods.fedit.wire import UNION_HEAD, head_tasks

    fit, grid = make(
        "fedit", tmp_path, num_nodes=3, num_server_rounds=2, **{"fedit.head": "shared"}
    )
    uploads: list[dict[str, Any]] = []

    def capture(node_id: int, reply: Message) -> Message:
        if not reply.has_error() and reply.metadata.message_type == MessageType.TRAIN:
            arrays = reply.content.array_records["arrays"]
            uploads.append(
                {
                    "heads": head_tasks(arrays.keys()),
                    "bias": arrays[next(k for k in arrays if k.endswith(".bias") and "heads" in k)]
                    .numpy()
                    .shape,
                    "examples": list(reply.content.metric_records["metrics"]["task-examples"]),
                    "n": reply.content.metric_records["metrics"]["num-examples"],
                }
            )
        return reply

    grid.corrupt = capture
    fit.start(grid)
    union = sum(task_classes(fit.shared.dataset, fit.shared.seed).values())
    assert len(uploads) == 6
    for up in uploads:
        assert up["heads"] == [UNION_HEAD]
        assert up["bias"] == (union,)  # one logit per label of every task
        assert up["examples"] == [up["n"]]
    assert fit.task_names == [UNION_HEAD]
    last = fit.history[-1]
    # uploads name no task, so the evaluator knows tasks by their tags only: one entry each
    assert len(last["task-accuracy"]) == len(SYNTHETIC_TASKS)
    assert 0 < last["mean-task-accuracy"] <= 1
    # the union head is harder than per-task heads but learns: above the union's chance
    assert last["eval-accuracy"] > 1 / union


def test_fedit_reply_with_per_task_heads_is_dropped_under_a_shared_head(tmp_path) -> None:
    fit, grid = make(
        "fedit", tmp_path, num_nodes=3, num_server_rounds=1, **{"fedit.head": "shared"}
    )
    fit.start(grid)
    per_task, _ = make("fedit", tmp_path / "p", num_nodes=1, num_server_rounds=1)
    arrays = dict(per_task.initial_arrays())
    node = next(iter(fit.nodes.values()))
    with pytest.raises(ReplyError, match=r"do not fit fedit\.head='shared'"):
        fit.validate_reply(node, 1, arrays, {"task-examples": [1, 1, 1]})
