"""Corpus listing and the locally trained tokenizer are deterministic."""

from __future__ import annotations

import pytest

from specforge_dpace.demo import corpus
from specforge_dpace.demo.tokenizer import (
    EOS_TOKEN,
    MASK_TOKEN,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    train_tokenizer,
)


def test_file_list_sorted_stable_and_filtered():
    first = corpus.list_source_files()
    assert first == corpus.list_source_files()
    assert first == sorted(first)
    assert len(first) > 100
    assert not any(p.startswith("test/") or "/test/" in p for p in first)
    assert "os.py" in first


def test_split_depends_only_on_path():
    held = [p for p in corpus.list_source_files() if corpus.is_held_out(p)]
    assert 0 < len(held) < len(corpus.list_source_files()) // 4
    assert all(corpus.is_held_out(p) for p in held)
    train = corpus.load_corpus(split="train", max_chars=50_000)
    heldout = corpus.load_corpus(split="heldout", max_chars=50_000)
    assert not {f.relpath for f in train} & {f.relpath for f in heldout}
    assert sum(len(f.text) for f in train) >= 50_000


def test_corpus_rejects_bad_split_and_root(tmp_path):
    with pytest.raises(ValueError, match="split='dev'.*accepted"):
        corpus.load_corpus(split="dev")
    with pytest.raises(ValueError, match="not a directory"):
        corpus.list_source_files(tmp_path / "missing")


def test_tokenizer_training_is_deterministic(tmp_path):
    texts = [f.text for f in corpus.load_corpus(split="train", max_chars=150_000)]
    a, b = train_tokenizer(texts, 400), train_tokenizer(texts, 400)
    assert a.get_vocab() == b.get_vocab()
    sample = "def f(x):\n    return x + 1\n"
    assert encode_documents(a, [sample]) == encode_documents(b, [sample])
    ids = special_ids(a)
    assert a.id_to_token(ids["mask"]) == MASK_TOKEN and a.id_to_token(ids["eos"]) == EOS_TOKEN
    assert (
        ids["mask"]
        not in encode_documents(a, [f.text for f in corpus.load_corpus(split="heldout", max_chars=20_000)])[0]
    )
    save_tokenizer(a, tmp_path)
    assert load_tokenizer(tmp_path).decode(encode_documents(a, [sample])[0]) == sample


def test_tokenizer_rejects_bad_vocab():
    with pytest.raises(ValueError, match="vocab_size=10 is invalid"):
        train_tokenizer(["x"], 10)
