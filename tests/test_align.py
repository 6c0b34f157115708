"""Ground-truth alignment (docs/methods.md#ground-truth-alignment) on hand-made cases and on two trained tokenizers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kdviz.align import (
    alignment_scores,
    check_fast,
    compare_tokenizers,
    encode_example,
    encode_text,
    kind_counts,
    overlap_matrix,
    regions,
    row_scores,
)
from tests.kd_helpers import bpe_tokenizer, pairs, unigram_tokenizer


def spans(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Offsets of consecutive ``pieces`` that concatenate to ``text``; ``""`` is a special token (0, 0)."""
    out, at = [], 0
    for piece in pieces:
        if piece == "":
            out.append((0, 0))
            continue
        assert text.startswith(piece, at), (piece, at)
        out.append((at, at + len(piece)))
        at += len(piece)
    assert at == len(text)
    return out


def test_split_and_merge():
    text = "unbelievable news"
    a = spans(text, ["un", "believ", "able", " news"])  # splits the word in three
    b = spans(text, ["unbeliev", "able", " ne", "ws"])  # keeps more of it whole, splits "news"
    m = overlap_matrix(a, b, text)
    assert m.tolist() == [
        [True, False, False, False],
        [True, False, False, False],
        [False, True, False, False],
        [False, False, True, True],
    ]
    kinds = [(r.kind, r.rows, r.cols) for r in regions(a, b, text, m)]
    assert kinds == [
        ("many-to-one", (0, 1), (0,)),
        ("one-to-one", (2,), (1,)),
        ("one-to-many", (3,), (2, 3)),
    ]


def test_crossing_boundaries_are_many_to_many():
    text = "abcd"
    found = regions(spans(text, ["ab", "cd"]), spans(text, ["a", "bc", "d"]), text)
    assert [(r.kind, r.rows, r.cols, r.start, r.end) for r in found] == [("many-to-many", (0, 1), (0, 1, 2), 0, 4)]


def test_special_tokens_have_no_characters_and_do_not_shift_alignment():
    text = "hi there"
    a = spans(text, ["", "hi", " there", ""])  # BOS ... EOS
    b = spans(text, ["hi", " the", "re"])
    m = overlap_matrix(a, b, text)
    assert not m[0].any() and not m[3].any()
    assert m[1].tolist() == [True, False, False] and m[2].tolist() == [False, True, True]
    found = regions(a, b, text, m)
    assert all(0 not in r.rows and 3 not in r.rows for r in found)
    assert kind_counts(found) == {
        "one-to-one": 1,
        "one-to-many": 1,
        "many-to-one": 0,
        "many-to-many": 0,
        "unmatched": 0,
    }


def test_whitespace_never_links_two_words():
    text = "hello world"
    a = spans(text, ["hello ", "world"])  # space attached to the left word (metaspace-like suffix)
    b = spans(text, ["hello", " world"])  # space attached to the right word (Ġ-like prefix)
    m = overlap_matrix(a, b, text)
    assert m.tolist() == [[True, False], [False, True]]


def test_whitespace_only_tokens_align_to_what_holds_the_whitespace():
    text = "a  b\nc"
    a = spans(text, ["a", " ", " b", "\n", "c"])
    b = spans(text, ["a", "  b", "\nc"])
    m = overlap_matrix(a, b, text)
    assert m.tolist() == [
        [True, False, False],
        [False, True, False],  # the lone space lies inside "  b"
        [False, True, False],
        [False, False, True],  # the newline token lies inside "\nc"
        [False, False, True],
    ]


def test_unicode_pieces_of_one_character_share_it():
    text = "café ok"
    # a byte-level tokenizer splits "é" in two byte tokens, both spanning the character
    a = [(0, 3), (3, 4), (3, 4), (4, 7)]
    b = spans(text, ["caf", "é", " ok"])
    m = overlap_matrix(a, b, text)
    assert m.tolist() == [[True, False, False], [False, True, False], [False, True, False], [False, False, True]]
    assert [r.kind for r in regions(a, b, text, m)] == ["one-to-one", "many-to-one", "one-to-one"]


def test_unmatched_text():
    text = "x\ty"
    a = spans(text, ["x", "\t", "y"])
    b = [(0, 1), (2, 3)]  # the other tokenizer normalised the tab away
    assert [r.kind for r in regions(a, b, text)] == ["one-to-one", "unmatched", "one-to-one"]


def test_real_tokenizers_on_markers_unicode_and_specials():
    bpe, uni = bpe_tokenizer(), unigram_tokenizer()
    prompt, response = "Q: who moves?\nA:", " The naïve café owner waits."
    enc_b = encode_example(bpe, prompt, response)
    enc_u = encode_example(uni, prompt, response)
    text = prompt + response
    # Unigram adds BOS, both append EOS: all without characters
    assert enc_u.ids[0] == uni.bos_token_id and enc_u.offsets[0] == (0, 0)
    assert enc_u.ids[-1] == uni.eos_token_id and enc_u.offsets[-1] == (0, 0)
    assert enc_b.ids[-1] == bpe.eos_token_id and enc_b.offsets[-1] == (0, 0)
    # offsets are characters of the raw text; response tokens cover exactly the response
    for enc in (enc_b, enc_u):
        resp = [(s, e) for (s, e), r in zip(enc.offsets, enc.response, strict=True) if r and s < e]
        assert min(s for s, _ in resp) == len(prompt) and max(e for _, e in resp) == len(text)
        assert all(not r or s >= len(prompt) or s == e for (s, e), r in zip(enc.offsets, enc.response, strict=True))
    m = overlap_matrix(enc_u.offsets, enc_b.offsets, text)
    # every token with characters overlaps something on the other side; special tokens overlap nothing
    for i, (s, e) in enumerate(enc_u.offsets):
        assert bool(m[i].any()) == (s < e)
    for j, (s, e) in enumerate(enc_b.offsets):
        assert bool(m[:, j].any()) == (s < e)
    # the word "naïve" (non-ASCII) is aligned on both sides to the tokens holding its characters
    word = (text.index("naïve"), text.index("naïve") + len("naïve"))
    cols = [j for j, (s, e) in enumerate(enc_b.offsets) if s < word[1] and word[0] < e]
    rows = [i for i, (s, e) in enumerate(enc_u.offsets) if s < word[1] and word[0] < e and text[s:e].strip()]
    assert rows and cols and all(m[i, cols].any() for i in rows)


def test_a_prepended_word_marker_has_no_characters():
    from kdviz.assets import default_paths, load_tokenizer

    student = load_tokenizer(default_paths().student_tokenizer)  # SentencePiece-style Unigram, prepends "▁"
    text = "Instruction: a town"
    ids, offsets = encode_text(student, text)
    tokens = student.convert_ids_to_tokens(ids)
    assert tokens[0] == "\u2581" and offsets[0] == (0, 0)  # added by the pre-tokenizer, not read from the text
    assert offsets[1][0] == 0 and text[slice(*offsets[1])].startswith("I")
    spaces = [k for k, t in enumerate(tokens) if t == "\u2581" and k > 0]
    assert all(text[slice(*offsets[k])] == " " for k in spaces)  # a marker standing for a real space keeps it


def test_chat_template_scaffolding_has_no_characters():
    tok = copy.deepcopy(unigram_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    prompt, response = "who moves?", " The fox."
    enc = encode_example(tok, prompt, response, chat_template=True)
    pieces = tok.convert_ids_to_tokens(enc.ids)
    assert pieces.count("<|im_start|>") == 2
    text = prompt + response
    covered = "".join(text[s:e] for s, e in enc.offsets)
    assert covered.replace(" ", "") == text.replace(" ", "")  # the template adds no characters
    plain = encode_example(tok, prompt, response)
    assert [p for p, r in zip(enc.offsets, enc.response, strict=True) if r] == [
        p for p, r in zip(plain.offsets, plain.response, strict=True) if r
    ]


def test_slow_tokenizer_is_refused_by_name():
    class SlowTokenizer:
        is_fast = False
        name_or_path = "my-org/slow-model"

    with pytest.raises(TypeError, match="my-org/slow-model.*not a fast tokenizer"):
        check_fast(SlowTokenizer(), "teacher_tokenizer")
    with pytest.raises(TypeError, match="tokenizer_b"):
        compare_tokenizers(bpe_tokenizer(), SlowTokenizer(), ["x"])


def test_alignment_scores():
    ref = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    w = torch.tensor([[0.8, 0.2, 0.0], [0.5, 0.2, 0.3], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])
    mask = torch.tensor([True, True, True, False])
    s = alignment_scores(w, ref, mask)
    # row 2 has no reference column: excluded from argmax/mass, included in entropy; row 3 masked out
    assert s["scored_rows"] == 2
    assert s["argmax_overlap"] == pytest.approx(0.5)
    assert s["overlap_mass"] == pytest.approx((0.8 + 0.5) / 2)
    ent = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    assert s["row_entropy"] == pytest.approx((ent([0.8, 0.2]) + ent([0.5, 0.2, 0.3]) + math.log(3)) / 3, rel=1e-5)
    # unnormalised rows (a transport plan) are normalised first
    assert alignment_scores(w * 7, ref, mask)["overlap_mass"] == pytest.approx(0.65)
    assert math.isnan(float(alignment_scores(w, ref, torch.zeros(4, dtype=torch.bool))["argmax_overlap"]))
    assert row_scores(w, ref)["scored"].tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="same shape"):
        alignment_scores(w, ref[:, :2])


def test_compare_tokenizers_report():
    texts = [p + r for p, r in pairs(12)]
    rep = compare_tokenizers(unigram_tokenizer(), bpe_tokenizer(), texts, vocab_sizes=(128, 400))
    assert len(rep.table) == 12
    total = rep.table[["one-to-one", "one-to-many", "many-to-one", "many-to-many", "unmatched"]].to_numpy().sum()
    assert total > 0 and 0 < rep.summary["one_to_one_rate"] < 1
    assert rep.summary["vocab_a"] == len(unigram_tokenizer()) and rep.summary["vocab_b"] == len(bpe_tokenizer())
    assert rep.summary["padded_rows_a"] == 128 - len(unigram_tokenizer())
    assert any("bos_token" in d for d in rep.summary["special_differences"])
    assert any("before a text" in d for d in rep.summary["special_differences"])
    assert 0 < rep.summary["identical_tokens"] <= rep.summary["identical_after_markers"]
    assert len(rep.longest) > 0 and rep.longest["n_tokens"].is_monotonic_decreasing
    assert not rep.longest["text"].duplicated().any()
    row = rep.longest.iloc[0]
    assert "".join(row.tokens_a) == row.text or "".join(row.tokens_b) == row.text
    assert "TokenizerReport" in repr(rep)
    # a tokenizer against itself is one-to-one everywhere
    same = compare_tokenizers(bpe_tokenizer(), bpe_tokenizer(), texts)
    assert same.summary["one_to_one_rate"] == 1.0 and same.summary["special_differences"] == []
    ids, offsets = encode_text(bpe_tokenizer(), texts[0])
    assert len(ids) == len(offsets) == same.table["tokens_a"][0]


def test_byte_spans_give_each_byte_piece_its_own_bytes():
    from kdviz.align.tokens import byte_spans

    offsets = [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3)]
    pieces = [b"a", b"\xf0\x9f", b"\xa4", b"\x97", b"b"]  # byte-level BPE: three pieces of one emoji
    spans = byte_spans("a🤗b", offsets, pieces)
    assert spans == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 6)]
    same = overlap_matrix(spans, spans, "a🤗b".encode())
    assert same.equal(torch.eye(5, dtype=torch.bool))
    assert overlap_matrix(offsets, offsets, "a🤗b").sum() == 11  # on characters the pieces all overlap
    # pieces that do not add up to the character's bytes (a normaliser changed the text) keep its bytes
    assert byte_spans("a🤗b", offsets, [b"a", b"x", b"y", b"z", b"b"])[1:4] == [(1, 5)] * 3
