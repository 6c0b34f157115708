"""VanillaKD: same tokenizer, any divergence by name."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdviz import divergence
from kdviz.methods import IGNORE, KDCollator, VanillaKD
from tests.kd_helpers import bpe_tokenizer, pairs, student_model, teacher_model, unigram_tokenizer


@pytest.fixture(scope="module")
def batch():
    return KDCollator(bpe_tokenizer())(pairs(3))


@pytest.fixture(scope="module")
def models():
    vocab = len(bpe_tokenizer())
    return student_model(vocab), teacher_model(vocab)


def test_loss_equals_independent_recomputation(batch, models):
    student, teacher = models
    m = VanillaKD(student, teacher, tau=2.0, tau_squared=True)
    assert list(m.parameters()) == []
    out = m(batch)
    with torch.no_grad():
        z_s = student(batch.student_input_ids, attention_mask=batch.student_attention_mask).logits
        z_t = teacher(batch.teacher_input_ids, attention_mask=batch.teacher_attention_mask).logits
        y = torch.cat([batch.student_labels[:, 1:], torch.full_like(batch.student_labels[:, :1], IGNORE)], 1)
        ok = y != IGNORE
        logp, logq = F.log_softmax(z_t[ok] / 2, -1), F.log_softmax(z_s[ok] / 2, -1)
        kd = 4 * (logp.exp() * (logp - logq)).sum(-1).mean()
        ce = F.cross_entropy(z_s[ok], y[ok])
    assert float(out.terms["kd"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(out.terms["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert out.loss.item() == pytest.approx(float(0.5 * ce + 0.5 * kd), rel=1e-5)
    token_kd = out.diagnostics["token_kd"]
    assert token_kd.side == "student" and token_kd.values.shape == y.shape and not token_kd.values[~ok].any()


def test_divergence_by_name_and_precomputed_outputs(batch, models):
    student, teacher = models
    s = SimpleNamespace(logits=student(batch.student_input_ids).logits)
    t = SimpleNamespace(logits=teacher(batch.teacher_input_ids).logits.detach())
    m = VanillaKD(divergence="akl", divergence_params={"mu": 0.3}, ce_weight=0.0, kd_weight=1.0)
    out = m(batch, student_outputs=s, teacher_outputs=t)
    expect = divergence("akl", s.logits, t.logits, batch.student_mask, mu=0.3)
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-5)
    out.loss.backward()
    with pytest.raises(ValueError, match="pass student_outputs"):
        m(batch)
    with pytest.raises(ValueError, match="not a known divergence"):
        VanillaKD(divergence="kl")


def test_vocabulary_mismatch_and_edge_cases(batch, models):
    student, _ = models
    padded_teacher = teacher_model(len(bpe_tokenizer()) + 16)
    with pytest.raises(ValueError, match="trim_vocab"):
        VanillaKD(student, padded_teacher)(batch)
    assert torch.isfinite(VanillaKD(student, padded_teacher, trim_vocab=True)(batch).loss)
    m = VanillaKD(student, models[1])
    empty = KDCollator(bpe_tokenizer(), add_eos=False)([("Q: who moves?\nA:", "")])
    out = m(empty)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(m(KDCollator(bpe_tokenizer())(pairs(1))).loss)


def test_a_filtered_teacher_needs_the_shared_support_for_reverse_kl():
    batch = KDCollator(unigram_tokenizer())(pairs(2))
    z = torch.randn(*batch.student_input_ids.shape, len(unigram_tokenizer()))
    top = z.topk(5, -1).indices
    filtered = torch.full_like(z, -math.inf).scatter(-1, top, z.gather(-1, top) + 1.0)  # a top-5 teacher cache
    s, t = SimpleNamespace(logits=z), SimpleNamespace(logits=filtered)
    with pytest.raises(ValueError, match="support='shared'"):
        VanillaKD(divergence="rkl")(batch, s, t)
    out = VanillaKD(divergence="rkl", divergence_params={"support": "shared"})(batch, s, t)
    assert torch.isfinite(out.loss)
    assert float(VanillaKD(divergence="fkl")(batch, s, t).terms["kd"]) > float(
        VanillaKD(divergence="fkl", divergence_params={"support": "shared"})(batch, s, t).terms["kd"])
