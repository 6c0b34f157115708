"""The teacher -> student vocabulary map (kdviz.align.vocab_map): exact matches, minimum edit distance,
two real tokenizers, and the on-disk cache (reused, invalidated, never pickled)."""

from __future__ import annotations

import numpy as np
import pytest

from kdviz.align.dtw import normalize_token
from kdviz.align.vocab_map import build_vocab_map, vocab_hash, vocab_map, vocabulary
from tests.kd_helpers import bpe_tokenizer, unigram_tokenizer
from tests.test_align_dtw import levenshtein


def test_exact_prefers_same_word_start_then_lowest_id():
    student = ["<unk>", "the", "▁the", "▁the", "ca", "▁cat"]
    teacher = ["Ġthe", "the", "cat", "Ġcat"]
    ids, exact = build_vocab_map(teacher, student)
    assert ids.tolist() == [2, 1, 5, 5] and exact.tolist() == [True, True, True, True]


def test_min_edit_distance_with_lowest_id_on_ties():
    student = ["▁dog", "▁cab", "▁car", "x"]
    teacher = ["Ġcat", "Ġdogs", "Ġzzzz"]
    ids, exact = build_vocab_map(teacher, student)
    # "cat": cab and car both at distance 1 -> the lower id; "dogs" -> dog; "zzzz": all at 4 except x (4) -> id 0
    assert ids.tolist() == [1, 0, 0] and not exact.any()
    with pytest.raises(ValueError, match="student vocabulary is empty"):
        build_vocab_map(teacher, [])


def test_real_tokenizers_exact_and_minimum_distance(tmp_path):
    teacher_tok, student_tok = bpe_tokenizer(), unigram_tokenizer()
    found = vocab_map(teacher_tok, student_tok, cache_dir=tmp_path)
    t_vocab, s_vocab = vocabulary(teacher_tok), vocabulary(student_tok)
    assert len(found) == len(t_vocab) == len(teacher_tok)
    assert ((found.ids >= 0) & (found.ids < len(s_vocab))).all()
    assert 0.05 < found.exact_share < 1.0
    s_norm = [normalize_token(t) for t in s_vocab]
    for t in np.flatnonzero(found.exact):
        assert s_norm[found.ids[t]] == normalize_token(t_vocab[t])
    rng = np.random.default_rng(0)
    inexact = np.flatnonzero(~found.exact)
    for t in rng.choice(inexact, size=min(15, len(inexact)), replace=False):
        query = normalize_token(t_vocab[t])
        distances = [levenshtein(query, s) for s in s_norm]
        assert distances[found.ids[t]] == min(distances)
        assert found.ids[t] == int(np.argmin(distances))
    assert vocab_map(t_vocab, s_vocab, use_cache=False).ids.tolist() == found.ids.tolist()


def test_cache_is_reused_and_invalidated(tmp_path):
    teacher, student = ["Ġa", "Ġbird", "s"], ["▁a", "▁bird", "▁bir"]
    first = vocab_map(teacher, student, cache_dir=tmp_path)
    assert not first.from_cache and first.path.exists() and first.path.parent == tmp_path
    second = vocab_map(teacher, student, cache_dir=tmp_path)
    assert second.from_cache and second.path == first.path
    assert second.ids.tolist() == first.ids.tolist() and second.exact.tolist() == first.exact.tolist()
    with np.load(first.path, allow_pickle=False) as data:  # plain arrays, readable without pickle
        assert all(data[k].dtype != object for k in data.files)
        assert str(data["teacher_hash"]) == vocab_hash(teacher)
    changed = vocab_map(teacher + ["Ġbirds"], student, cache_dir=tmp_path)
    assert not changed.from_cache and changed.path != first.path and len(changed) == 4
    renamed = vocab_map(teacher, ["▁a", "▁bird", "▁bid"], cache_dir=tmp_path)
    assert not renamed.from_cache and renamed.path not in (first.path, changed.path)
    first.path.write_bytes(b"not an npz file")
    repaired = vocab_map(teacher, student, cache_dir=tmp_path)
    assert not repaired.from_cache and repaired.ids.tolist() == first.ids.tolist()
    assert vocab_map(teacher, student, cache_dir=tmp_path).from_cache


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KDVIZ_CACHE", str(tmp_path / "cache"))
    found = vocab_map(["Ġa"], ["▁a"])
    assert found.path.parent == tmp_path / "cache" / "vocab_maps" and found.path.exists()
    assert vocab_map(["Ġa"], ["▁a"], use_cache=False).path is None
