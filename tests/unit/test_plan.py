"""Device budgets and plans (METHODS.md §2)."""

import pytest

from fedhet.config import SharedConfig
from fedhet.plan import Budget, FleetReference, budget_for, fleet_class
from fedhet.profile import parse_profile

REF = FleetReference(
    full_update_bytes=1_000_000, full_train_memory_bytes=4_000_000, reference_bench_ms=10.0
)


def profile(**kw):
    p = {
        "device-id": "d",
        "device-class": "custom",
        "cores": 2.0,
        "mem-total-bytes": 10**9,
        "mem-avail-bytes": 10**9,
    }
    p.update(kw)
    return parse_profile(p)


def test_three_tier_fleet_by_partition_id():
    classes = [fleet_class("three-tier", i, 10) for i in range(10)]
    assert classes == ["strong"] * 3 + ["medium"] * 3 + ["weak"] * 4
    assert [fleet_class("three-tier", i, 30) for i in range(30)].count("strong") == 10
    assert fleet_class("uniform", 7, 10) == "strong"
    assert [fleet_class('["weak", "strong"]', i, 4) for i in range(4)] == ["weak", "strong"] * 2


def test_class_table_budgets():
    shared = SharedConfig()
    b = budget_for(profile(**{"device-class": "medium"}), shared, REF)
    assert (b.time, b.memory, b.upload_min, b.upload_max) == (0.66, 0.66, 0.5, 1.0)
    assert budget_for(profile(**{"device-class": "strong"}), shared, REF).is_full


def test_explicit_fraction_beats_class_table():
    b = budget_for(profile(**{"device-class": "weak", "time-frac": 0.9}), SharedConfig(), REF)
    assert b.time == 0.9 and b.memory == 0.33


def test_measured_budget_for_custom_device():
    # bench 40 ms vs reference 10 → T = 0.25; memory 1 MB of 4 MB → 0.25; 1 Mbps·10 s = 1.25 MB ≥ 1 MB → 1
    p = profile(**{"bench-ms": 40.0, "mem-avail-bytes": 1_000_000, "bandwidth-mbps": 1.0})
    b = budget_for(p, SharedConfig(), REF)
    assert b.time == pytest.approx(0.25) and b.memory == pytest.approx(0.25)
    assert b.upload_min == pytest.approx(1.0)
    # simulated devices share one host: measurements ignored
    sim = profile(**{"bench-ms": 40.0, "simulated": True})
    assert budget_for(sim, SharedConfig(), REF).time == 1.0


def test_upload_draw_is_seeded_and_in_range():
    b = Budget(time=0.33, memory=0.33, upload_min=0.5, upload_max=1.0)
    draws = [b.upload_draw(0, "dev", r) for r in range(50)]
    assert all(0.5 <= d <= 1.0 for d in draws)
    assert draws == [b.upload_draw(0, "dev", r) for r in range(50)]
    assert len(set(draws)) > 40


def test_device_classes_are_defined_once():
    from fedhet.plan import CLASS_BUDGETS, DEVICE_CLASSES

    assert (*CLASS_BUDGETS, "custom") == DEVICE_CLASSES
    with pytest.raises(Exception, match="allowed: strong, medium, weak, custom"):
        fleet_class('["tiny"]', 0, 2)


def _plan(knobs):
    from fedhet.plan import NodePlan

    budget = Budget(time=1, memory=1, upload_min=1, upload_max=1)
    return NodePlan(node_id=1, device_id="d", device_class="strong", budget=budget, knobs=knobs)


def test_typed_knobs_round_trip_and_clear_errors():
    from fedhet.methods.fltac.plan import FltacKnobs
    from fedhet.methods.width.plan import WidthKnobs
    from fedhet.plan import NodePlan, PlanError, plan_knobs_of

    knobs = WidthKnobs(gamma=0.25, size_source="budget", beta=0.5)
    plan = NodePlan.from_json(_plan(plan_knobs_of(knobs)).to_json())
    assert plan.knobs == {"gamma": 0.25, "size-source": "budget", "beta": 0.5}
    assert plan.knobs_as(WidthKnobs) == knobs
    # missing knob
    with pytest.raises(PlanError, match=r"device 'd'.*WidthKnobs: beta: Field required"):
        _plan({"gamma": 0.25, "size-source": "budget"}).knobs_as(WidthKnobs)
    # another method's knobs
    with pytest.raises(PlanError, match=r"FltacKnobs: steps: Field required"):
        plan.knobs_as(FltacKnobs)
    # out of range / inconsistent
    with pytest.raises(PlanError, match=r"gamma: Input should be less than or equal to 1"):
        _plan({"gamma": 2.0, "size-source": "budget", "beta": 0.5}).knobs_as(WidthKnobs)
    with pytest.raises(PlanError, match=r"beta must be sqrt\(gamma\)"):
        _plan({"gamma": 0.25, "size-source": "budget", "beta": 0.4}).knobs_as(WidthKnobs)
    with pytest.raises(PlanError, match="malformed plan"):
        NodePlan.from_json('{"node-id": 1}')


def test_plan_of_reads_the_message_plan(monkeypatch):
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedhet.client.runtime import plan_of
    from fedhet.methods.fltac.plan import FltacKnobs
    from fedhet.plan import PlanError

    for attr in ("_run_id", "_node_id", "_task_id"):  # a Message needs a run context
        monkeypatch.setattr(TaskIdentity, attr, 1)
    good = _plan({"steps": 3, "slot-share": 0.5, "rank": 4}).to_json()
    msg = Message(
        RecordDict({"config": ConfigRecord({"plan": good})}), dst_node_id=1, message_type="train"
    )
    plan, knobs = plan_of(msg, FltacKnobs)
    assert plan.device_id == "d" and knobs == FltacKnobs(steps=3, slot_share=0.5, rank=4)
    bad = _plan({"steps": 0, "slot-share": 0.5, "rank": 4}).to_json()
    msg = Message(
        RecordDict({"config": ConfigRecord({"plan": bad})}), dst_node_id=1, message_type="train"
    )
    with pytest.raises(
        PlanError, match=r"FltacKnobs: steps: Input should be greater than or equal to 1"
    ):
        plan_of(msg, FltacKnobs)
    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type="train")
    with pytest.raises(PlanError, match=r"'train' message carries no 'plan'.*FltacKnobs"):
        plan_of(msg, FltacKnobs)
