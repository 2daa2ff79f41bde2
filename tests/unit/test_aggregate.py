"""B2 aggregation rules against hand-computed tensors."""

import numpy as np
import pytest

from fedhet.core.aggregate import Contribution, masked_mean, weighted_mean


def test_weighted_mean_by_hand():
    base = {"w": np.zeros(2, np.float32), "bn.num_batches_tracked": np.array(5)}
    a = Contribution(
        {"w": np.array([1.0, 2.0], np.float32), "bn.num_batches_tracked": np.array(9)}, 1
    )
    b = Contribution(
        {"w": np.array([4.0, 8.0], np.float32), "bn.num_batches_tracked": np.array(9)}, 3
    )
    out = weighted_mean([a, b], base)
    np.testing.assert_allclose(out["w"], [(1 + 12) / 4, (2 + 24) / 4])
    assert out["bn.num_batches_tracked"] == 5  # counters are never averaged


def test_weighted_mean_requires_every_tensor():
    with pytest.raises(ValueError, match="lacks tensor 'w'"):
        weighted_mean([Contribution({}, 1.0)], {"w": np.zeros(1)})


def test_holders_mean_leaves_unheld_coordinates_unchanged():
    base = {"w": np.array([1.0, 1.0, 1.0], np.float32)}
    a = Contribution(
        {"w": np.array([3.0, 5.0, 0.0], np.float32)}, 1, {"w": np.array([1, 1, 0], bool)}
    )
    b = Contribution(
        {"w": np.array([5.0, 0.0, 0.0], np.float32)}, 1, {"w": np.array([1, 0, 0], bool)}
    )
    out = masked_mean([a, b], base, mode="holders")
    # coord 0: mean update (2 + 4)/2 = 3 → 4; coord 1: only a, +4 → 5; coord 2: nobody → 1
    np.testing.assert_allclose(out["w"], [4.0, 5.0, 1.0])


def test_zero_fill_counts_non_trainers_as_zero_update():
    base = {"w": np.array([1.0, 1.0], np.float32), "v": np.array([0.0], np.float32)}
    a = Contribution({"w": np.array([3.0, 5.0], np.float32)}, 1)
    b = Contribution({"v": np.array([6.0], np.float32)}, 1)
    c = Contribution({}, 1)
    out = masked_mean([a, b, c], base, mode="zero-fill")
    # w ← w + (1/|S|) Σ_{i∈S_l} (w_i − w): |S| = 3
    np.testing.assert_allclose(out["w"], [1 + 2 / 3, 1 + 4 / 3], rtol=1e-6)
    np.testing.assert_allclose(out["v"], [2.0])


def test_server_lr_scales_step():
    base = {"w": np.zeros(1, np.float32)}
    out = masked_mean([Contribution({"w": np.ones(1, np.float32)}, 1)], base, server_lr=0.5)
    np.testing.assert_allclose(out["w"], [0.5])


def test_weighted_mean_zero_weights_are_a_clear_error():
    """One rule for every method: a zero total weight is an error, never silently 'equal'."""
    base = {"w": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match="weights sum to zero"):
        weighted_mean([Contribution({"w": np.ones(1)}, 0.0)], base)
    with pytest.raises(ValueError, match="at least one contribution"):
        weighted_mean([], base)
    # a zero-weight contribution next to weighted ones simply adds nothing
    out = weighted_mean(
        [Contribution({"w": np.full(1, 9.0)}, 0.0), Contribution({"w": np.full(1, 3.0)}, 2.0)],
        base,
    )
    np.testing.assert_allclose(out["w"], [3.0])


def test_base_strategy_leaves_zero_example_replies_out(tmp_path):
    """FedhetStrategy.aggregate: replies without examples carry no weight; none left: no change."""
    from fedhet.config import default_run_config
    from fedhet.methods import get_method, parse_run_config
    from fedhet.server.strategy import Reply

    cfg = parse_run_config(default_run_config(method="fedavg", dataset="digits"))
    strategy = get_method("fedavg").strategy_cls(cfg)
    before = {k: v.copy() for k, v in strategy.global_arrays.items()}
    ones = {k: np.ones_like(v) for k, v in before.items()}
    strategy.aggregate(1, [Reply(None, ones, {}, 0)])  # type: ignore[arg-type]
    for k in before:
        np.testing.assert_array_equal(strategy.global_arrays[k], before[k])
    twos = {k: np.full_like(v, 2) for k, v in before.items()}
    strategy.aggregate(1, [Reply(None, ones, {}, 0), Reply(None, twos, {}, 3)])  # type: ignore[arg-type]
    np.testing.assert_array_equal(strategy.global_arrays["fc2.weight"], twos["fc2.weight"])
