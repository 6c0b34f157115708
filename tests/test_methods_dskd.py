"""DSKD (docs/methods.md#dskd): a Llama student and a GPT-2 teacher sharing the Unigram tokenizer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdviz.methods import DSKD, IGNORE, KDCollator
from tests.kd_helpers import pairs, student_model, teacher_model, unigram_tokenizer


def make(teacher_vocab: int | None = None, **switches) -> DSKD:
    vocab = len(unigram_tokenizer())
    return DSKD(student_model(vocab), teacher_model(teacher_vocab or vocab), **switches)


@pytest.fixture(scope="module")
def batch():
    return KDCollator(unigram_tokenizer())(pairs(3))


def fkl(p_logits, q_logits, tau):
    logp, logq = F.log_softmax(p_logits / tau, -1), F.log_softmax(q_logits / tau, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def test_loss_equals_independent_recomputation(batch):
    m = make()
    out = m(batch)
    with torch.no_grad():
        s = m.student(batch.student_input_ids, attention_mask=batch.student_attention_mask, output_hidden_states=True)
        t = m.teacher(batch.teacher_input_ids, attention_mask=batch.teacher_attention_mask, output_hidden_states=True)
        y = torch.cat([batch.student_labels[:, 1:], torch.full_like(batch.student_labels[:, :1], IGNORE)], 1)
        ok = y != IGNORE
        w_s = m.student.get_output_embeddings().weight
        w_t = m.teacher.get_output_embeddings().weight
        t2s = (t.hidden_states[-1] @ m.t2s.weight.T + m.t2s.bias) @ w_s.T
        s2t = (s.hidden_states[-1] @ m.s2t.weight.T + m.s2t.bias) @ w_t.T
        ce = F.cross_entropy(s.logits[ok], y[ok])
        t2s_ce = F.cross_entropy(t2s[ok], y[ok])
        t2s_kd = fkl(t2s[ok], s.logits[ok], 2.0).mean()
        s2t_kd = fkl(t.logits[ok], s2t[ok], 2.0).mean()
    expect = {"ce": ce, "t2s_ce": t2s_ce, "t2s_kd": t2s_kd, "s2t_kd": s2t_kd,
              "loss": 0.5 * ce + 0.5 * (t2s_ce + t2s_kd + s2t_kd),
              "t2s_acc": (t2s.argmax(-1) == y)[ok].float().mean(),
              "s2t_acc": (s2t.argmax(-1) == t.logits.argmax(-1))[ok].float().mean(),
              "max_t2s_prob": t2s.softmax(-1).amax(-1)[ok].mean()}
    for name, value in expect.items():
        assert float(out.terms[name]) == pytest.approx(float(value), rel=1e-4, abs=1e-7), name
    assert float(out.terms["kept_fraction"]) == 1.0
    d = out.diagnostics
    assert d["token_kd"].values.shape == batch.student_input_ids.shape and not d["token_kd"].values[~ok].any()
    assert d["t2s_logits"].logits.shape == s.logits.shape and torch.allclose(d["s2t_logits"].logits, s2t, atol=1e-5)
    assert (d["t2s_logits"].model, d["t2s_logits"].space) == ("teacher", "student")  # the teacher, projected
    assert (d["s2t_logits"].model, d["s2t_logits"].space) == ("student", "teacher")
    assert d["token_s2t_kd"].side == "teacher"


def nonzero_grads(term, params) -> bool:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_gradient_routing(batch):
    m = make()
    out = m(batch)
    head = [m.student.get_output_embeddings().weight]
    groups = {"head": head, "body": [p for p in m.student.parameters() if p is not head[0]],
              "t2s": list(m.t2s.parameters()), "s2t": list(m.s2t.parameters())}
    expected = {"t2s_ce": {"t2s"}, "t2s_kd": {"head", "body"}, "s2t_kd": {"s2t", "body"}, "ce": {"head", "body"}}
    for term, receivers in expected.items():
        assert {g for g, ps in groups.items() if nonzero_grads(out.parts[term], ps)} == receivers, term
    out.loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is not None for p in m.parameters())


def test_switches_and_padded_teacher_vocabulary(batch):
    base = make()(batch).terms
    rkl = make(teacher_space_divergence="rkl")(batch).terms
    assert float(rkl["t2s_kd"]) == pytest.approx(float(base["t2s_kd"]))
    assert float(rkl["s2t_kd"]) != pytest.approx(float(base["s2t_kd"]))
    sfkl = make(divergence="sfkl", divergence_params={"a": 0.3})(batch).terms
    assert float(sfkl["s2t_kd"]) == pytest.approx(float(base["s2t_kd"]))
    assert float(sfkl["t2s_kd"]) != pytest.approx(float(base["t2s_kd"]))
    # a teacher whose LM head has padded rows: the teacher-space term lives in the teacher's vocabulary
    padded = make(teacher_vocab=len(unigram_tokenizer()) + 11)(batch)
    assert torch.isfinite(padded.loss)
    assert padded.diagnostics["teacher_logits"].logits.shape[-1] == len(unigram_tokenizer()) + 11


def test_edge_cases_and_errors(batch):
    m = make()
    empty = KDCollator(unigram_tokenizer(), add_eos=False)([("Q: who moves?\nA:", "")])
    out = m(empty)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in m.parameters())
    one = m(KDCollator(unigram_tokenizer())(pairs(1)))
    assert torch.isfinite(one.loss)
    with pytest.raises(ValueError, match="on cpu but the batch is on meta"):
        m(batch.to("meta"))
    with pytest.raises(ValueError, match="tau must be a positive number"):
        make(tau=0)
    # outputs whose logits are not the LM head of the last hidden state (logit scaling) are flagged once
    s = m.student(batch.student_input_ids, output_hidden_states=True)
    t = m.teacher(batch.teacher_input_ids, output_hidden_states=True)
    scaled = SimpleNamespace(logits=t.logits * 3, hidden_states=t.hidden_states)
    fresh = make()
    with pytest.warns(UserWarning, match="teacher's logits are not hidden_states"):
        fresh(batch, student_outputs=s, teacher_outputs=scaled)
