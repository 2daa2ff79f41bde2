"""Identity and budgets (issue 10 item 5): absurd profiles rejected, budgets independent of order."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from fedhet.config import ConfigError, SharedConfig
from fedhet.plan import FleetReference, budget_for, reference_bench_ms
from fedhet.profile import parse_node_config, parse_profile


def _profile(device: str, bench: float, **kw: Any) -> Any:
    raw = {
        "device-id": device,
        "device-class": "custom",
        "cores": 2.0,
        "mem-total-bytes": 10**9,
        "mem-avail-bytes": 10**9,
        "bench-ms": bench,
        **kw,
    }
    return parse_profile(raw)


def _budgets(profiles: list[Any], shared: SharedConfig) -> dict[str, float]:
    """Plan a registration batch the way the server does: one reference for the batch."""
    ref = FleetReference(10**6, 4 * 10**6, reference_bench_ms(p.bench_ms for p in profiles))
    return {p.device_id: budget_for(p, shared, ref).time for p in profiles}


def test_budgets_do_not_depend_on_registration_order() -> None:
    fleet = [_profile("a", 10.0), _profile("b", 50.0), _profile("c", 100.0)]
    shared = SharedConfig()
    seen = {
        tuple(sorted(_budgets(list(order), shared).items()))
        for order in itertools.permutations(fleet)
    }
    assert seen == {(("a", 1.0), ("b", 0.2), ("c", 0.1))}


def test_one_fast_claim_cannot_move_other_budgets() -> None:
    shared = SharedConfig()
    honest = [_profile("a", 10.0), _profile("b", 50.0), _profile("c", 100.0)]
    liar = _profile("z", 0.01)  # the smallest accepted value, 1000x faster than the rest
    with_liar = _budgets([*honest, liar], shared)
    assert {k: with_liar[k] for k in "abc"} == _budgets(honest, shared)
    assert with_liar["z"] == 1.0


def test_ref_bench_ms_wins() -> None:
    shared = SharedConfig(**{"ref-bench-ms": 25.0})
    ref = FleetReference(10**6, 4 * 10**6, reference_bench_ms([10.0, 50.0], shared.ref_bench_ms))
    assert budget_for(_profile("b", 50.0), shared, ref).time == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bench-ms", 1e-300),
        ("bench-ms", 0.0),
        ("bench-ms", -1.0),
        ("bench-ms", math.inf),
        ("bench-ms", math.nan),
        ("cores", 1e-9),
        ("cores", math.inf),
        ("mem-avail-bytes", 10**30),
        ("num-train", 10**15),
        ("memory-mb", math.inf),
    ],
)
def test_absurd_measurements_rejected_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        _profile("x", 10.0, **{key: value})


@pytest.mark.parametrize("value", [math.inf, "inf", math.nan, 1e300, -1.0])
def test_node_memory_must_be_finite(value: Any) -> None:
    with pytest.raises(ConfigError, match="'memory-mb'"):
        parse_node_config({"memory-mb": value})
