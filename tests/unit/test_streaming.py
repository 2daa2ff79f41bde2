"""Streaming aggregation (issue 15 item 4): same result as the list path, one reply in memory.

The streamed sample-weighted mean (:func:`fedhet.server.streaming.stream_mean`, both the unfiltered
and the spill-backed filtered path) must equal :func:`fedhet.core.aggregate.weighted_mean` over the
replies the list path keeps, drop the same bad replies, and hold far less than one model per
reply: the memory test sizes its bound from the model, not from fixed bytes.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedhet.core.aggregate import (
    Contribution,
    MaskedSum,
    WeightedSum,
    masked_mean,
    weighted_mean,
)
from fedhet.server.ledger import RoundLog
from fedhet.server.replies import Reply
from fedhet.server.streaming import MaskedRule, PlainRule, stream_mean
from fedhet.server.trust import drop_outliers

SHAPES = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (10, 32), "fc.bias": (10,)}


def _base(rng: np.random.Generator, scale: int = 1) -> dict[str, np.ndarray]:
    out = {k: rng.normal(size=(s[0] * scale, *s[1:])).astype(np.float32) for k, s in SHAPES.items()}
    out["bn.num_batches_tracked"] = np.array(7, dtype=np.int64)
    return out


def _node(i: int) -> Any:
    plan = SimpleNamespace(knobs={})
    return SimpleNamespace(
        node_id=i, device_id=f"d{i}", profile=SimpleNamespace(device_class="strong"), plan=plan
    )


def _reply(i: int, base: dict[str, np.ndarray], rng: np.random.Generator, n: int) -> Reply:
    arrays = {
        k: (v + 0.1 * rng.normal(size=v.shape)).astype(v.dtype) if v.ndim else v.copy()
        for k, v in base.items()
    }
    return Reply(_node(i), arrays, {"train-loss": 1.0}, n)


class _Strategy:
    """What stream_mean needs of a strategy (``masked``: a holders rule, half of each tensor)."""

    def __init__(self, base: dict[str, np.ndarray], masked: bool = False) -> None:
        self.global_arrays = base
        self.current = RoundLog(1)
        self.masked = masked
        self.run_dir: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def note_replies(self, server_round: int, replies: list[Reply]) -> None:
        self.noted = [r.node.node_id for r in replies]

    def stream_rule(self, server_round: int) -> PlainRule | MaskedRule:
        if not self.masked:
            return PlainRule(self.global_arrays)

        def half(reply: Reply) -> Contribution:
            masks: dict[str, np.ndarray | bool] = {
                k: np.arange(v.size).reshape(v.shape) % 2 == reply.node.node_id % 2
                for k, v in reply.arrays.items()
            }
            return Contribution(reply.arrays, 1.0, masks)

        return MaskedRule(self.global_arrays, half)


def _list_path(
    base: dict[str, np.ndarray], replies: list[Reply], factor: float
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Today's list path: drop_outliers, then weighted_mean over replies with examples."""
    kept = drop_outliers(replies, {r.node.node_id: base for r in replies}, factor, RoundLog(1))
    contribs = [Contribution(r.arrays, float(r.num_examples)) for r in kept if r.num_examples > 0]
    return weighted_mean(contribs, base), [r.node.node_id for r in kept]


def test_weighted_sum_fed_one_by_one_equals_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    base = _base(rng)
    weights = [0.0, 3.0, 17.0, 0.0, 250.0, 1.0]
    contribs = [Contribution(_reply(i, base, rng, 1).arrays, w) for i, w in enumerate(weights)]
    acc = WeightedSum(base)
    for c in contribs:
        acc.add(c.tensors, c.weight)
    got, want = acc.result(), weighted_mean(contribs, base)
    total = sum(weights)
    for name, ref in base.items():
        assert got[name].dtype == ref.dtype
        np.testing.assert_array_equal(got[name], want[name])
        if ref.ndim:  # and both equal the textbook formula
            direct = sum(
                w * c.tensors[name].astype(np.float64)
                for c, w in zip(contribs, weights, strict=True)
            )
            np.testing.assert_allclose(got[name], direct / total, rtol=1e-6, atol=1e-6)
        else:
            assert got[name] == ref  # counters keep the base value


@pytest.mark.parametrize("mode", ["holders", "zero-fill"])
def test_masked_sum_fed_one_by_one_equals_masked_mean(mode: str) -> None:
    rng = np.random.default_rng(6)
    base = _base(rng)
    contribs = []
    for i, w in enumerate([1.0, 0.0, 4.0, 2.5]):
        arrays = _reply(i, base, rng, 1).arrays
        masks: dict[str, np.ndarray | bool] = {
            k: rng.random(v.shape) < 0.6 for k, v in arrays.items() if v.ndim
        }
        if i == 2:
            del arrays["fc.bias"]  # a tensor this device does not hold
        contribs.append(Contribution(arrays, w, masks))
    acc = MaskedSum(base)
    for c in contribs:
        acc.add(c)
    got = acc.result(mode=mode, server_lr=0.7)
    want = masked_mean(contribs, base, mode=mode, server_lr=0.7)
    for name in base:
        np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(ValueError, match="shape"):
        acc.add(Contribution({"fc.weight": np.zeros((2, 2), np.float32)}, 1.0))
    assert acc.count == len(contribs)


def test_weighted_sum_checks_before_adding() -> None:
    rng = np.random.default_rng(1)
    base = _base(rng)
    acc = WeightedSum(base)
    good = _reply(0, base, rng, 1).arrays
    acc.add(good, 2.0)
    missing = {k: v for k, v in good.items() if k != "fc.bias"}
    wrong = {**good, "fc.weight": np.zeros((3, 3), np.float32)}
    for bad, weight in ((missing, 1.0), (wrong, 1.0), (good, -1.0), (good, float("nan"))):
        with pytest.raises(ValueError):
            acc.add(bad, weight)
    assert acc.count == 1 and acc.total == 2.0  # nothing of a refused contribution was added
    np.testing.assert_array_equal(acc.result()["fc.weight"], good["fc.weight"])
    with pytest.raises(ValueError, match="sum to zero"):
        zero = WeightedSum(base)
        zero.add(good, 0.0)
        zero.result()


@pytest.mark.parametrize("factor", [0.0, 10.0])
def test_stream_mean_equals_list_path_and_drops_bad_replies(factor: float, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = _base(rng)
    replies = [_reply(i, base, rng, n) for i, n in enumerate([5, 0, 12, 7, 30, 0, 9, 3])]
    replies[2].arrays["conv.bias"][0] = np.nan  # non-finite: dropped on either path
    replies[5].arrays["fc.weight"] *= 1e4  # far outlier: dropped when the filter is on
    want, kept_ids = _list_path(base, replies, factor)
    strategy = _Strategy(base)
    light = stream_mean(
        strategy,
        1,
        iter(replies),
        {r.node.node_id: base for r in replies},
        factor,
        {r.node.node_id: i for i, r in enumerate(replies)},
        spill_dir=tmp_path,
    )
    assert [r.node.node_id for r in light] == kept_ids == strategy.noted
    assert all(not r.arrays for r in light)  # bookkeeping only
    assert 2 not in kept_ids and (5 not in kept_ids) == (factor > 0)
    dropped = {d["node-id"]: d["reason"] for d in strategy.current.dropped}
    assert "not finite" in dropped[2]
    for name in base:
        np.testing.assert_array_equal(strategy.global_arrays[name], want[name])
    assert not list(tmp_path.iterdir())  # the spill folder is gone


def test_masked_stream_equals_masked_mean() -> None:
    rng = np.random.default_rng(7)
    base = _base(rng)
    replies = [_reply(i, base, rng, 3) for i in range(5)]
    strategy = _Strategy(base, masked=True)
    rule = strategy.stream_rule(1)
    assert isinstance(rule, MaskedRule)
    want = masked_mean([rule.contribution(r) for r in replies], base)
    assert len(stream_mean(strategy, 1, iter(replies), {}, 0.0, {})) == 5
    for name in base:
        np.testing.assert_array_equal(strategy.global_arrays[name], want[name])


def test_stream_mean_drops_a_reply_lacking_a_tensor_and_keeps_model_without_examples() -> None:
    rng = np.random.default_rng(3)
    base = _base(rng)
    replies = [_reply(i, base, rng, 4) for i in range(3)]
    del replies[1].arrays["fc.bias"]
    strategy = _Strategy(base)
    kept = stream_mean(strategy, 1, iter(replies), {}, 0.0, {})
    assert [r.node.node_id for r in kept] == [0, 2]
    assert "fc.bias" in strategy.current.dropped[0]["reason"]
    want = weighted_mean([Contribution(replies[i].arrays, 4.0) for i in (0, 2)], base)
    np.testing.assert_array_equal(strategy.global_arrays["fc.weight"], want["fc.weight"])
    idle = _Strategy(base)
    assert len(stream_mean(idle, 1, iter([_reply(0, base, rng, 0)]), {}, 0.0, {})) == 1
    assert idle.global_arrays is base  # no reply with examples: the model stays


def _peak(fn: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("factor", "masked"), [(0.0, False), (10.0, False), (0.0, True)])
def test_streaming_memory_grows_far_less_than_one_model_per_reply(
    factor: float, masked: bool, tmp_path: Path
) -> None:
    """Peak traced memory of aggregating N replies that arrive one at a time (as pulled from the
    grid): the list path grows by about one model per reply, the streamed one by far less."""
    rng = np.random.default_rng(4)
    base = _base(rng, scale=64)  # ~0.6 MB of float32
    model = sum(v.nbytes for v in base.values())

    def arriving(n: int) -> Iterator[Reply]:
        gen = np.random.default_rng(5)
        for i in range(n):
            yield _reply(i, base, gen, 10 + i)

    def streamed(n: int) -> int:
        strategy = _Strategy(base, masked)
        return _peak(
            lambda: stream_mean(strategy, 1, arriving(n), {}, factor, {}, spill_dir=tmp_path)
        )

    def listed(n: int) -> int:
        return _peak(lambda: _list_path(base, list(arriving(n)), factor))

    small, big = 4, 36
    grow_stream = streamed(big) - streamed(small)
    grow_list = listed(big) - listed(small)
    per_reply = (big - small) * model
    assert grow_list > 0.8 * per_reply  # the measurement sees replies held together
    assert grow_stream < 0.1 * per_reply, (grow_stream, per_reply)
    assert streamed(big) < 12 * model  # a small multiple of the model, whatever N
