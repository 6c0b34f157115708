"""MinED's vocabulary map on real tokenizers: tokens compared by the bytes they stand for, so byte-level,
byte-fallback and whitespace tokens map to what they mean, and "exact" means identical bytes."""

from __future__ import annotations

import numpy as np
import pytest

from kdviz.align.vocab_map import build_vocab_map, token_bytes
from tests.real_tokenizers import DISTINCT_PAIRS, load


def _map(teacher: str, student: str, pieces: list[str]) -> dict[str, bytes]:
    """The student bytes each listed teacher piece maps to (a sub-vocabulary: fast)."""
    t_tok, s_tok = load(teacher), load(student)
    t_bytes, s_bytes = token_bytes(t_tok), token_bytes(s_tok)
    vocab = t_tok.get_vocab()
    ids, _ = build_vocab_map([t_bytes[vocab[p]] for p in pieces], s_bytes)
    return {p: s_bytes[i] for p, i in zip(pieces, ids.tolist(), strict=True)}


def test_the_issues_wrong_entries_map_to_their_meaning():
    got = _map("qwen3", "llama2", ["ĠĠ", "Ċ", "Ã©", "ä¸Ń", "Ġthe"])
    assert got == {"ĠĠ": b"  ", "Ċ": b"\n", "Ã©": "é".encode(), "ä¸Ń": "中".encode(), "Ġthe": b" the"}
    t_bytes, s_bytes = token_bytes(load("llama3")), token_bytes(load("gpt2"))
    _, exact = build_vocab_map([t_bytes[load("llama3").get_vocab()["ĠĠ"]]], s_bytes)
    assert b"  " not in s_bytes and not exact[0]  # GPT-2 has no double space: its nearest " " is not exact


@pytest.mark.parametrize(("teacher", "student"), DISTINCT_PAIRS + [(b, a) for a, b in DISTINCT_PAIRS])
def test_exact_means_identical_bytes(teacher, student):
    t_bytes, s_bytes = token_bytes(load(teacher)), token_bytes(load(student))
    rng = np.random.default_rng(0)
    sample = rng.choice(len(t_bytes), size=200, replace=False)
    ids, exact = build_vocab_map([t_bytes[k] for k in sample], s_bytes)
    known = set(s_bytes)
    for k, i, e in zip(sample.tolist(), ids.tolist(), exact.tolist(), strict=True):
        assert e == (t_bytes[k] in known)
        assert (s_bytes[i] == t_bytes[k]) == e
