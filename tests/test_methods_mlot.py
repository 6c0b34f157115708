"""MultiLevelOT (docs/methods.md#multilevelot): every level recomputed from the formulas, the SD plan
against ``ot.sinkhorn``, recorded marginals, HAD against the per-token sorted L1, gradients at reg = 0.1 in
float32, ``mode="reference"`` against a restatement of the published code, empty sides and bad arguments."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdviz.methods import IGNORE, KDCollator, MultiLevelOT
from tests.kd_helpers import (
    all_tensors,
    bpe_tokenizer,
    pairs,
    recorded_scores,
    student_model,
    teacher_model,
    unigram_tokenizer,
)
from tests.test_align_transport import pot_plan


@pytest.fixture(scope="module")
def batch():
    return KDCollator(unigram_tokenizer(), bpe_tokenizer())(pairs(3))


def outputs(batch, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    b, t_s = batch.student_input_ids.shape
    z_s = (torch.randn(b, t_s, len(unigram_tokenizer()), generator=g) * scale).requires_grad_()
    z_t = torch.randn(b, batch.teacher_input_ids.shape[1], len(bpe_tokenizer()), generator=g) * scale
    return SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t)


def windows(batch):
    """Per example: the student and teacher positions paired by index."""
    out = []
    for b in range(batch.batch_size):
        s_pos = batch.student_mask[b].nonzero().flatten()
        t_pos = batch.teacher_mask[b].nonzero().flatten()
        n = min(len(s_pos), len(t_pos))
        out.append((s_pos[:n], t_pos[:n]))
    return out


def levels(z_s, z_t, batch, k=50):
    """Per example ``(t^k, s^k, ids_t, ids_s, logq^k)`` at tau = 1, written out from the formulas."""
    zs = [z_s[b, s].detach().float() for b, (s, _) in enumerate(windows(batch))]
    zt = [z_t[b, t].float() for b, (_, t) in enumerate(windows(batch))]
    q, p = [z.softmax(-1) for z in zs], [z.softmax(-1) for z in zt]
    ids_s = [x.sum(0).argsort(descending=True)[:k] for x in q]
    ids_t = [x.sum(0).argsort(descending=True)[:k] for x in p]
    return [
        (p[b][:, ids_t[b]], q[b][:, ids_s[b]], ids_t[b], ids_s[b], zs[b].log_softmax(-1)[:, ids_s[b]], zs[b], zt[b])
        for b in range(len(q))
    ]


def window_matrix(full, b, s_pos, t_pos):
    """The teacher x student window of a stored ``[B, T_s, T_t]`` matrix (student rows, teacher columns),
    transposed to the teacher rows the formulas are written in."""
    return full[b][s_pos][:, t_pos].T


def test_every_level_recomputed(batch):
    s_out, t_out = outputs(batch)
    out = MultiLevelOT()(batch, s_out, t_out)
    d, count = out.diagnostics, sum(len(s) for s, _ in windows(batch))
    had = sl = sd = 0.0
    for b, ((s_pos, t_pos), (t_k, s_k, ids_t, ids_s, logq_k, zs, zt)) in enumerate(
        zip(windows(batch), levels(s_out.logits, t_out.logits, batch), strict=True)
    ):
        assert torch.equal(d["topk_ids"].teacher_ids[b], ids_t) and torch.equal(d["topk_ids"].student_ids[b], ids_s)
        token_had = (t_k - s_k).abs().sum(-1)
        torch.testing.assert_close(d["token_had"].values[b, s_pos], token_had, rtol=1e-5, atol=1e-6)
        had += float(token_had.sum())
        sl += float(-(t_k * logq_k).sum())
        x, y = (zt / 2).softmax(-1)[:, ids_t], (zs / 2).softmax(-1)[:, ids_s]
        cost = (x[:, None, :] - y[None, :, :]).abs().sum(-1)
        torch.testing.assert_close(window_matrix(d["transport"].cost, b, s_pos, t_pos), cost, rtol=1e-5, atol=1e-6)
        plan = window_matrix(d["transport"].plan, b, s_pos, t_pos)
        sd += float((plan * cost).sum())
        assert float(d["transport"].sequence_cost[b]) == pytest.approx(float((plan * cost).sum()), rel=1e-5)
    for name, value in (("had", had), ("sl", sl), ("sd", sd)):
        assert float(out.terms[name]) == pytest.approx(value / count, rel=1e-5), name
    t = {k: float(v) for k, v in out.terms.items()}
    assert t["kd"] == pytest.approx(t["had"] + 0.1 * t["sl"] + 0.1 * t["sd"], rel=1e-6)
    assert t["loss"] == pytest.approx(t["ce"] + 0.15 * t["kd"], rel=1e-6)
    assert t["sinkhorn_iterations"] == 20 and batch.student_input_ids.shape[1] != batch.teacher_input_ids.shape[1]
    assert d["transport"].plan.shape == (batch.batch_size, batch.student_mask.shape[1], batch.teacher_mask.shape[1])
    assert all(not v.requires_grad for v in all_tensors(d))


def test_sd_plan_equals_pot_sinkhorn_and_marginals_hold(batch):
    s_out, t_out = outputs(batch, seed=1)
    out = MultiLevelOT()(batch, s_out, t_out)
    d, error = out.diagnostics, float(out.terms["sinkhorn_marginal_error"])
    for b, (s_pos, t_pos) in enumerate(windows(batch)):
        n = len(s_pos)
        cost = window_matrix(d["transport"].cost, b, s_pos, t_pos).double()
        plan = window_matrix(d["transport"].plan, b, s_pos, t_pos).double()
        want = torch.from_numpy(pot_plan(cost.numpy(), 0.1, 20)) * n  # uniform marginals, scaled to unit
        torch.testing.assert_close(plan, want, rtol=0, atol=1e-5)  # float32 solve vs float64 POT
        assert (plan.sum(0) - 1).abs().max() <= error + 1e-5  # unit marginals, as recorded
        assert (plan.sum(1) - 1).abs().max() <= error + 1e-5
        assert float(d["transport"].plan[b].sum()) == pytest.approx(n, rel=1e-5)  # nothing off the window
    assert 0 <= error < 0.5


def test_had_is_at_least_the_per_token_sorted_l1(batch):
    s_out, t_out = outputs(batch, seed=2)
    out = MultiLevelOT()(batch, s_out, t_out)
    for b, ((s_pos, _), (t_k, s_k, *_)) in enumerate(
        zip(windows(batch), levels(s_out.logits, t_out.logits, batch), strict=True)
    ):
        sorted_l1 = (t_k.sort(-1).values - s_k.sort(-1).values).abs().sum(-1)
        assert (out.diagnostics["token_had"].values[b, s_pos] >= sorted_l1 - 1e-6).all()


def test_student_gradient_equals_whole_vocabulary_autograd(batch):
    """The chunked softmax columns differentiate like log_softmax on whole rows (float64; SD through the
    cost with the plan held fixed, as the envelope gradient)."""
    s_out, t_out = outputs(batch, seed=5)
    z_s, z_t = s_out.logits.detach().double().requires_grad_(), t_out.logits.double()
    out = MultiLevelOT()(batch, SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t))
    d, count = out.diagnostics, sum(len(s) for s, _ in windows(batch))
    want = 0.0
    for b, (s_pos, t_pos) in enumerate(windows(batch)):
        ids_s, ids_t = d["topk_ids"].student_ids[b], d["topk_ids"].teacher_ids[b]
        zs, zt = z_s[b, s_pos], z_t[b, t_pos]
        s_k, t_k = zs.softmax(-1)[:, ids_s], zt.softmax(-1)[:, ids_t]
        x, y = (zt / 2).softmax(-1)[:, ids_t], (zs / 2).softmax(-1)[:, ids_s]
        cost = (x[:, None, :] - y[None, :, :]).abs().sum(-1)
        had = (t_k - s_k).abs().sum()
        sl = -(t_k * zs.log_softmax(-1)[:, ids_s]).sum()
        sd = (window_matrix(d["transport"].plan, b, s_pos, t_pos) * cost).sum()
        want = want + had + 0.1 * sl + 0.1 * sd
    (found,) = torch.autograd.grad(out.parts["kd"], z_s)
    (expected,) = torch.autograd.grad(want / count, z_s)
    assert found.dtype == torch.float64 and found.abs().sum() > 0
    torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_gradients_finite_at_reg_0_1_in_float32(batch, mode):
    s_out, t_out = outputs(batch, seed=3, scale=8.0)
    out = MultiLevelOT(mode=mode, reg=0.1)(batch, s_out, t_out)
    (grad_sd,) = torch.autograd.grad(out.parts["sd"], s_out.logits, retain_graph=True)
    assert grad_sd.dtype == torch.float32 and torch.isfinite(grad_sd).all() and grad_sd.abs().sum() > 0
    out.loss.backward()
    assert torch.isfinite(s_out.logits.grad).all()


# -- mode="reference": one test per quirk -----------------------------------------------------------


def official_start_and_size(labels):
    """The published code's answer start (the position before the first label) and size, per row."""
    out = []
    for row in labels:
        ignored = row.eq(IGNORE)
        size = len(row) - int(ignored.sum())
        idx = ignored.nonzero(as_tuple=True)[0]
        if len(idx) == 0 or idx[0] != 0:
            start = 0
        else:
            breaks = ((idx[1:] - idx[:-1]) != 1).nonzero()
            start = (breaks[0].item() + 1 if len(breaks) else len(idx)) - 1
        out.append((start, size))
    return out


def official_mlot(z_s, z_t, batch, skip_student_eos=True, k=50):
    """The published ``DistillationLoss.forward`` (f=1, temperatures 1, distillation weight 1.5), restated."""
    sides = []
    spans_s = official_start_and_size(batch.student_labels)
    spans_t = official_start_and_size(batch.teacher_labels)
    if skip_student_eos:
        spans_s = [(a, n - 1) for a, n in spans_s]
    for z, spans in ((z_s.detach().double(), spans_s), (z_t.double(), spans_t)):
        z = z / (z.std(-1, keepdim=True) + 1e-4)
        rows = []
        for b, (start, size) in enumerate(spans):
            answer = z[b, start : start + size].softmax(-1)
            rows.append(torch.cat([answer, torch.zeros_like(z[b, : z.shape[1] - size])]))
        sides.append(torch.stack(rows))
    length = max(max(n for _, n in spans_s), max(n for _, n in spans_t))
    # cut to the longest span (zero rows added where a side has fewer positions than that, where the
    # published code would fail on mismatched shapes)
    student, teacher = (torch.nn.functional.pad(x, (0, 0, 0, max(0, length - x.shape[1])))[:, :length] for x in sides)
    teacher = teacher[:, :, teacher.sum(dim=(0, 1)).argsort(descending=True)][:, :, :k]
    student = student[:, :, student.sum(dim=(0, 1)).argsort(descending=True)][:, :, :k]
    had = torch.stack([
        (student[b, :n] - teacher[b, :n]).abs().sum(-1).mean(-1)
        for b, n in enumerate(min(a[1], c[1]) for a, c in zip(spans_s, spans_t, strict=True))
    ]).mean()
    sl = -(student.softmax(-1) * teacher.log_softmax(-1)).sum(-1).mean()
    sd = 0.0
    for b in range(len(student)):
        x, y = (teacher[b] / 2).softmax(-1), (student[b] / 2).softmax(-1)
        cost = torch.cdist(x, y, p=1)
        plan = torch.exp(-cost / 0.1)
        for _ in range(10):
            plan = plan / plan.sum(1, keepdim=True)
            plan = plan / plan.sum(0, keepdim=True)
        sd = sd + 0.001 * (plan * cost).sum()
    mask = batch.student_mask
    ce = torch.nn.functional.cross_entropy(z_s.detach().double()[mask], batch.student_targets[mask])
    kd = had + 0.1 * sl + 0.1 * sd
    return {"had": had, "sl": sl, "sd": sd / 0.001, "ce": ce, "kd": kd, "loss": ce + 1.5 * kd}


@pytest.mark.parametrize("skip_student_eos", [True, False])
def test_reference_mode_equals_the_published_computation(batch, skip_student_eos):
    s_out, t_out = outputs(batch, seed=4)
    method = MultiLevelOT(mode="reference", skip_student_eos=skip_student_eos)
    out = method(batch, s_out, t_out)
    want = official_mlot(s_out.logits, t_out.logits, batch, skip_student_eos)
    for name, value in want.items():
        assert float(out.terms[name]) == pytest.approx(float(value), rel=2e-5, abs=1e-7), name
    assert float(out.terms["sinkhorn_iterations"]) == 10
    assert MultiLevelOT(mode="reference").skip_student_eos and not MultiLevelOT().skip_student_eos


def test_reference_mode_accepts_neg_inf_and_mixed_dtypes(batch):
    s_out, t_out = outputs(batch, seed=5)
    padded = t_out.logits.clone()
    padded[..., -3:] = float("-inf")  # padded LM-head rows of the teacher
    for mode in ("reference", "paper"):
        out = MultiLevelOT(mode=mode)(batch, s_out, SimpleNamespace(logits=padded))
        assert torch.isfinite(out.loss)
        mixed = MultiLevelOT(mode=mode)(batch, s_out, SimpleNamespace(logits=t_out.logits.double()))
        assert torch.isfinite(mixed.loss)
        same = MultiLevelOT(mode=mode)(batch, s_out, t_out)
        assert float(mixed.terms["kd"]) == pytest.approx(float(same.terms["kd"]), rel=1e-4)


def test_reference_divides_logits_by_their_std(batch):
    s_out, t_out = outputs(batch, seed=5)
    factor = torch.rand(*s_out.logits.shape[:2], 1, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    scaled = SimpleNamespace(logits=s_out.logits.detach() * factor)
    for mode, same in (("reference", True), ("paper", False)):
        a = MultiLevelOT(mode=mode)(batch, s_out, t_out).terms
        b = MultiLevelOT(mode=mode)(batch, scaled, t_out).terms
        close = all(abs(float(a[k]) - float(b[k])) <= 1e-3 * abs(float(a[k])) + 1e-6 for k in ("had", "sl", "sd"))
        assert close == same, mode


def test_reference_weights_sd_by_an_extra_1e_3_so_1e_4_in_all(batch):
    t = {k: float(v) for k, v in MultiLevelOT(mode="reference")(batch, *outputs(batch, seed=8)).terms.items()}
    assert t["kd"] == pytest.approx(t["had"] + 0.1 * t["sl"] + 1e-4 * t["sd"], rel=1e-6)


def test_reference_distillation_factor_is_1_5(batch):
    method = MultiLevelOT(mode="reference")
    t = {k: float(v) for k, v in method(batch, *outputs(batch, seed=9)).terms.items()}
    assert method.kd_weight == 1.5 and t["loss"] == pytest.approx(t["ce"] + 1.5 * t["kd"], rel=1e-6)
    assert MultiLevelOT(mode="reference", kd_weight=0.3).kd_weight == 0.3


# -- edge cases -------------------------------------------------------------------------------------


def test_empty_response_on_one_side_gives_zero_kd(batch):
    for mode in ("paper", "reference"):
        empty = replace(batch, student_labels=torch.full_like(batch.student_labels, IGNORE))
        s_out, t_out = outputs(empty)
        out = MultiLevelOT(mode=mode)(empty, s_out, t_out)
        assert float(out.terms["kd"]) == 0.0 and torch.isfinite(out.loss)
        assert float(out.diagnostics["transport"].plan.abs().sum()) == 0.0
        out.loss.backward()
        assert torch.isfinite(s_out.logits.grad).all()
    one = replace(batch, teacher_labels=batch.teacher_labels.clone())
    one.teacher_labels[1] = IGNORE
    out = MultiLevelOT()(one, *outputs(one))
    assert float(out.terms["kd"]) > 0 and float(out.diagnostics["transport"].plan[1].abs().sum()) == 0.0


def test_bad_arguments(batch):
    with pytest.raises(ValueError, match="mode must be one of"):
        MultiLevelOT(mode="code")
    with pytest.raises(ValueError, match="reg must be a positive number"):
        MultiLevelOT(reg=0)
    # the same check as tau's everywhere: finite, not a bool, NumPy and one-element tensors accepted
    for bad in (math.inf, math.nan, True, -1.0):
        with pytest.raises(ValueError, match="tau_sd must be a positive number"):
            MultiLevelOT(tau_sd=bad)
    assert MultiLevelOT(tau_sd=np.float32(1.5), reg=torch.tensor(0.2)).tau_sd == 1.5
    s_out, t_out = outputs(batch)
    v_s = s_out.logits.shape[-1]
    with pytest.raises(ValueError, match=rf"top_k=500 is larger than a vocabulary \(V_s={v_s}"):
        MultiLevelOT(top_k=500)(batch, s_out, t_out)


def test_runs_the_models(batch):
    student, teacher = student_model(len(unigram_tokenizer())), teacher_model(len(bpe_tokenizer()))
    out = MultiLevelOT(student, teacher)(batch)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


def test_the_recorder_scores_the_plans_rows_once(batch):
    """The plan's student rows are scored against the predicted tokens' ground truth by the recorder (the
    method's terms hold no score)."""
    from kdviz.align import alignment_scores

    out = MultiLevelOT()(batch, *outputs(batch, seed=10))
    assert not any(name.startswith("align") for name in out.terms)
    reference = batch.target_alignment() & batch.teacher_mask[:, None, :]
    want = alignment_scores(out.diagnostics["transport"].plan, reference, batch.student_mask)
    got = recorded_scores(batch, out, "transport_plan")
    for score in ("argmax_overlap", "overlap_mass", "row_entropy", "scored_rows"):
        assert got[score] == pytest.approx(float(want[score]), rel=1e-6), score
