"""Reply checks before decoding (issue 10 item 2): every hostile blob is refused, never decoded."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedhet.server.validate import (
    HEADER_ALLOWANCE,
    ReplyError,
    check_metrics,
    decode_arrays,
    plan_byte_limit,
    spec_of,
    validate_eval_metrics,
    validate_train_metrics,
)

W = np.arange(12, dtype=np.float32).reshape(3, 4)
EXPECTED = spec_of({"w": W, "b": np.zeros(4, np.float32)})


def _rec(**arrays: Array) -> ArrayRecord:
    return ArrayRecord(array_dict=dict(arrays))


def _raw(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def test_good_reply_decodes_exactly() -> None:
    rec = _rec(w=Array(W), b=Array(np.ones(4, np.float32)))
    out = decode_arrays(rec, EXPECTED)
    np.testing.assert_array_equal(out["w"], W)
    assert out["w"].flags.writeable


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=b""), "empty bytes"),
        (
            Array(
                dtype="float32",
                shape=(3, 4),
                stype="numpy.ndarray",
                data=b"PK\x03\x04" + b"\0" * 60,
            ),
            "not a valid .npy",
        ),
        (
            Array(
                dtype="float64",
                shape=(3, 4),
                stype="numpy.ndarray",
                data=_raw(W.astype(np.float64)),
            ),
            "dtype",
        ),
        (
            Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=_raw(W.reshape(4, 3))),
            "shape",
        ),
        (Array(dtype="float32", shape=(3, 4), stype="torch.Tensor", data=_raw(W)), "serialisation"),
        (
            Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=_raw(W)[:-4]),
            "value bytes",
        ),
        (
            Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=_raw(W) + b"\0" * 4),
            "value bytes",
        ),
        (
            Array(
                dtype="float32",
                shape=(3, 4),
                stype="numpy.ndarray",
                data=_raw(np.full((3, 4), np.inf, np.float32)),
            ),
            "NaN or Inf",
        ),
        (
            Array(
                dtype="float32",
                shape=(3, 4),
                stype="numpy.ndarray",
                data=_raw(np.zeros(12, np.float32)),
            ),
            "header shape",
        ),
    ],
)
def test_bad_arrays_refused(array: Array, needle: str) -> None:
    with pytest.raises(ReplyError, match=needle):
        decode_arrays(_rec(w=array), EXPECTED)


def test_npz_archive_refused() -> None:
    buf = io.BytesIO()
    np.savez(buf, w=W)
    arr = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=buf.getvalue())
    with pytest.raises(ReplyError, match=r"not a valid \.npy"):
        decode_arrays(_rec(w=arr), EXPECTED)


def test_header_claiming_80_terabytes_is_refused_without_allocating() -> None:
    huge = (10_000_000, 2_000_000)  # 2e13 float32 values = 80 TB
    header = {"descr": "<f4", "fortran_order": False, "shape": huge}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    blob = buf.getvalue() + b"\0" * 16
    # claims the expected shape in its metadata but a huge one in its header
    arr = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=blob)
    with pytest.raises(ReplyError, match="header shape"):
        decode_arrays(_rec(w=arr), EXPECTED)
    # claims the huge shape in its metadata too
    arr = Array(dtype="float32", shape=huge, stype="numpy.ndarray", data=blob)
    with pytest.raises(ReplyError, match="shape"):
        decode_arrays(_rec(w=arr), EXPECTED)
    # with an open-length spec, the byte length still has to match the header
    flat = io.BytesIO()
    np.lib.format.write_array_header_1_0(flat, {**header, "shape": (2 * 10**13,)})
    arr = Array(
        dtype="float32",
        shape=(2 * 10**13,),
        stype="numpy.ndarray",
        data=flat.getvalue() + b"\0" * 8,
    )
    with pytest.raises(ReplyError, match="value bytes"):
        decode_arrays(_rec(v=arr), {"v": ((-1,), np.dtype(np.float32))}, open_length_bytes=1 << 30)


def test_names_and_byte_caps() -> None:
    with pytest.raises(ReplyError, match="unexpected arrays"):
        decode_arrays(_rec(x=Array(W)), EXPECTED)
    many = {f"a{i}": Array(W) for i in range(3)}
    with pytest.raises(ReplyError, match="at most 2"):
        decode_arrays(ArrayRecord(array_dict=many), EXPECTED)
    # the plan allows 12*4 + 4*4 value bytes plus one header allowance per array
    assert plan_byte_limit(EXPECTED) == 64 + 2 * HEADER_ALLOWANCE
    with pytest.raises(ReplyError, match="at most 100 allowed"):
        decode_arrays(_rec(w=Array(W)), EXPECTED, max_bytes=100)
    # an open-length array is bounded by its exact size
    spec = {"v": ((-1,), np.dtype(np.float32))}
    assert decode_arrays(_rec(v=Array(np.ones(5, np.float32))), spec, sizes={"v": 5})["v"].size == 5
    with pytest.raises(ReplyError, match="values, expected 5"):
        decode_arrays(_rec(v=Array(np.ones(6, np.float32))), spec, sizes={"v": 5})


def test_train_metrics_capped_and_finite() -> None:
    good = {"num-examples": 10**15, "train-loss": 0.5, "train-seconds": 1.0}
    assert validate_train_metrics(good, declared=120) == 120
    assert validate_train_metrics({**good, "num-examples": 7}, declared=120) == 7
    for bad in (
        {**good, "train-loss": math.inf},
        {**good, "num-examples": -1},
        {**good, "x": [1.0, math.nan]},
    ):
        with pytest.raises(ReplyError):
            validate_train_metrics(bad, declared=120)


def test_eval_metrics_bounded_by_declared_test_size() -> None:
    assert validate_eval_metrics(
        {"eval-correct": 40, "num-examples": 50, "eval-loss": 3.0}, 50
    ) == (40, 50, 3.0)
    cases = [
        {"eval-correct": math.inf, "num-examples": 50, "eval-loss": 3.0},
        {"eval-correct": 10**12, "num-examples": 10**12, "eval-loss": 3.0},
        {"eval-correct": 51, "num-examples": 50, "eval-loss": 3.0},
        {"eval-correct": 1, "num-examples": 50, "eval-loss": math.nan},
    ]
    for m in cases:
        with pytest.raises(ReplyError):
            validate_eval_metrics(m, 50)


def test_check_metrics_limits_count() -> None:
    with pytest.raises(ReplyError, match="more than"):
        check_metrics({"x": [0.0] * 100_001})
    with pytest.raises(ReplyError, match="number"):
        check_metrics({"x": "str"})
