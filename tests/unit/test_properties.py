"""Property-based tests (issue 10 item 6): every input is refused with a reason naming what is
wrong, or accepted and usable. Never another exception."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from flwr.app import Array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhet.config import ConfigError, SharedConfig, default_run_config
from fedhet.methods import parse_run_config
from fedhet.plan import FleetReference, budget_for, reference_bench_ms
from fedhet.profile import parse_node_config, parse_profile
from fedhet.server.validate import (
    ReplyError,
    decode_arrays,
    spec_of,
    validate_eval_metrics,
    validate_train_metrics,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            "inf",
            "nan",
            "-1",
            "0",
            "1",
            "three-tier",
            "uniform",
            "[]",
            "{}",
            '{"strong": 0}',
            '{"strong": -1, "weak": 2}',
            '["strong", "weak"]',
            '{"strong": 1e400}',
            "/abs/dir",
            "rel/dir",
            "fedavg",
            "fiarse",
            "median",
            "trimmed-mean",
        ]
    ),
    st.booleans(),
)
SHARED_KEYS = sorted(k.replace("_", "-") for k in SharedConfig.model_fields)


def _names_a_key(msg: str, keys: list[str]) -> bool:
    return any(f"'{k}'" in msg for k in keys)


@SETTINGS
@given(st.dictionaries(st.sampled_from(SHARED_KEYS), scalars, min_size=1, max_size=4))
def test_run_config_raises_config_error_naming_the_key_or_parses(over: dict[str, Any]) -> None:
    raw = default_run_config()
    raw.update(over)
    try:
        cfg = parse_run_config(raw)
    except ConfigError as exc:
        assert _names_a_key(str(exc), list(over)), str(exc)
        return
    s = cfg.shared
    for name, value in s.model_dump().items():
        if isinstance(value, float):
            assert math.isfinite(value), name
    assert s.seed >= 0 and s.lr > 0
    assert s.local_epochs > 0 or s.local_steps > 0
    assert s.output_dir == "" or s.resolved_output_dir().is_absolute()


NODE_KEYS = [
    "partition-id",
    "num-partitions",
    "device-id",
    "device-class",
    "bandwidth-mbps",
    "memory-mb",
    "time-frac",
    "mem-frac",
    "upload-min",
    "upload-max",
    "availability",
]


@SETTINGS
@given(st.dictionaries(st.sampled_from(NODE_KEYS), scalars, min_size=1, max_size=4))
def test_node_config_raises_config_error_naming_the_key_or_parses(raw: dict[str, Any]) -> None:
    try:
        node = parse_node_config(raw)
    except ConfigError as exc:
        assert _names_a_key(str(exc), list(raw)), str(exc)
        return
    if node.memory_mb is not None:
        int(node.memory_mb * 1e6)  # what build_profile does: must not overflow


GOOD_PROFILE: dict[str, Any] = {
    "device-id": "d",
    "device-class": "custom",
    "cores": 2.0,
    "mem-total-bytes": 10**9,
    "mem-avail-bytes": 10**9,
}
PROFILE_KEYS = [
    *GOOD_PROFILE,
    "bench-ms",
    "memory-mb",
    "bandwidth-mbps",
    "time-frac",
    "upload-min",
    "upload-max",
    "num-train",
    "num-test",
    "availability",
]


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(PROFILE_KEYS), scalars, min_size=1, max_size=4),
    st.lists(st.floats(min_value=0.01, max_value=600_000), max_size=5),
)
def test_profiles_rejected_with_key_or_give_valid_budgets(
    over: dict[str, Any], others: list[float]
) -> None:
    try:
        profile = parse_profile({**GOOD_PROFILE, **over})
    except ConfigError as exc:
        assert _names_a_key(str(exc), list(over)), str(exc)
        return
    shared = SharedConfig(**{"profile-source": "measured"})
    ref = FleetReference(10**6, 4 * 10**6, reference_bench_ms([*others, profile.bench_ms]))
    b = budget_for(profile, shared, ref)
    for v in (b.time, b.memory, b.upload_min, b.upload_max):
        assert 0 < v <= 1


W = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
SPEC = spec_of({"w": W})


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


blobs = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda cut, pad: _npy(W)[:cut] + pad, st.integers(0, 200), st.binary(max_size=20)),
    st.builds(
        lambda shape, dt: _npy(np.zeros(shape, dt)),
        st.lists(st.integers(0, 4), max_size=3).map(tuple),
        st.sampled_from(["f4", "f8", "i8", "u1", "f2"]),
    ),
    st.just(_npy(W)),
    st.just(_npy(np.full((2, 3), np.nan, np.float32))),
)


@SETTINGS
@given(
    blob=blobs,
    dtype=st.sampled_from(["float32", "float64", "int64", "object", "<f4", "bogus"]),
    shape=st.one_of(st.just((2, 3)), st.lists(st.integers(-5, 10**13), max_size=3).map(tuple)),
    stype=st.sampled_from(["numpy.ndarray", "torch", ""]),
    name=st.sampled_from(["w", "x"]),
    cap=st.integers(0, 400),
)
def test_replies_decoded_exactly_or_dropped_with_a_reason(
    blob: bytes, dtype: str, shape: tuple[int, ...], stype: str, name: str, cap: int
) -> None:
    arr = Array(dtype=dtype, shape=shape, stype=stype, data=blob)
    try:
        out = decode_arrays({name: arr}, SPEC, max_bytes=cap)
    except ReplyError as exc:
        assert str(exc)
        return
    assert set(out) == {"w"} and out["w"].shape == (2, 3) and out["w"].dtype == np.float32
    assert np.isfinite(out["w"]).all()


metric_values = st.one_of(scalars, st.lists(st.floats(allow_nan=True), max_size=3))


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            ["num-examples", "train-loss", "train-seconds", "eval-correct", "eval-loss", "x"]
        ),
        metric_values,
        max_size=6,
    ),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_reply_metrics_bounded_or_dropped(metrics: dict[str, Any], declared: int | None) -> None:
    try:
        n = validate_train_metrics(metrics, declared)
        assert 0 <= n <= (declared if declared is not None else 10**9)
    except ReplyError as exc:
        assert str(exc)
    try:
        c, total, loss = validate_eval_metrics(metrics, declared)
        assert 0 <= c <= total and math.isfinite(loss)
        assert total <= (declared if declared is not None else 10**9)
    except ReplyError as exc:
        assert str(exc)


def test_every_float_key_of_every_method_refuses_non_finite_values() -> None:
    """``lr=inf``-style values fail at start for method keys too, naming the key."""
    import pytest

    from fedhet.methods import METHODS, get_method

    checked = 0
    for name in METHODS:
        cls = get_method(name).config_cls
        for field_name, info in cls.model_fields.items():
            if info.annotation is not float:
                continue
            key = f"{name}.{field_name.replace('_', '-')}"
            for bad in (math.inf, math.nan):
                raw = default_run_config(method=name, **{key: bad})
                with pytest.raises(ConfigError, match=f"'{key}'"):
                    parse_run_config(raw)
            checked += 1
    assert checked >= 5
