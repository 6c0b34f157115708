"""Real tokenizers: Unicode normalisation (Qwen's NFC), chat templates and their end-of-turn tokens, and
what the pre-flight report shows for real pairs (byte pieces as bytes, templates, padded LM-head rows)."""

from __future__ import annotations

import unicodedata

import pytest

from kdviz.align import compare_tokenizers
from kdviz.methods import KDCollator
from tests.real_tokenizers import HEAD_ROWS, NAMES, load, trained_bytes

CHAT = ("llama3", "qwen3", "gemma3")  # the tokenizers that ship a chat template
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen3": "<|im_end|>", "gemma3": "<end_of_turn>"}


@pytest.mark.parametrize("other", NAMES)
def test_nfd_text_is_put_in_nfc_once_for_both_sides(other):
    response = unicodedata.normalize("NFD", " café naïve Ångström")
    batch = KDCollator(load("qwen3"), load(other))([("Say:", response)])
    want = unicodedata.normalize("NFC", response).encode()
    assert batch.texts[0] == unicodedata.normalize("NFC", "Say:" + response)
    assert trained_bytes(batch, load("qwen3"), "student", 0) == want
    assert trained_bytes(batch, load(other), "teacher", 0) == want
    report = compare_tokenizers(load("qwen3"), load("qwen3"), [response])
    assert report.summary["unicode_form"] == "NFC" and report.summary["one_to_one_rate"] == 1.0


@pytest.mark.parametrize("student", CHAT)
@pytest.mark.parametrize("teacher", CHAT)
def test_chat_templates_train_the_same_text_and_end_with_the_end_of_turn(student, teacher):
    tok_s, tok_t = load(student), load(teacher)
    pairs = [("  What is 2+2?\n", "4"), ("Translate 'chat' <|im_start|>", " le chat 🐈\n")]
    batch = KDCollator(tok_s, tok_t, chat_template=True)(pairs)
    for b, (_, response) in enumerate(pairs):
        assert trained_bytes(batch, tok_s, "student", b) == response.encode()
        assert trained_bytes(batch, tok_t, "teacher", b) == response.encode()
        for side, tok, name in (("student", tok_s, student), ("teacher", tok_t, teacher)):
            labels = getattr(batch, f"{side}_labels")[b]
            last = labels[labels != -100][-1]
            assert tok.convert_ids_to_tokens(int(last)) == END_OF_TURN[name]
    if student != teacher:
        differences = "\n".join(compare_tokenizers(tok_s, tok_t, ["hi"]).summary["special_differences"])
        assert "chat template" in differences and END_OF_TURN[student] in differences


def test_pre_flight_report_on_a_real_pair_shows_bytes_and_padded_rows():
    gpt2, llama2 = load("gpt2"), load("llama2")
    report = compare_tokenizers(gpt2, llama2, ["I 🤗 you"], vocab_sizes=(HEAD_ROWS["gpt2"], HEAD_ROWS["llama2"]))
    shown = [t for row in report.longest.itertuples() for t in (*row.tokens_a, *row.tokens_b)]
    assert "\\xf0" in shown and "🤗" not in shown  # byte pieces as their bytes, never the whole character
    assert report.summary["one_to_one_rate"] < 1.0
    padded = compare_tokenizers(load("qwen3"), load("gemma3"), ["hi"], vocab_sizes=(151936, 262208)).summary
    assert (padded["padded_rows_a"], padded["padded_rows_b"]) == (151936 - 151669, 262208 - 262145)
    differences = compare_tokenizers(gpt2, llama2, ["hi"]).summary["special_differences"]
    assert any("bos_token" in d for d in differences) and any("added before a text" in d for d in differences)


def test_inspect_prints_the_report_for_real_tokenizers(capsys, tmp_path):
    from kdviz import cli
    from tests.real_tokenizers import CACHE

    load("llama3"), load("qwen3")  # fetched (or skipped / failed in CI)
    texts = tmp_path / "texts.txt"
    texts.write_text("I 🤗 you\nplain <|eot_id|> text\n", encoding="utf-8")
    cli.main(["inspect", "--student", str(CACHE / "llama3"), "--teacher", str(CACHE / "qwen3"), "--texts", str(texts)])
    out = capsys.readouterr().out
    assert "special_strings:\n    - <|eot_id|>" in out and "end of a response with chat_template=True" in out
    assert "one_to_one_rate: 1.0" in out  # both byte-level: the same split of these texts
