"""GENE-FL with ``genefl.granularity=element`` (METHODS.md §3.4): an element learnGene mask chosen
by Taylor scores under ρ, the mask sent once per device, values-only learnGenes both ways, bad
element-score vectors dropped. In-process runs on the LocalGrid (digits, ``cnn_b``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message

from fedhet.core.masks import topk_mask
from fedhet.methods import parse_run_config
from fedhet.methods.genefl import element, wire
from fedhet.methods.genefl.strategy import MASK_DOWN
from tests.methods.helpers import make, tiny_config

#: R_w = 1 so that three rounds cover warm-up, clustering and one gene round.
ELEMENT = {
    "genefl.granularity": "element",
    "genefl.warmup": 1,
    "partition": "pathological",
    "pathological-k": 2,
}


# --- selection under ρ, by hand ----------------------------------------------------------------
def test_topk_mask_keeps_exactly_k_ties_in_model_order() -> None:
    scores = torch.tensor([0.1, 0.5, 0.5, 0.0, 0.9, 0.5])
    # k = ⌊0.5·6⌋ = 3, τ = 0.5: 0.9 above τ, then the first two of the three ties at τ
    assert topk_mask(scores, 0.5).tolist() == [False, True, True, False, True, False]
    # all scores tied (dead units: zero saliency): still exactly k, never the whole tensor
    assert topk_mask(torch.zeros(8), 0.25).tolist() == [True, True] + [False] * 6
    assert int(topk_mask(scores, 0.01).sum()) == 1  # k = max(1, ⌊γ·d⌋)
    assert bool(topk_mask(scores, 1.0).all())
    with pytest.raises(ValueError, match="non-finite"):
        topk_mask(torch.tensor([1.0, float("nan")]), 0.5)


def test_element_selection_merges_scores_then_keeps_rho_share() -> None:
    v1 = np.array([1.0, 0.0, 0.0, 3.0])  # sum-1: .25 0 0 .75
    v2 = np.array([0.0, 2.0, 2.0, 0.0])  # sum-1: 0 .5 .5 0
    mean = np.array([0.125, 0.25, 0.25, 0.375])
    assert np.allclose(element.merge_scores([v1, v2], "mean", 0.5), mean)
    # ρ = 0.5 of d = 4: k = 2 → entry 3, then the first of the tied entries 1 and 2
    assert element.select_elements([v1, v2], "mean", 0.5).tolist() == [False, True, False, True]
    assert element.select_elements([v1, v2], "mean", 0.75).tolist() == [False, True, True, True]
    # vote: device 1 votes {0, 3}, device 2 {1, 2}; the mean breaks the tie below one vote
    assert np.allclose(element.merge_scores([v1, v2], "vote", 0.5), 1 + 0.5 * mean / 0.375)
    assert element.select_elements([v1, v2], "vote", 0.5).tolist() == [False, True, False, True]
    # an all-zero vector counts as uniform, it does not divide by zero
    assert np.allclose(element.merge_scores([np.zeros(4)], "mean", 0.5), 0.25)


def test_mask_wire_and_values_round_trip() -> None:
    shapes = [("a.weight", (2, 3)), ("a.bias", (2,)), ("b.weight", (4,))]
    d = element.num_entries(shapes)
    flat = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    enc = element.encode_mask(flat)  # 4 kept: 16 B of indices > ⌈12/8⌉ = 2 B of bits
    assert list(enc) == [wire.MASK] and enc[wire.MASK].nbytes == math.ceil(d / 8)
    assert element.decode_mask(enc, d).tolist() == flat.tolist()
    sparse = np.zeros(1000, dtype=bool)
    sparse[[7, 900]] = True  # 8 B of indices < 125 B of bits
    enc = element.encode_mask(sparse)
    assert list(enc) == [wire.MASK_INDEX] and enc[wire.MASK_INDEX].nbytes == 8
    assert element.decode_mask(enc, 1000).tolist() == sparse.tolist()
    assert element.decode_mask({}, d) is None
    with pytest.raises(ValueError, match="expected 2"):
        element.decode_mask({wire.MASK: np.zeros(3, np.uint8)}, d)
    with pytest.raises(ValueError, match="out of range"):
        element.decode_mask({wire.MASK_INDEX: np.array([12], np.int32)}, d)
    masks = element.split_mask(flat, shapes)
    assert element.flat_mask(masks, shapes).tolist() == flat.tolist()
    rng = np.random.default_rng(0)
    state = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes}
    values = element.gather(state, masks)
    assert values[wire.VALUES].tolist() == [
        state["a.weight"][0, 0],
        state["a.weight"][1, 0],
        state["b.weight"][0],
        state["b.weight"][1],
    ]
    zeros = {n: np.zeros(s, np.float32) for n, s in shapes}
    back = element.scatter(values, masks, zeros)
    assert "a.bias" not in back  # no masked entry: not touched
    for n in back:
        assert np.array_equal(back[n], np.where(masks[n], state[n], 0))
    with pytest.raises(ValueError, match="3 values for a mask of 4"):
        element.scatter({wire.VALUES: values[wire.VALUES][:3]}, masks, zeros)


# --- in-process runs ------------------------------------------------------------------------------
def _rows(tmp: Path, run: str = "t-genefl") -> list[dict[str, Any]]:
    """Every round row of the run log (``strategy.history`` restarts with each resumed ``start``)."""
    text = (tmp / run / "metrics.jsonl").read_text()
    return [json.loads(x) for x in text.splitlines()]


def _param_entries(strategy) -> int:
    return int(sum(strategy.global_arrays[n].size for n, _ in strategy.shapes))


def test_element_run_uploads_masked_values_and_changes_only_masked_entries(
    tmp_path: Path,
) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=3, **ELEMENT)
    strategy.start(grid, num_rounds=2)  # warm-up (scores), clustering
    before = {k: v.copy() for k, v in strategy.global_arrays.items()}
    strategy.start(grid, num_rounds=3)  # one gene round
    history = _rows(tmp_path)
    assert [h["genefl-phase"] for h in history] == ["warmup", "clustering", "gene"]
    rho = strategy.mcfg.rho
    d = _param_entries(strategy)
    k = max(1, math.floor(rho * d))
    assert strategy.gene_size == k == history[-1]["genefl-learngene-size"]
    model_bytes = sum(a.nbytes for a in before.values())
    header = 200  # one array's name/dtype/shape record bytes (the values travel as one array)
    # gene round: every trained device uploads the k masked values, not whole tensors
    trained = [n for n in history[2]["nodes"] if n["status"] == "trained"]
    assert len(trained) >= 2
    for n in trained:
        assert 4 * k <= n["payload-bytes-up"] <= 4 * k + header
        assert n["payload-bytes-up"] <= rho * model_bytes + header
        assert MASK_DOWN not in n  # the mask travelled once, in the clustering round
        assert n["payload-bytes-down"] <= 4 * k + header  # Θ_k values only
    # the mask went to every founder once, as packed bits (cheaper than indices at ρ = 0.25)
    for n in history[1]["nodes"]:
        assert n[MASK_DOWN] == math.ceil(d / 8)
    assert strategy.mask_holders == {n.device_id for n in strategy.nodes.values()}
    # signatures cover the masked entries
    sig = history[1]["nodes"][0]["payload-bytes-up"]
    assert 4 * k <= sig <= 4 * k + header
    # Θ*: only masked parameter entries changed on the server; buffers and the rest did not
    after = strategy.global_arrays
    mask = strategy.element_mask
    changed = 0
    for name, old in before.items():
        if name in mask:
            assert np.array_equal(after[name][~mask[name]], old[~mask[name]]), name
            changed += int((after[name][mask[name]] != old[mask[name]]).sum())
        else:
            assert np.array_equal(after[name], old), name
    assert changed > k // 2, f"only {changed} of {k} masked entries moved"
    state = strategy.state_dict()
    strategy.load_state_dict(state)
    assert strategy.gene_size == k


def test_element_newcomer_gets_mask_with_probe(tmp_path: Path) -> None:
    from client_app.app import app as client_app
    from fedhet.methods import get_method
    from fedhet.server.run_dir import RunDir
    from fedhet.sim import LocalGrid, simulated_node_configs

    raw = tiny_config("genefl", tmp_path, 5, num_server_rounds=3, **ELEMENT)
    nodes = simulated_node_configs(6)
    grid = LocalGrid(client_app, nodes[:5], raw)
    strategy = get_method("genefl").strategy_cls(parse_run_config(raw), RunDir(tmp_path / "t"))
    strategy.start(grid, num_rounds=2)
    late = grid.add_node(nodes[5])
    strategy.start(grid, num_rounds=3)
    rows = _rows(tmp_path, "t")
    entry = next(n for n in rows[2]["nodes"] if n["node-id"] == late)
    d, k = _param_entries(strategy), strategy.gene_size
    assert entry["genefl-role"] == "newcomer" and entry["status"] == "trained"
    assert entry[MASK_DOWN] == math.ceil(d / 8)
    # P and Θ_k* as values, plus the mask once
    assert 2 * 4 * k + math.ceil(d / 8) <= entry["genefl-newcomer-bytes-down"]
    per_message = 1000  # array headers + the config record (plan JSON, phase, layers)
    assert entry["genefl-newcomer-bytes-down"] <= 2 * (4 * k + per_message) + math.ceil(d / 8)
    founders = [n for n in rows[2]["nodes"] if n["node-id"] != late]
    assert all(MASK_DOWN not in n for n in founders)


def test_device_without_mask_is_dropped_then_sent_it_again(tmp_path: Path) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=4, **ELEMENT)
    strategy.start(grid, num_rounds=2)
    victim = sorted(grid.contexts)[0]
    del grid.contexts[victim].state[wire.STATE_MASK]  # a restarted device lost its state
    app = grid.client_app

    def as_flower(msg: Message, ctx: Any) -> Message:  # a raising ClientApp → an error reply
        try:
            return app(msg, ctx)
        except ValueError as exc:
            return grid._error(msg, f"ClientApp raised: {exc}")

    grid.client_app = as_flower
    strategy.start(grid, num_rounds=3)
    dropped = [x for x in _rows(tmp_path)[2]["dropped"] if x["node-id"] == victim]
    assert dropped and "no learnGene mask" in dropped[0]["reason"]
    strategy.start(grid, num_rounds=4)
    entry = next(n for n in _rows(tmp_path)[3]["nodes"] if n["node-id"] == victim)
    assert entry[MASK_DOWN] > 0 and entry["status"] == "trained"


def test_bad_element_scores_are_dropped_never_used(tmp_path: Path, monkeypatch) -> None:
    strategy, grid = make("genefl", tmp_path, num_server_rounds=1, **ELEMENT)
    victims = dict(zip(sorted(grid.contexts)[:3], ["nan", "short", "negative"], strict=True))

    def corrupt(node_id: int, reply: Message) -> Message:
        rec = reply.content.array_records.get("arrays")
        if node_id not in victims or rec is None or wire.ELEMENT_SCORES not in rec:
            return reply
        arrays = {k: v.numpy() for k, v in rec.items()}
        s = arrays[wire.ELEMENT_SCORES]
        kind = victims[node_id]
        bad = np.full_like(s, np.nan) if kind == "nan" else s[:-1] if kind == "short" else -1 - s
        arrays[wire.ELEMENT_SCORES] = np.ascontiguousarray(bad)
        reply.content.array_records["arrays"] = ArrayRecord(
            array_dict={k: Array(v) for k, v in arrays.items()}
        )
        return reply

    seen: list[int] = []
    real = element.select_elements

    def spy(vectors, how, rho):
        seen.append(len(vectors))
        return real(vectors, how, rho)

    monkeypatch.setattr(element, "select_elements", spy)
    grid.corrupt = corrupt
    strategy.start(grid)
    reasons = {x["node-id"]: x["reason"] for x in strategy.history[0]["dropped"]}
    assert set(reasons) == set(victims)
    assert all(wire.ELEMENT_SCORES in r for r in reasons.values()), reasons
    assert "NaN" in reasons[next(n for n, v in victims.items() if v == "nan")]
    assert seen == [len(grid.contexts) - len(victims)]  # the bad vectors never entered the merge
    assert strategy.gene_size == max(1, math.floor(strategy.mcfg.rho * _param_entries(strategy)))


def test_probe_signature_over_masked_entries_only() -> None:
    from fedhet.core.fisher import probe_signature

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    # the bias has no masked entry, so it is not in the reference and not in the signature
    masks = {"weight": torch.tensor([True, False, False, True, True, False])}
    ref = {"weight": start["weight"].reshape(-1)[masks["weight"]]}
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    sig = probe_signature(model, ref, [(x, y)], lr=0.5, masks=masks)
    moved = model.weight.detach().reshape(-1) - start["weight"].reshape(-1)
    want = moved[masks["weight"]] / moved[masks["weight"]].norm()
    assert sig.shape == (3,)
    assert np.allclose(sig, want.numpy(), atol=1e-6)


def test_element_penalty_covers_masked_entries_only() -> None:
    from fedhet.core.fisher import (
        fisher_masks,
        layer_tie_weights,
        learngene_penalty,
        normalise_fisher,
    )
    from fedhet.methods.genefl.client import element_scope, masked_view

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    shapes = element.param_shapes(state, [n for n, _ in model.named_parameters()])
    flat = np.zeros(element.num_entries(shapes), dtype=bool)  # 6 + 2 + 4 + 2 entries
    flat[[0, 4, 8, 11]] = True  # 0.weight[0,0], 0.weight[1,1], 1.weight[0,0], 1.weight[1,1]
    masks = element.split_mask(flat, shapes)
    sel, ref, per_layer = element_scope(masks, element.gather(state, masks))
    assert list(sel) == ["0.weight", "1.weight"] and per_layer == {
        "0": ["0.weight"],
        "1": ["1.weight"],
    }
    fisher_hat = normalise_fisher({n: torch.arange(1.0, i.numel() + 1) for n, i in sel.items()})
    assert float(torch.cat(list(fisher_hat.values())).mean()) == pytest.approx(1.0)
    tie_mask = fisher_masks(fisher_hat, 0.5)
    betas = layer_tie_weights(fisher_hat, per_layer, 0.01)
    params = dict(model.named_parameters())

    def penalty() -> torch.Tensor:
        return learngene_penalty(
            masked_view(params, sel), ref, per_layer, betas, fisher_hat, tie_mask, 1.0
        )

    assert float(penalty()) == 0.0
    with torch.no_grad():
        params["0.weight"].view(-1)[1] += 5.0  # not in the learnGene: personal, untied
        params["0.bias"] += 5.0
    assert float(penalty()) == 0.0
    with torch.no_grad():
        params["0.weight"].view(-1)[4] += 1.0  # a learnGene entry: tied to Θ_k
    loss = penalty()
    assert float(loss) > 0
    loss.backward()
    grad = params["0.weight"].grad
    assert grad is not None
    assert torch.nonzero(grad.reshape(-1)).reshape(-1).tolist() == [4]
