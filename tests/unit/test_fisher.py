"""B5/B6 and GENE-FL's probe against hand-computed values (METHODS.md §1, §3.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedhet.core.fisher import (
    aggregate_layer_scores,
    diag_fisher,
    fisher_masks,
    layer_keys,
    layer_of,
    layer_scores,
    layer_sizes,
    layer_tie_weights,
    learngene_penalty,
    normalise_fisher,
    probe_signature,
    quad_penalty,
    taylor_saliency,
)
from fedhet.models import build_model


def _linear(w: list[list[float]]) -> nn.Linear:
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
    return lin


X1, Y1 = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
X2, Y2 = torch.tensor([[2.0, 0.0]]), torch.tensor([1])


def test_diag_fisher_hand_values_batch_and_per_sample() -> None:
    # W = 0: softmax = (1/2, 1/2); ∂CE/∂W = (p - e_y) x^T
    # sample 1: (-1/2, 1/2)^T (1, 2) → [[-.5, -1], [.5, 1]];  sample 2: (1/2, -1/2)^T (2, 0)
    expected = torch.tensor([[(0.25 + 1.0) / 2, (1.0 + 0.0) / 2], [(0.25 + 1.0) / 2, 0.5]])
    f = diag_fisher(_linear([[0, 0], [0, 0]]), [(X1, Y1), (X2, Y2)])
    assert torch.allclose(f["weight"], expected)
    # one batch of both samples: the batch-mean gradient is squared, not each sample's
    both = (torch.cat([X1, X2]), torch.cat([Y1, Y2]))
    f_batch = diag_fisher(_linear([[0, 0], [0, 0]]), [both])
    mean_grad = torch.tensor([[0.25, -0.5], [-0.25, 0.5]])
    assert torch.allclose(f_batch["weight"], mean_grad.pow(2))
    f_ps = diag_fisher(_linear([[0, 0], [0, 0]]), [both], per_sample=True)
    assert torch.allclose(f_ps["weight"], expected)


def test_diag_fisher_per_sample_matches_loop_on_cnn_b() -> None:
    torch.manual_seed(0)
    model = build_model("cnn_b")
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    names = ["units.5.weight", "units.2.0.weight"]
    fast = diag_fisher(model, [(x, y)], names, per_sample=True)
    slow = diag_fisher(model, [(x[i : i + 1], y[i : i + 1]) for i in range(4)], names)
    for n in names:
        assert torch.allclose(fast[n], slow[n], rtol=1e-4, atol=1e-10)
    assert model.training  # mode restored


def test_normalise_fisher_mean_one_and_zero_stays_zero() -> None:
    f = {"a": torch.tensor([0.625, 0.5]), "b": torch.tensor([0.625, 0.5])}
    fh = normalise_fisher(f)
    assert torch.allclose(fh["a"], torch.tensor([0.625, 0.5]) / 0.5625)
    assert math.isclose(float(torch.cat(list(fh.values())).mean()), 1.0, rel_tol=1e-6)
    assert float(normalise_fisher({"a": torch.zeros(3)})["a"].abs().sum()) == 0.0


def test_taylor_saliency_and_layer_score_hand_values() -> None:
    # W = I, x = (1, 2), y = 0: p = softmax(1, 2); g = (p - e_0) x^T; s = |W ⊙ g|
    p1 = math.exp(2) / (math.exp(1) + math.exp(2))
    s = taylor_saliency(_linear([[1, 0], [0, 1]]), [(X1, Y1)])["weight"]
    assert torch.allclose(s, torch.tensor([[p1, 0.0], [0.0, 2 * p1]]), atol=1e-6)
    assert layer_scores({"weight": s}, {"lin": ["weight"]}) == pytest.approx([3 * p1 / 4])


def test_quad_penalty_forms() -> None:
    theta = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    ref = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0])}
    assert float(quad_penalty(theta, ref)) == pytest.approx(1 + 4 + 4)
    assert float(quad_penalty(theta, ref, 0.5)) == pytest.approx(4.5)
    w = {"a": torch.tensor([2.0, 1.0]), "b": 3.0}
    m = {"a": torch.tensor([0.0, 1.0])}
    assert float(quad_penalty(theta, ref, w, m)) == pytest.approx(0 + 4 + 12)


def test_fisher_masks_and_tie_weights() -> None:
    fh = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}
    m = fisher_masks(fh, 0.5)
    assert m["a"].tolist() == [0, 0] and m["b"].tolist() == [1, 1]
    betas = layer_tie_weights(fh, {"A": ["a"], "B": ["b", "b.running_mean"]}, mu=0.01)
    assert betas == pytest.approx({"A": 0.01 * 1.5 / 3.5, "B": 0.01})


def test_learngene_penalty_is_the_section_3_2_equation() -> None:
    theta = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0])}
    gene = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0]), "b.rm": torch.tensor([9.0])}
    fh = {"a": torch.tensor([2.0, 0.5]), "b": torch.tensor([0.5])}
    masks = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0])}
    betas = {"A": 0.1, "B": 0.2}
    got = learngene_penalty(theta, gene, {"A": ["a"], "B": ["b", "b.rm"]}, betas, fh, masks, 1.0)
    # Σ β_l ||θ_l - Θ_l||² = 0.1·(1 + 4) + 0.2·4;  (λ/2) Σ m F̂ (θ-Θ)² = 0.5·(2·1 + 0 + 0.5·4)
    assert float(got) == pytest.approx(0.1 * 5 + 0.2 * 4 + 0.5 * (2 + 2))


def test_layers_of_cnn_b_and_cnn_s() -> None:
    assert layer_of("units.3.1.running_mean") == "units.3"
    assert layer_of("fc1.weight") == "fc1"
    model = build_model("cnn_b")
    state = model.state_dict()
    keys = layer_keys(state, dict(model.named_parameters()))
    assert list(keys) == [f"units.{i}" for i in range(6)]
    assert all(not k.endswith("num_batches_tracked") for ks in keys.values() for k in ks)
    sizes = layer_sizes(state, keys)
    # u0: conv 1→16 (144) + BN γ, β (32) + running mean/var (32)
    assert sizes["units.0"] == 144 + 32 + 32
    assert sizes["units.5"] == 650
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 35674
    assert sum(sizes.values()) == n_params + 2 * (16 + 16 + 32 + 32 + 64)
    assert list(layer_keys(build_model("cnn_s").state_dict())) == ["conv1", "conv2", "fc1", "fc2"]


def test_aggregate_layer_scores_mean_and_vote() -> None:
    rows = [[1.0, 3.0], [2.0, 2.0]]
    assert aggregate_layer_scores(rows).tolist() == pytest.approx([0.375, 0.625])
    # a zero vector counts as uniform
    assert aggregate_layer_scores([[0.0, 0.0], [1.0, 3.0]]).tolist() == pytest.approx(
        [0.375, 0.625]
    )
    votes = aggregate_layer_scores(rows, "vote", sizes=[1, 1], rho=0.5)
    # client 1 votes for layer 1; client 2 (tie) for layer 0; tie-break by the mean score
    assert votes.tolist() == pytest.approx([1 + 0.5 * 0.375 / 0.625, 1.5])
    with pytest.raises(ValueError, match="mean' or 'vote"):
        aggregate_layer_scores(rows, "max")


def test_probe_signature_is_the_normalised_update() -> None:
    lr = 0.1
    sig = probe_signature(_linear([[0, 0], [0, 0]]), {"weight": torch.zeros(2, 2)}, [(X1, Y1)], lr)
    update = -lr * np.array([-0.5, -1.0, 0.5, 1.0])
    assert np.allclose(sig, update / np.linalg.norm(update), atol=1e-6)
    w = probe_signature(
        _linear([[3, 0], [0, 4]]), {"weight": torch.zeros(2, 2)}, [], lr, mode="weights"
    )
    assert np.allclose(w, [0.6, 0, 0, 0.8])


def test_stable_fisher_weights_cap_keeps_sgd_from_diverging() -> None:
    from fedhet.core.fisher import stable_fisher_weights

    lr, lam = 0.05, 1.0
    fh = {"a": torch.tensor([0.5, 300.0])}
    capped = stable_fisher_weights(fh, lr, lam)
    assert capped["a"].tolist() == pytest.approx([0.5, 20.0])
    assert stable_fisher_weights(fh, lr, 0.0)["a"].tolist() == [0.5, 300.0]

    # plain SGD on (λ/2)·F̂·(θ − Θ)²: the uncapped weight blows up, the capped one converges
    def run(weights: dict[str, torch.Tensor]) -> float:
        theta = torch.tensor([1.0, 1.0], requires_grad=True)
        ref = {"a": torch.zeros(2)}
        opt = torch.optim.SGD([theta], lr=lr)
        for _ in range(20):
            opt.zero_grad()
            (0.5 * lam * quad_penalty({"a": theta}, ref, weights)).backward()
            opt.step()
        return float(theta.abs().max())

    assert run(fh) > 1e6
    assert run(capped) <= 1.0
