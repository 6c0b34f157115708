"""KDCollator and KDBatch: labels, text-aligned responses, truncation, ground truth, validation."""

from __future__ import annotations

import pytest
import torch

from kdviz.align import overlap_matrix
from kdviz.methods import IGNORE, KDBatch, KDCollator, next_token_targets
from tests.kd_helpers import bpe_tokenizer, pairs, unigram_tokenizer


@pytest.fixture(scope="module")
def batch() -> KDBatch:
    return KDCollator(unigram_tokenizer(), bpe_tokenizer())(pairs(3))


def response_text(b: KDBatch, side: str, k: int) -> str:
    """Concatenated characters of the labelled tokens of example ``k``."""
    labels, offsets = getattr(b, f"{side}_labels")[k], getattr(b, f"{side}_offsets")[k]
    return "".join(b.texts[k][s:e] for (s, e), y in zip(offsets.tolist(), labels.tolist(), strict=True) if y != IGNORE)


def test_shapes_and_labels(batch):
    b, t_s = batch.student_input_ids.shape
    t_t = batch.teacher_input_ids.shape[1]
    assert b == 3 and t_s != t_t
    assert batch.alignment.shape == (3, t_s, t_t) and batch.student_offsets.shape == (3, t_s, 2)
    for side, tok in (("student", unigram_tokenizer()), ("teacher", bpe_tokenizer())):
        ids, mask, labels = (getattr(batch, f"{side}_{f}") for f in ("input_ids", "attention_mask", "labels"))
        trained = labels != IGNORE
        assert torch.equal(labels[trained], ids[trained])
        assert not trained[mask == 0].any()  # padding is never trained
        for k, (_, response) in enumerate(pairs(3)):
            assert response_text(batch, side, k) == response  # responses aligned by text
            last = int(mask[k].sum()) - 1
            assert ids[k, last] == tok.eos_token_id and labels[k, last] == tok.eos_token_id
            assert len(getattr(batch, f"{side}_tokens")[k]) == last + 1
    assert batch.student_input_ids[0, 0] == unigram_tokenizer().bos_token_id
    assert batch.student_labels[0, 0] == IGNORE
    assert batch.texts[0] == "".join(pairs(3)[0]) and batch.response_starts[0] == len(pairs(3)[0][0])


def test_targets_and_target_alignment(batch):
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE]])
    assert next_token_targets(labels).tolist() == [[5, 6, IGNORE, IGNORE]]
    assert torch.equal(batch.student_mask, batch.student_targets != IGNORE)
    ref = batch.target_alignment()
    assert torch.equal(ref[:, :-1, :-1], batch.alignment[:, 1:, 1:])
    assert not ref[:, -1].any() and not ref[:, :, -1].any()
    k = 1
    n_s, n_t = int(batch.student_attention_mask[k].sum()), int(batch.teacher_attention_mask[k].sum())
    expect = overlap_matrix(batch.student_offsets[k, :n_s], batch.teacher_offsets[k, :n_t], batch.texts[k])
    assert torch.equal(batch.alignment[k, :n_s, :n_t], expect)
    assert not batch.alignment[k, n_s:].any() and not batch.alignment[k, :, n_t:].any()


def test_one_tokenizer_and_mappings():
    examples = [{"prompt": p, "response": r} for p, r in pairs(2)]
    b = KDCollator(bpe_tokenizer())(examples)
    assert b.same_tokenizer and b.shares_tokenization()
    assert b.teacher_input_ids is b.student_input_ids
    n = int(b.student_attention_mask[0].sum())
    eye = b.alignment[0, :n, :n]
    assert torch.equal(eye, eye & torch.eye(n, dtype=torch.bool))  # a token overlaps only itself
    with pytest.raises(KeyError, match="prompt"):
        KDCollator(bpe_tokenizer())([{"question": "x"}])
    with pytest.raises(ValueError, match="empty"):
        KDCollator(bpe_tokenizer())([])


def test_truncation_keeps_both_sides_on_the_same_text():
    long = [("Q: tell me a story?\nA:", " The fox jumps over the lazy dog. My friend waits for a red ball.")]
    b = KDCollator(unigram_tokenizer(), bpe_tokenizer(), max_length=30)(long)
    assert b.student_input_ids.shape[1] == 30
    s_text, t_text = response_text(b, "student", 0), response_text(b, "teacher", 0)
    assert s_text and t_text and long[0][1].startswith(s_text) and long[0][1].startswith(t_text)
    # both sides end within one token of each other and never train past what the other covers
    s_end = max(e for (s, e), y in zip(b.student_offsets[0].tolist(), b.student_labels[0].tolist(), strict=True)
                if y != IGNORE)
    t_end = max(e for (s, e), y in zip(b.teacher_offsets[0].tolist(), b.teacher_labels[0].tolist(), strict=True)
                if y != IGNORE)
    assert abs(s_end - t_end) < 8 and max(s_end, t_end) <= len(b.texts[0])
    assert not (b.student_labels == unigram_tokenizer().eos_token_id).any()  # EOS of a cut example untrained


def test_empty_responses_give_no_labels():
    b = KDCollator(unigram_tokenizer(), bpe_tokenizer(), add_eos=False)([("Q: who moves?\nA:", "")])
    assert not b.student_mask.any() and not b.teacher_mask.any()


def test_to_and_validation(batch):
    moved = batch.to("meta")
    assert moved.student_input_ids.device.type == "meta" and moved.texts == batch.texts
    fields = dict(vars(batch))
    with pytest.raises(TypeError, match="student_input_ids must hold integer"):
        KDBatch(**{**fields, "student_input_ids": batch.student_input_ids.float()})
    with pytest.raises(ValueError, match=r"teacher_labels must have shape"):
        KDBatch(**{**fields, "teacher_labels": batch.teacher_labels[:, :-1]})
    with pytest.raises(ValueError, match="alignment must be a bool tensor"):
        KDBatch(**{**fields, "alignment": batch.alignment.float()})
    with pytest.raises(ValueError, match="teacher_input_ids is on meta"):
        t = {k: v.to("meta") for k, v in fields.items() if k.startswith("teacher_") and isinstance(v, torch.Tensor)}
        KDBatch(**{**fields, **t})
    with pytest.raises(TypeError, match="not a fast tokenizer"):
        KDCollator(type("Slow", (), {"is_fast": False, "name_or_path": "slow"})())
