"""The fused LM-head path equals head matmul + CE + divergence computed the plain way."""

from __future__ import annotations

import pytest
import torch

import kdviz
from kdviz.divergences import divergence
from tests.test_divergences import NAMES


def make(seed=0, b=2, t=7, d=16, v=50, d_t=12, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=gen, dtype=dtype)
    w = torch.randn(v, d, generator=gen, dtype=dtype) * 0.3
    h_t = torch.randn(b, t, d_t, generator=gen, dtype=dtype)
    w_t = torch.randn(v, d_t, generator=gen, dtype=dtype) * 0.5
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[0, :2] = -100
    labels[1, -1] = -100
    return h, w, h_t, w_t, labels


def reference(name, h, w, t_logits, labels, ce_weight, kd_weight, tau, **params):
    mask = labels != -100
    z = h @ w.T
    ce = torch.nn.functional.cross_entropy(z[mask], labels[mask], reduction="sum") / mask.sum().clamp(min=1)
    kd = divergence(name, z, t_logits, mask, tau=tau, engine="plain", **params)
    return ce_weight * ce + kd_weight * kd


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_rows", [1, 4, None])
def test_fused_matches_matmul_plus_losses(name, chunk_rows):
    h, w, h_t, w_t, labels = make()
    t_logits = h_t @ w_t.T
    hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
    want = reference(name, hr, wr, t_logits, labels, 0.3, 0.7, 1.5)
    want.backward()
    hf, wf = h.clone().requires_grad_(), w.clone().requires_grad_()
    stats = {}
    got = kdviz.fused_divergence(name, hf, wf, labels, teacher_hidden=h_t, teacher_head_weight=w_t,
                                 ce_weight=0.3, kd_weight=0.7, tau=1.5, chunk_rows=chunk_rows, stats=stats)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hf.grad, hr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(wf.grad, wr.grad, rtol=1e-4, atol=1e-6)
    assert set(stats) >= {"ce", "kd", "tokens"} and stats["tokens"] == 11
    # the same with precomputed teacher logits
    got_logits = kdviz.fused_divergence(name, h, w, labels, teacher_logits=t_logits, ce_weight=0.3, kd_weight=0.7,
                                        tau=1.5, chunk_rows=chunk_rows)
    torch.testing.assert_close(got_logits, want.detach(), rtol=1e-5, atol=1e-6)


def test_upstream_scale_sum_reduction_and_tau_squared():
    h, w, h_t, w_t, labels = make(1)
    t_logits = h_t @ w_t.T
    hr = h.clone().requires_grad_()
    mask = labels != -100
    z = hr @ w.T
    want = (torch.nn.functional.cross_entropy(z[mask], labels[mask], reduction="sum")
            + 4 * divergence("rkl", z, t_logits, mask, tau=2.0, reduction="sum", engine="plain"))
    (3 * want).backward()
    hf = h.clone().requires_grad_()
    got = kdviz.fused_divergence("rkl", hf, w, labels, teacher_logits=t_logits, ce_weight=1.0, kd_weight=1.0,
                                 tau=2.0, tau_squared=True, reduction="sum")
    (3 * got).backward()
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf.grad, hr.grad, rtol=1e-4, atol=1e-5)


def test_all_labels_masked_gives_zero():
    h, w, _, w_t, labels = make(2)
    labels[:] = -100
    hf, wf = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = kdviz.fused_divergence("akl", hf, wf, labels, teacher_logits=torch.randn(2, 7, 50))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(hf.grad == 0) and torch.all(wf.grad == 0)


def test_bad_inputs_name_the_argument():
    h, w, h_t, w_t, labels = make(3)
    with pytest.raises(ValueError, match="a teacher is needed"):
        kdviz.fused_divergence("fkl", h, w, labels)
    with pytest.raises(ValueError, match="not both"):
        kdviz.fused_divergence("fkl", h, w, labels, teacher_logits=h_t @ w_t.T, teacher_hidden=h_t,
                               teacher_head_weight=w_t)
    with pytest.raises(ValueError, match=r"teacher_logits has shape \(2, 7, 49\), expected \(2, 7, 50\)"):
        kdviz.fused_divergence("fkl", h, w, labels, teacher_logits=torch.randn(2, 7, 49))
    with pytest.raises(ValueError, match="vocabulary sizes differ: student head V=50, teacher head V=51"):
        kdviz.fused_divergence("fkl", h, w, labels, teacher_hidden=h_t, teacher_head_weight=torch.randn(51, 12))
    with pytest.raises(ValueError, match=r"student_head_weight must be \[V, d\] with d = student_hidden.shape"):
        kdviz.fused_divergence("fkl", h, w[:, :5], labels, teacher_logits=torch.randn(2, 7, 50))
    bad = labels.clone()
    bad[0, 3] = 50
    with pytest.raises(ValueError, match=r"labels must be -100 or token ids in \[0, 50\)"):
        kdviz.fused_divergence("fkl", h, w, bad, teacher_logits=torch.randn(2, 7, 50))
    with pytest.raises(ValueError, match="unknown divergence"):
        kdviz.fused_divergence("kld", h, w, labels, teacher_logits=torch.randn(2, 7, 50))
