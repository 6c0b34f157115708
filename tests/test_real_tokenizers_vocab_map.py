"""MinED's vocabulary map on real tokenizers: tokens compared by the bytes they stand for, so byte-level,
byte-fallback and whitespace tokens map to what they mean, and "exact" means identical bytes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from kdviz.align.vocab_map import build_vocab_map, token_bytes
from tests.real_tokenizers import DISTINCT_PAIRS, load


def _map(teacher: str, student: str, pieces: list[str]) -> dict[str, bytes]:
    """The student bytes each listed teacher piece maps to (a sub-vocabulary: fast)."""
    t_tok, s_tok = load(teacher), load(student)
    t_bytes, s_bytes = token_bytes(t_tok), token_bytes(s_tok)
    vocab = t_tok.get_vocab()
    ids, _ = build_vocab_map(s_bytes, [t_bytes[vocab[p]] for p in pieces])
    return {p: s_bytes[i] for p, i in zip(pieces, ids.tolist(), strict=True)}


def test_the_issues_wrong_entries_map_to_their_meaning():
    got = _map("qwen3", "llama2", ["ĠĠ", "Ċ", "Ã©", "ä¸Ń", "Ġthe"])
    assert got == {"ĠĠ": b"  ", "Ċ": b"\n", "Ã©": "é".encode(), "ä¸Ń": "中".encode(), "Ġthe": b" the"}
    t_bytes, s_bytes = token_bytes(load("llama3")), token_bytes(load("gpt2"))
    _, exact = build_vocab_map(s_bytes, [t_bytes[load("llama3").get_vocab()["ĠĠ"]]])
    assert b"  " not in s_bytes and not exact[0]  # GPT-2 has no double space: its nearest " " is not exact


@pytest.mark.parametrize(("teacher", "student"), DISTINCT_PAIRS + [(b, a) for a, b in DISTINCT_PAIRS])
def test_exact_means_identical_bytes(teacher, student):
    t_bytes, s_bytes = token_bytes(load(teacher)), token_bytes(load(student))
    rng = np.random.default_rng(0)
    sample = rng.choice(len(t_bytes), size=200, replace=False)
    ids, exact = build_vocab_map(s_bytes, [t_bytes[k] for k in sample])
    known = set(s_bytes)
    for k, i, e in zip(sample.tolist(), ids.tolist(), exact.tolist(), strict=True):
        assert e == (t_bytes[k] in known)
        assert (s_bytes[i] == t_bytes[k]) == e


def test_mined_on_the_largest_pair_resolves_only_the_ids_a_batch_moves(tmp_path):
    """Gemma-3 teacher (262k) -> Llama-3 student (128k): the whole map takes a minute of CPU; MinED is built with
    the dictionary step alone and a step resolves the teacher's top-k ids it moves, each to the student id
    of minimum edit distance (lowest id on ties)."""
    import torch
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    from kdviz.align.vocab_map import UNRESOLVED
    from kdviz.methods import KDCollator, MinED
    from tests.real_tokenizers import CORPUS, HEAD_ROWS

    t_tok, s_tok = load("gemma3"), load("llama3")
    method = MinED(student_tokenizer=s_tok, teacher_tokenizer=t_tok, cache_dir=tmp_path, top_k=4)
    vmap = method.map
    assert np.array_equal(vmap.ids != UNRESOLVED, vmap.exact) and 0.2 < vmap.exact_share < 0.6
    batch = KDCollator(s_tok, t_tok)(CORPUS[:3])
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(*batch.teacher_input_ids.shape, HEAD_ROWS["gemma3"], generator=g)
    z_s = torch.randn(*batch.student_input_ids.shape, HEAD_ROWS["llama3"], generator=g, requires_grad=True)
    before = vmap.ids.copy()
    out = method(batch, SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z_s.grad).all()
    new = np.flatnonzero((before == UNRESOLVED) & (vmap.ids != UNRESOLVED))
    partner = out.diagnostics["aligned_teacher_position"]
    b_idx, s_idx = (partner >= 0).nonzero(as_tuple=True)
    moved = z_t[b_idx, partner[b_idx, s_idx]].topk(4, -1).indices.unique().numpy()
    assert 0 < len(new) and set(new) == set(moved) - set(np.flatnonzero(vmap.exact))
    assert np.array_equal(method.map_ids.numpy(), vmap.ids)
    first = {}
    for index, piece in enumerate(token_bytes(s_tok)):
        first.setdefault(piece, index)
    strings, choice_ids = [p.decode("latin-1") for p in first], np.array(list(first.values()))
    t_bytes = token_bytes(t_tok)
    dist = cdist([t_bytes[t].decode("latin-1") for t in new[:20]], strings, scorer=Levenshtein.distance,
                 workers=-1)
    for row, t in zip(dist, new[:20], strict=False):
        assert vmap.ids[t] == choice_ids[row == row.min()].min()


@pytest.mark.parametrize(("student", "teacher"), DISTINCT_PAIRS)
def test_mined_dtw_compares_the_bytes_tokens_stand_for(student, teacher):
    """Byte-level ``Ã©`` and SentencePiece ``é`` are the same bytes: MinED's DTW pairs tokens that overlap in
    the byte ground truth (measured on the corpus: 0.74-0.94 over the pairs, 0.53 at worst when the DTW
    compared vocabulary strings)."""
    from kdviz.align.vocab_map import VocabMap
    from kdviz.methods import KDCollator, MinED
    from tests.real_tokenizers import CORPUS

    s_tok, t_tok = load(student), load(teacher)
    batch = KDCollator(s_tok, t_tok)(CORPUS)
    no_map = VocabMap(np.zeros(len(t_tok), dtype=np.int64), np.zeros(len(t_tok), dtype=bool), "s", "t")
    _, partner, _ = MinED(vocab_map=no_map, student_tokenizer=s_tok, teacher_tokenizer=t_tok).align(batch)
    b, i = (partner >= 0).nonzero(as_tuple=True)
    overlapping = batch.target_alignment()[b, i, partner[b, i]].float().mean()
    assert overlapping >= 0.7, float(overlapping)
