"""B1 sparse codec against hand-computed values."""

import numpy as np
import pytest

from fedhet.core.codec import (
    choose_encoding,
    decode_payload,
    encode_sparse,
    encode_values_only,
    encoding_costs,
    payload_bytes,
)


def test_costs_and_thresholds_match_spec():
    # d = 64 fp32: dense 256 B; bitmask 4k + 8; index 8k
    assert encoding_costs(64, 10) == {"dense": 256, "bitmask": 48, "index": 80}
    # ρ < 1/32 → index beats bitmask; ρ < 31/32 → bitmask beats dense
    assert choose_encoding(3200, 99) == "index"
    assert choose_encoding(3200, 101) == "bitmask"
    assert choose_encoding(3200, 3099) == "bitmask"
    assert choose_encoding(3200, 3101) == "dense"


@pytest.mark.parametrize("enc", ["dense", "bitmask", "index"])
def test_round_trip_each_encoding(enc):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    mask = rng.random((5, 7)) < 0.3
    payload = encode_sparse("w", x, mask, encoding=enc)
    out, carried = decode_payload(payload, {"w": (5, 7)})
    np.testing.assert_array_equal(out["w"], np.where(mask, x, 0))
    if enc != "dense":
        np.testing.assert_array_equal(carried["w"], mask)


def test_bitmask_layout_and_bytes():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask[0, 1] = mask[3, 3] = True
    p = encode_sparse("w", x, mask, encoding="bitmask")
    np.testing.assert_array_equal(p["w::values"], [1.0, 15.0])
    np.testing.assert_array_equal(p["w::bitmask"], [0b01000000, 0b00000001])
    assert payload_bytes(p) == 2 * 4 + 2


def test_values_only_needs_known_mask_and_scatters_into_base():
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    mask = np.array([True, False, True, False])
    p = encode_values_only("b", x, mask)
    with pytest.raises(ValueError, match="without a bitmask"):
        decode_payload(p, {"b": (4,)})
    base = {"b": np.full(4, 9.0, np.float32)}
    out, _ = decode_payload(p, {"b": (4,)}, base=base, masks={"b": mask})
    np.testing.assert_array_equal(out["b"], [1.0, 9.0, 3.0, 9.0])


def test_decode_rejects_bad_payloads():
    with pytest.raises(ValueError, match="not part of the model"):
        decode_payload({"zz": np.zeros(2, np.float32)}, {"w": (2,)})
    bad = {"w::values": np.zeros(3, np.float32), "w::index": np.array([0, 9], np.int32)}
    with pytest.raises(ValueError, match="out of range"):
        decode_payload(bad, {"w": (4,)})
    bad = {"w::values": np.zeros(3, np.float32), "w::index": np.array([0, 1], np.int32)}
    with pytest.raises(ValueError, match="3 values for a mask of 2"):
        decode_payload(bad, {"w": (4,)})


def test_scalar_arrays_keep_their_shape():
    """BN's num_batches_tracked is 0-d; it must travel as 0-d (a (1,) array fails validation)."""
    from fedhet.client.runtime import reply_content
    from fedhet.core.codec import as_contiguous
    from fedhet.server.strategy import to_array_record, to_numpy_dict

    scalar = np.array(7, dtype=np.int64)
    assert as_contiguous(scalar).shape == ()
    assert to_numpy_dict(to_array_record({"n": scalar}))["n"].shape == ()
    content = reply_content({"n": scalar}, {"num-examples": 1})
    assert content.array_records["arrays"]["n"].numpy().shape == ()
    p = encode_sparse("n", scalar.astype(np.float32), np.array(True), encoding="dense")
    assert p["n"].shape == ()
