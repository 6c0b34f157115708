"""The cross-tokenizer layer on six real LLM tokenizers (GPT-2, Llama-2, Mistral, Llama-3, Qwen3, Gemma-3),
every pair of them: byte-level ground truth, identical training text, special-token strings, truncation."""

from __future__ import annotations

import pytest
import torch

from kdviz.align import compare_tokenizers
from kdviz.align.tokens import vocab_bytes
from kdviz.methods import KDCollator
from tests.real_tokenizers import CORPUS, DISTINCT_PAIRS, NAMES, PAIRS, TEXTS, load, trained_bytes


@pytest.mark.parametrize("name", NAMES)
def test_identical_tokenizers_align_one_to_one(name):
    tok = load(name)
    report = compare_tokenizers(tok, tok, TEXTS + ["I 🤗 you"])
    assert report.summary["one_to_one_rate"] == 1.0, report.longest


@pytest.mark.parametrize("name", NAMES)
def test_byte_pieces_of_one_character_align_with_the_pieces_covering_the_same_bytes(name):
    tok = load(name)
    batch = KDCollator(tok, tok)([("Say hi:", "I 🤗 you")])
    n_s, n_t = int(batch.student_attention_mask.sum()), int(batch.teacher_attention_mask.sum())
    spans = batch.student_offsets[0, :n_s]
    has_chars = spans[:, 0] < spans[:, 1]
    expected = has_chars[:, None] & has_chars[None, :] & torch.eye(n_s, dtype=bool)
    assert n_s == n_t and batch.alignment[0, :n_s, :n_t].equal(expected)


@pytest.mark.parametrize(("student", "teacher"), PAIRS)
def test_both_sides_train_on_exactly_the_response(student, teacher):
    tok_s, tok_t = load(student), load(teacher)
    batch = KDCollator(tok_s, tok_t)(CORPUS)
    for b, (_, response) in enumerate(CORPUS):
        want = batch.texts[b][batch.response_starts[b] :].encode()
        assert trained_bytes(batch, tok_s, "student", b) == want, (student, response)
        assert trained_bytes(batch, tok_t, "teacher", b) == want, (teacher, response)


@pytest.mark.parametrize("name", NAMES)
def test_special_token_strings_in_text_are_plain_text(name):
    tok = load(name)
    response = "end <|endoftext|> then <|im_start|>user <s></s><bos><end_of_turn><|eot_id|>"
    batch = KDCollator(tok)([("Q <|im_end|>:", response)])
    specials = {i for i, t in tok.backend_tokenizer.get_added_tokens_decoder().items() if t.special}
    ids = batch.student_input_ids[0, : int(batch.student_attention_mask.sum())].tolist()
    trained = [i for i, lab in zip(ids, batch.student_labels[0].tolist(), strict=False) if lab != -100]
    assert not specials & set(trained[:-1]), tok.convert_ids_to_tokens(trained)  # the last one is EOS
    assert trained_bytes(batch, tok, "student", 0) == response.encode()


@pytest.mark.parametrize(("student", "teacher"), DISTINCT_PAIRS)
def test_pre_flight_report_flags_special_strings(student, teacher):
    tok_s, tok_t = load(student), load(teacher)
    report = compare_tokenizers(tok_s, tok_t, ["plain", f"a {tok_s.eos_token} b {tok_t.eos_token}"])
    assert {tok_s.eos_token, tok_t.eos_token} <= set(report.summary["special_strings"])
    assert compare_tokenizers(tok_s, tok_t, ["plain text"]).summary["special_strings"] == []


@pytest.mark.parametrize(("student", "teacher"), PAIRS)
def test_truncation_cuts_both_sides_at_one_character_boundary(student, teacher):
    tok_s, tok_t = load(student), load(teacher)
    prompt, response = "Say:", "a🤗b🤗c中文d"
    for max_length in range(3, 16):
        batch = KDCollator(tok_s, tok_t, max_length=max_length)([(prompt, response)])
        got_s = trained_bytes(batch, tok_s, "student", 0)
        got_t = trained_bytes(batch, tok_t, "teacher", 0)
        assert got_s == got_t, (max_length, got_s, got_t)
        assert response.encode().startswith(got_s)
        got_s.decode("utf-8")  # a whole number of characters


def test_vocab_bytes_decode_byte_level_byte_fallback_and_markers():
    qwen, llama2, gemma = (vocab_bytes(load(n)) for n in ("qwen3", "llama2", "gemma3"))
    vocab_q, vocab_l, vocab_g = (load(n).get_vocab() for n in ("qwen3", "llama2", "gemma3"))
    assert qwen[vocab_q["ĠĠ"]] == b"  " and qwen[vocab_q["Ċ"]] == b"\n" and qwen[vocab_q["Ã©"]] == "é".encode()
    assert qwen[vocab_q["ä¸Ń"]] == "中".encode() and qwen[vocab_q["<|im_end|>"]] == b"<|im_end|>"
    assert llama2[vocab_l["<0xF0>"]] == b"\xf0" and llama2[vocab_l["▁the"]] == b" the"
    assert gemma[vocab_g["▁▁▁▁"]] == b"    " and gemma[vocab_g["\n"]] == b"\n"


def test_encoding_from_several_threads_gives_the_serial_result():
    """``encode_text`` sets the tokenizer for one call (no prefix ``▁``, special strings as text); calls from
    several threads on one tokenizer never see each other's settings."""
    from concurrent.futures import ThreadPoolExecutor

    from kdviz.align.tokens import encode_text

    tok = load("llama2")
    cases = [(text, continuation) for text in ("hello <s> world", "x = 1", "\tdone") for continuation in (False, True)]
    serial = {case: encode_text(tok, case[0], continuation=case[1]) for case in cases}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda case: (case, encode_text(tok, case[0], continuation=case[1])), cases * 300))
    assert all(result == serial[case] for case, result in got)
    assert tok("x", add_special_tokens=False)["input_ids"] == serial[("x = 1", False)][0][:1]  # settings restored
