"""The teacher -> student vocabulary map (kdviz.align.vocab_map): exact matches (identical bytes), minimum
edit distance, two tokenizers, and the on-disk cache (reused, invalidated, never pickled, repaired)."""

from __future__ import annotations

import numpy as np
import pytest

from kdviz.align.vocab_map import UNRESOLVED, build_vocab_map, token_bytes, vocab_hash, vocab_map
from tests.kd_helpers import bpe_tokenizer, unigram_tokenizer
from tests.test_align_dtw import levenshtein


def test_exact_means_identical_bytes_then_lowest_id():
    student = ["<unk>", "the", "▁the", "▁the", "ca", "▁cat", "▁▁"]
    teacher = ["Ġthe", "the", "cat", "Ġcat", "ĠĠ", "Ġ"]
    ids, exact = build_vocab_map(student, teacher)
    # "cat" has no student token of its bytes: "ca" and " cat" are both one edit away -> the lower id
    assert ids.tolist() == [2, 1, 4, 5, 6, 6] and exact.tolist() == [True, True, False, True, True, False]


def test_min_edit_distance_with_lowest_id_on_ties():
    student = ["▁dog", "▁cab", "▁car", "x"]
    teacher = ["Ġcat", "Ġdogs", "Ġzzzz"]
    ids, exact = build_vocab_map(student, teacher)
    # "cat": cab and car both at distance 1 -> the lower id; "dogs" -> dog; "zzzz": all at 4 except x (4) -> id 0
    assert ids.tolist() == [1, 0, 0] and not exact.any()
    with pytest.raises(ValueError, match="student vocabulary is empty"):
        build_vocab_map([], teacher)


def test_real_tokenizers_exact_and_minimum_distance(tmp_path):
    teacher_tok, student_tok = bpe_tokenizer(), unigram_tokenizer()
    found = vocab_map(student_tok, teacher_tok, cache_dir=tmp_path)
    t_bytes, s_bytes = token_bytes(teacher_tok), token_bytes(student_tok)
    assert len(found) == len(t_bytes) == len(teacher_tok)
    assert ((found.ids >= 0) & (found.ids < len(s_bytes))).all()
    assert 0.05 < found.exact_share < 1.0
    for t in range(len(t_bytes)):  # exact <=> identical bytes
        assert bool(found.exact[t]) == (t_bytes[t] in set(s_bytes))
        if found.exact[t]:
            assert s_bytes[found.ids[t]] == t_bytes[t]
    rng = np.random.default_rng(0)
    inexact = np.flatnonzero(~found.exact)
    s_text = [s.decode("latin-1") for s in s_bytes]
    for t in rng.choice(inexact, size=min(15, len(inexact)), replace=False):
        distances = [levenshtein(t_bytes[t].decode("latin-1"), s) for s in s_text]
        assert found.ids[t] == int(np.argmin(distances))


def test_cache_is_reused_and_invalidated(tmp_path):
    teacher, student = ["Ġa", "Ġbird", "s"], ["▁a", "▁bird", "▁bir"]
    first = vocab_map(student, teacher, cache_dir=tmp_path)
    assert not first.from_cache and first.path.exists() and first.path.parent == tmp_path / "vocab_maps"
    second = vocab_map(student, teacher, cache_dir=tmp_path)
    assert second.from_cache and second.path == first.path
    assert second.ids.tolist() == first.ids.tolist() and second.exact.tolist() == first.exact.tolist()
    with np.load(first.path, allow_pickle=False) as data:  # plain arrays, readable without pickle
        assert all(data[k].dtype != object for k in data.files)
        assert str(data["teacher_hash"]) == vocab_hash(token_bytes(teacher))
    changed = vocab_map(student, teacher + ["Ġbirds"], cache_dir=tmp_path)
    assert not changed.from_cache and changed.path != first.path and len(changed) == 4
    renamed = vocab_map(["▁a", "▁bird", "▁bid"], teacher, cache_dir=tmp_path)
    assert not renamed.from_cache and renamed.path not in (first.path, changed.path)
    first.path.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        repaired = vocab_map(student, teacher, cache_dir=tmp_path)
    assert not repaired.from_cache and repaired.ids.tolist() == first.ids.tolist()
    assert vocab_map(student, teacher, cache_dir=tmp_path).from_cache


def test_cache_dir_and_the_environment_name_the_same_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KDVIZ_CACHE", str(tmp_path / "cache"))
    found = vocab_map(["▁a"], ["Ġa"])
    assert found.path.parent == tmp_path / "cache" / "vocab_maps" and found.path.exists()
    monkeypatch.delenv("KDVIZ_CACHE")
    assert vocab_map(["▁a"], ["Ġa"], cache_dir=tmp_path / "cache").path == found.path
    assert vocab_map(["▁a"], ["Ġa"], use_cache=False).path is None


def test_mined_cache_dir_and_kdviz_cache_write_the_same_file(tmp_path, monkeypatch):
    from kdviz.methods import MinED

    direct = MinED(student_tokenizer=unigram_tokenizer(), teacher_tokenizer=bpe_tokenizer(), cache_dir=tmp_path)
    monkeypatch.setenv("KDVIZ_CACHE", str(tmp_path))
    via_env = MinED(student_tokenizer=unigram_tokenizer(), teacher_tokenizer=bpe_tokenizer())
    assert direct.map.path == via_env.map.path == next((tmp_path / "vocab_maps").iterdir())
    assert via_env.map.from_cache


def test_lazy_map_resolves_on_demand_and_caches_what_it_resolved(tmp_path):
    teacher_tok, student_tok = bpe_tokenizer(), unigram_tokenizer()
    full_ids, full_exact = build_vocab_map(token_bytes(student_tok), token_bytes(teacher_tok))
    lazy = vocab_map(student_tok, teacher_tok, cache_dir=tmp_path, complete=False)
    assert np.array_equal(lazy.exact, full_exact) and lazy.exact_share == pytest.approx(full_exact.mean())
    assert np.array_equal(lazy.ids != UNRESOLVED, full_exact)  # only the dictionary step ran
    assert np.array_equal(lazy.ids[full_exact], full_ids[full_exact])
    asked = np.flatnonzero(~full_exact)[:7]
    assert np.array_equal(lazy.lookup(np.stack([asked, asked])), np.stack([full_ids[asked]] * 2))
    assert (lazy.ids != UNRESOLVED).sum() == full_exact.sum() + len(asked)
    lazy.save()
    again = vocab_map(student_tok, teacher_tok, cache_dir=tmp_path, complete=False)
    assert again.from_cache and np.array_equal(again.ids, lazy.ids)  # resolved entries are kept on disk
    assert np.array_equal(again.complete(progress=False).ids, full_ids) and again.resolved_share == 1.0
    assert vocab_map(student_tok, teacher_tok, cache_dir=tmp_path, complete=False).resolved_share == 1.0
    with pytest.raises(ValueError, match=r"teacher_ids must lie in \[0, "):
        lazy.lookup([len(lazy)])


def test_entries_resolved_since_the_last_save_reach_the_cache_when_the_map_goes(tmp_path):
    import gc

    teacher_tok, student_tok = bpe_tokenizer(), unigram_tokenizer()
    lazy = vocab_map(student_tok, teacher_tok, cache_dir=tmp_path, complete=False)
    asked = np.flatnonzero(~lazy.exact)[:5]
    lazy.lookup(asked)  # within SAVE_EVERY_S of the first save: not written yet
    resolved = lazy.ids.copy()
    del lazy
    gc.collect()
    again = vocab_map(student_tok, teacher_tok, cache_dir=tmp_path, complete=False)
    assert again.from_cache and np.array_equal(again.ids, resolved)


def test_a_map_built_from_arrays_says_it_cannot_resolve():
    from kdviz.align.vocab_map import VocabMap

    partial = VocabMap(np.array([0, UNRESOLVED]), np.array([True, False]), "s", "t")
    assert partial.lookup([0]).tolist() == [0]
    with pytest.raises(ValueError, match="cannot resolve new entries"):
        partial.lookup([1])
    with pytest.raises(ValueError, match="one entry per teacher id"):
        VocabMap(np.array([0, 1]), np.array([True]), "s", "t")
