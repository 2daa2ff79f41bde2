"""Tests for fedhet.core.width: HeteroFL static and FedRolex rolling submodels (METHODS.md B12)."""

from __future__ import annotations

import math

import pytest
import torch

from fedhet.core.width import extract_submodel, kept_units, scatter_submodel, width_indices
from fedhet.models import build_model, count_parameters


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t]


@pytest.mark.parametrize(
    ("channels", "beta", "mode", "t", "expected"),
    [
        (5, 0.5, "static", 0, [0, 1, 2]),  # ceil(2.5) = 3
        (5, 0.5, "static", 9, [0, 1, 2]),  # static ignores the round
        (5, 0.5, "rolling", 0, [0, 1, 2]),
        (5, 0.5, "rolling", 1, [1, 2, 3]),
        (5, 0.5, "rolling", 4, [4, 0, 1]),  # wraps around
        (5, 0.5, "rolling", 7, [2, 3, 4]),  # t mod C
        (5, 1.0, "rolling", 3, [3, 4, 0, 1, 2]),
        (5, 0.01, "static", 0, [0]),  # at least one unit
    ],
)
def test_kept_units_by_hand(
    channels: int, beta: float, mode: str, t: int, expected: list[int]
) -> None:
    assert _ints(kept_units(channels, beta, mode, t)) == expected


@pytest.mark.parametrize(("beta", "mode"), [(0.0, "static"), (1.5, "static"), (0.5, "random")])
def test_kept_units_rejects_bad_arguments(beta: float, mode: str) -> None:
    with pytest.raises(ValueError):
        kept_units(4, beta, mode)


def _tiny_cnn_s_state() -> dict[str, torch.Tensor]:
    """cnn_s keys with small shapes: conv 1→4, conv 4→6, FC (6 channels × 2) → 3, FC 3 → 2."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "conv1.weight": (4, 1, 3, 3),
        "conv1.bias": (4,),
        "conv2.weight": (6, 4, 3, 3),
        "conv2.bias": (6,),
        "fc1.weight": (3, 12),
        "fc1.bias": (3,),
        "fc2.weight": (2, 3),
        "fc2.bias": (2,),
    }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _summary(idx: dict[str, list[torch.Tensor]]) -> dict[str, list[list[int]]]:
    return {k: [_ints(i) for i in v] for k, v in idx.items()}


def test_width_indices_static_by_hand() -> None:
    idx = _summary(width_indices(_tiny_cnn_s_state(), "cnn_s", 0.5))
    k3 = [0, 1, 2]
    assert idx["conv1.weight"] == [[0, 1], [0], k3, k3]
    assert idx["conv1.bias"] == [[0, 1]]
    assert idx["conv2.weight"] == [[0, 1, 2], [0, 1], k3, k3]
    assert idx["fc1.weight"] == [[0, 1], [0, 1, 2, 3, 4, 5]]  # channels 0..2, 2 inputs each
    assert idx["fc2.weight"] == [[0, 1], [0, 1]]  # all classes kept
    assert idx["fc2.bias"] == [[0, 1]]


def test_width_indices_rolling_wraps_by_hand() -> None:
    state = _tiny_cnn_s_state()
    idx = _summary(width_indices(state, "cnn_s", 0.5, "rolling", round_idx=5))
    # conv1 C=4: (5+k) mod 4 = 1,2; conv2 C=6: 5,0,1; fc1 C=3: 2,0
    assert idx["conv1.weight"][0] == [1, 2]
    assert idx["conv2.weight"][:2] == [[5, 0, 1], [1, 2]]
    assert idx["conv2.bias"] == [[5, 0, 1]]
    assert idx["fc1.weight"] == [[2, 0], [10, 11, 0, 1, 2, 3]]
    assert idx["fc1.bias"] == [[2, 0]]
    assert idx["fc2.weight"] == [[0, 1], [2, 0]]


def test_width_indices_cnn_s_flatten_blocks() -> None:
    full = build_model("cnn_s").state_dict()
    idx = width_indices(full, "cnn_s", 0.5, "rolling", round_idx=40)
    conv2_out = _ints(idx["conv2.weight"][0])
    assert conv2_out == list(range(40, 64)) + list(range(8))
    fc1_in = idx["fc1.weight"][1]
    assert fc1_in.numel() == 32 * 49
    assert _ints(fc1_in[:49]) == list(range(40 * 49, 41 * 49))
    assert _ints(fc1_in[24 * 49 : 25 * 49]) == list(range(49))  # channel 0 after the wrap
    assert _ints(idx["fc1.weight"][0]) == list(range(40, 104))


def test_unknown_model_rejected() -> None:
    with pytest.raises(ValueError, match="supports"):
        width_indices(build_model("resnet_s").state_dict(), "resnet_s", 0.5)


@pytest.mark.parametrize("mode", ["static", "rolling"])
@pytest.mark.parametrize("beta", [1 / 8, 1 / 4, 1 / 2, 0.6, 1.0])
def test_extract_loads_into_width_model_and_matches_zero_padded_full_model(
    beta: float, mode: str
) -> None:
    torch.manual_seed(0)
    full = build_model("cnn_s").state_dict()
    idx = width_indices(full, "cnn_s", beta, mode, round_idx=45)
    sub = extract_submodel(full, idx)
    small = build_model("cnn_s", width=beta)
    small.load_state_dict(sub)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = small(x)
    assert out.shape == (3, 10)
    # The full model with zeros outside the kept units computes the same function: this checks
    # that input sides follow the previous layer, including the conv -> FC flatten.
    values, _ = scatter_submodel(sub, idx, full)
    padded = build_model("cnn_s")
    padded.load_state_dict(values)
    with torch.no_grad():
        assert torch.allclose(padded(x), out, atol=1e-5)


@pytest.mark.parametrize("mode", ["static", "rolling"])
def test_scatter_extract_is_identity_on_kept_coordinates(mode: str) -> None:
    full = _tiny_cnn_s_state()
    idx = width_indices(full, "cnn_s", 0.5, mode, round_idx=5)
    sub = extract_submodel(full, idx)
    values, holders = scatter_submodel(sub, idx, full)
    for key in full:
        assert holders[key].dtype == torch.bool
        assert values[key].shape == full[key].shape
        assert torch.equal(values[key][holders[key]], full[key][holders[key]])
        assert torch.all(values[key][~holders[key]] == 0)
        assert int(holders[key].sum()) == sub[key].numel()


def test_scatter_rejects_wrong_shape() -> None:
    full = _tiny_cnn_s_state()
    idx = width_indices(full, "cnn_s", 0.5)
    sub = extract_submodel(full, idx)
    sub["fc1.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"fc1\.bias"):
        scatter_submodel(sub, idx, full)


@pytest.mark.parametrize(
    ("gamma", "count"), [(1 / 64, 6_794), (1 / 16, 26_698), (1 / 4, 105_866), (1.0, 421_642)]
)
def test_submodel_size_at_sqrt_gamma(gamma: float, count: int) -> None:
    full = build_model("cnn_s").state_dict()
    beta = math.sqrt(gamma)
    sub = extract_submodel(full, width_indices(full, "cnn_s", beta))
    n = sum(t.numel() for t in sub.values())
    assert n == count == count_parameters(build_model("cnn_s", width=beta))
    assert abs(n - gamma * 421_642) / (gamma * 421_642) < 0.04


def test_cnn_b_with_batchnorm_buffers() -> None:
    full = build_model("cnn_b").state_dict()
    idx = width_indices(full, "cnn_b", 0.5, "rolling", round_idx=3)
    assert idx["units.0.1.num_batches_tracked"] == []
    assert _ints(idx["units.1.1.running_mean"][0]) == [3, 4, 5, 6, 7, 8, 9, 10]
    sub = extract_submodel(full, idx)
    model = build_model("cnn_b", width=0.5)
    model.load_state_dict(sub)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    values, holders = scatter_submodel(sub, idx, full)
    assert bool(holders["units.0.1.num_batches_tracked"])
    assert torch.equal(
        values["units.5.weight"][holders["units.5.weight"]].reshape(10, -1), sub["units.5.weight"]
    )
