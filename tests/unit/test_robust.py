"""Robust aggregation helpers (issue 10 item 3), against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedhet.core.aggregate import Contribution
from fedhet.core.robust import (
    cap_examples,
    coordinate_median,
    finite_or_rollback,
    norm_outliers,
    robust_aggregate,
    trimmed_mean,
    update_norm,
)

BASE = {"w": np.zeros(2, np.float32), "bn.num_batches_tracked": np.array(5, np.int64)}


def _c(values: list[float], weight: float = 1.0, mask: list[bool] | None = None) -> Contribution:
    masks = {} if mask is None else {"w": np.array(mask)}
    return Contribution(
        {"w": np.array(values, np.float32), "bn.num_batches_tracked": np.array(99)}, weight, masks
    )


def test_cap_examples() -> None:
    assert cap_examples(10**15, 120) == 120
    assert cap_examples(50, 120) == 50
    assert cap_examples(10**15, None) == 10**9
    assert cap_examples(-3, 10) == 0


def test_update_norm() -> None:
    assert update_norm(_c([3.0, 4.0]), BASE) == pytest.approx(5.0)
    assert update_norm(_c([3.0, 4.0], mask=[True, False]), BASE) == pytest.approx(3.0)
    assert update_norm(_c([1e30, 0.0]), BASE) == pytest.approx(1e30)
    assert update_norm(_c([math.inf, 0.0]), BASE) == math.inf


def test_norm_outliers_lower_median() -> None:
    assert norm_outliers({"a": 1.0, "b": 2.0, "c": 50.0}, 10) == {
        "c": "update norm 50 > 10 x median 2"
    }
    # two updates: the reference is the smaller one, so the huge one cannot hide
    assert list(norm_outliers({"a": 1.0, "b": 1e30}, 10)) == ["b"]
    assert norm_outliers({"a": 1.0, "b": 9.0}, 10) == {}
    assert norm_outliers({"a": 1.0, "b": math.inf}, 0) == {"b": "update norm is not finite"}
    assert norm_outliers({"a": 0.0, "b": 0.0, "c": 3.0}, 10) == {}  # median 0: nothing to compare
    assert norm_outliers({}, 10) == {}


def test_trimmed_mean_hand_computed() -> None:
    cs = [_c([1.0, 10.0]), _c([2.0, 20.0]), _c([3.0, 30.0]), _c([4.0, 40.0]), _c([100.0, -1e6])]
    # n=5, trim 0.2 -> k=1 per side: w0 = mean(2,3,4) = 3; w1 = mean(10,20,30) = 20
    out = trimmed_mean(cs, BASE, trim=0.2)
    np.testing.assert_allclose(out["w"], [3.0, 20.0])
    assert out["w"].dtype == np.float32
    assert int(out["bn.num_batches_tracked"]) == 5  # counters keep the base value
    # trim 0 is the plain unweighted mean
    np.testing.assert_allclose(
        trimmed_mean(cs, BASE, trim=0.0)["w"], [22.0, (100 - 1e6) / 5], rtol=1e-6
    )
    # server_lr 0.5 moves half way from base (0) to the statistic
    np.testing.assert_allclose(trimmed_mean(cs, BASE, trim=0.2, server_lr=0.5)["w"], [1.5, 10.0])
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean(cs, BASE, trim=0.5)


def test_median_hand_computed_weights_ignored() -> None:
    cs = [_c([1.0, 5.0], weight=1e9), _c([2.0, 6.0]), _c([7.0, 8.0]), _c([9.0, 0.0], weight=0.0)]
    # weight 0 excludes the last; median of 3: w0 = 2, w1 = 6 (the 1e9 weight buys nothing)
    np.testing.assert_allclose(coordinate_median(cs, BASE)["w"], [2.0, 6.0])
    # even count: middle two averaged
    np.testing.assert_allclose(coordinate_median(cs[:2], BASE)["w"], [1.5, 5.5])
    np.testing.assert_allclose(robust_aggregate("median", cs, BASE)["w"], [2.0, 6.0])
    with pytest.raises(ValueError, match="unknown"):
        robust_aggregate("mean", cs, BASE)


def test_masked_holders() -> None:
    base = {"w": np.array([10.0, 20.0], np.float32)}
    cs = [
        Contribution({"w": np.array([1.0, 0.0], np.float32)}, 1.0, {"w": np.array([True, False])}),
        Contribution({"w": np.array([3.0, 0.0], np.float32)}, 1.0, {"w": np.array([True, False])}),
        Contribution({"w": np.array([5.0, 0.0], np.float32)}, 1.0, {"w": np.array([True, False])}),
    ]
    # w0 held by three devices: median 3; w1 held by nobody: keeps 20
    np.testing.assert_allclose(coordinate_median(cs, base)["w"], [3.0, 20.0])
    np.testing.assert_allclose(trimmed_mean(cs, base, trim=0.34)["w"], [3.0, 20.0])


def test_finite_or_rollback() -> None:
    prev = {"w": np.ones(2, np.float32)}
    kept, bad = finite_or_rollback({"w": np.array([2.0, 3.0], np.float32)}, prev)
    assert bad == [] and kept["w"][0] == 2.0
    back, bad = finite_or_rollback({"w": np.array([np.nan, 3.0], np.float32)}, prev)
    assert bad == ["w"]
    np.testing.assert_array_equal(back["w"], prev["w"])
    assert back["w"] is not prev["w"]
