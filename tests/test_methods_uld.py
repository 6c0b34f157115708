"""ULD (docs/methods.md#uld): the sorted W1 against POT's ``wasserstein_1d``, its gradient, the top-k
switch, both position alignments, rank-matching diagnostics, and bad or empty inputs."""

from __future__ import annotations

import warnings
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import ot
import pytest
import torch

from kdviz.methods import IGNORE, ULD, KDCollator, KDOutput, Method
from kdviz.methods.uld import sorted_w1
from tests.kd_helpers import (
    all_tensors,
    bpe_tokenizer,
    pairs,
    recorded_scores,
    student_model,
    teacher_model,
    unigram_tokenizer,
)


@pytest.fixture(scope="module")
def batch():
    return KDCollator(unigram_tokenizer(), bpe_tokenizer())(pairs(3))


def outputs(batch, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    b, t_s = batch.student_input_ids.shape
    t_t = batch.teacher_input_ids.shape[1]
    z_s = (torch.randn(b, t_s, len(unigram_tokenizer()), generator=g) * scale).requires_grad_()
    z_t = torch.randn(b, t_t, len(bpe_tokenizer()), generator=g) * scale
    return SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t)


def pot_w1(z_s: torch.Tensor, z_t: torch.Tensor, tau: float) -> torch.Tensor:
    """``V * ot.wasserstein_1d(q_pad, p_pad)``: W1 between the empirical measures of the two padded
    probability vectors, each value of weight ``1/V``, equals the mean absolute sorted difference."""
    q, p = torch.softmax(z_s / tau, -1), torch.softmax(z_t / tau, -1)
    v = max(q.shape[-1], p.shape[-1])
    q = torch.nn.functional.pad(q, (0, v - q.shape[-1]))
    p = torch.nn.functional.pad(p, (0, v - p.shape[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.stack([v * ot.wasserstein_1d(q[i], p[i]) for i in range(len(q))])


@pytest.mark.parametrize(("v_s", "v_t"), [(30, 47), (64, 20), (33, 33)])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_w1_equals_pot_wasserstein_1d(v_s, v_t, tau):
    g = torch.Generator().manual_seed(v_s + v_t)
    z_s = torch.randn(6, v_s, generator=g, dtype=torch.float64) * 3
    z_t = torch.randn(6, v_t, generator=g, dtype=torch.float64) * 3
    got = sorted_w1(z_s, z_t, tau=tau, chunk_rows=4)
    torch.testing.assert_close(got, pot_w1(z_s, z_t, tau), rtol=1e-10, atol=1e-12)
    assert torch.allclose(sorted_w1(z_s.float(), z_t.float(), tau=tau).double(), got, atol=1e-5)


def test_gradient_is_the_sorted_sign_through_the_softmax():
    g = torch.Generator().manual_seed(1)
    z_s = torch.randn(5, 40, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(5, 25, generator=g, dtype=torch.float64)
    weights = torch.rand(5, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad((sorted_w1(z_s, z_t, tau=1.5, chunk_rows=2) * weights).sum(), z_s)
    q = torch.softmax(z_s / 1.5, -1).sort(-1, descending=True).values
    p = torch.nn.functional.pad(torch.softmax(z_t / 1.5, -1).sort(-1, descending=True).values, (0, 15))
    (want,) = torch.autograd.grad(((q - p).abs().sum(-1) * weights).sum(), z_s)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_top_k_switch_is_a_lower_bound_and_exact_at_full_width():
    g = torch.Generator().manual_seed(2)
    z_s, z_t = torch.randn(8, 50, generator=g) * 2, torch.randn(8, 50, generator=g) * 2
    exact = sorted_w1(z_s, z_t)
    torch.testing.assert_close(sorted_w1(z_s, z_t, top_k=50), exact, rtol=1e-5, atol=1e-6)
    approx = sorted_w1(z_s, z_t, top_k=5)
    assert (approx <= exact + 1e-6).all() and (approx > 0).all()
    leaf = z_s.clone().requires_grad_()
    sorted_w1(leaf, z_t, top_k=5).sum().backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"top_k=51 .*V_s=50, V_t=50"):
        sorted_w1(z_s, z_t, top_k=51)


def test_index_positions_loss_terms_and_rank_matching(batch):
    s_out, t_out = outputs(batch)
    method = ULD()
    out = method(batch, s_out, t_out)
    assert isinstance(out, KDOutput) and isinstance(method, Method) and list(method.parameters()) == []
    pair = out.diagnostics["pair_index"]
    for b in range(batch.batch_size):
        s_pos = batch.student_mask[b].nonzero().flatten()
        t_pos = batch.teacher_mask[b].nonzero().flatten()
        n = min(len(s_pos), len(t_pos))
        assert pair[b, s_pos[:n]].tolist() == t_pos[:n].tolist()
        assert (pair[b, s_pos[n:]] == -1).all() and (pair[b][~batch.student_mask[b]] == -1).all()
    rows = (pair >= 0).nonzero(as_tuple=True)
    per_pair = pot_w1(s_out.logits[rows].detach().double(), t_out.logits[rows[0], pair[rows]].double(), 1.0)
    assert float(out.terms["kd"]) == pytest.approx(float(per_pair.mean()), rel=1e-5)
    torch.testing.assert_close(out.diagnostics["token_kd"].values[rows].double(), per_pair, rtol=1e-5, atol=1e-6)
    assert float(out.terms["loss"]) == pytest.approx(float(out.terms["ce"] + 1.5 * out.terms["kd"]), rel=1e-6)
    assert float(out.terms["paired_fraction"]) == pytest.approx(len(rows[0]) / int(batch.student_mask.sum()))
    ids_s, ids_t = out.diagnostics["rank_ids_student"], out.diagnostics["rank_ids_teacher"]
    assert ids_s.shape == (*pair.shape, 10)
    assert torch.equal(ids_s[rows], s_out.logits[rows].detach().topk(10, -1).indices)
    assert torch.equal(ids_t[rows], t_out.logits[rows[0], pair[rows]].topk(10, -1).indices)
    assert (ids_s[pair < 0] == -1).all() and (out.diagnostics["rank_probs_teacher"][pair < 0] == 0).all()
    assert all(not v.requires_grad for v in all_tensors(out.diagnostics))
    assert all(v.dim() == 0 and not v.requires_grad for v in out.terms.values())
    out.loss.backward()
    assert torch.isfinite(s_out.logits.grad).all()


def test_offset_positions_follow_the_characters(batch):
    s_out, t_out = outputs(batch, seed=3)
    out = ULD(positions="offsets")(batch, s_out, t_out)
    pair = out.diagnostics["pair_index"]
    assert (pair[batch.student_mask] >= 0).all() and (pair[~batch.student_mask] == -1).all()
    reference = batch.target_alignment()
    for b, i in batch.student_mask.nonzero().tolist():
        j = int(pair[b, i])
        assert batch.teacher_mask[b, j]
        if batch.student_targets[b, i] == unigram_tokenizer().eos_token_id:
            assert batch.teacher_targets[b, j] == bpe_tokenizer().eos_token_id  # EOS with EOS
        else:
            assert reference[b, i, j]
    assert recorded_scores(batch, out, "pairing")["argmax_overlap"] == 1.0
    index = ULD()(batch, s_out, t_out)
    assert recorded_scores(batch, index, "pairing")["argmax_overlap"] < 1.0  # index pairing drifts off characters


def test_empty_response_on_one_side_gives_zero_kd(batch):
    empty = replace(batch, teacher_labels=torch.full_like(batch.teacher_labels, IGNORE))
    for positions in ("index", "offsets"):
        s_out, t_out = outputs(empty)
        out = ULD(positions=positions)(empty, s_out, t_out)
        assert float(out.terms["kd"]) == 0.0 and torch.isfinite(out.loss)
        out.loss.backward()
        assert torch.isfinite(s_out.logits.grad).all()


def test_bad_arguments(batch):
    with pytest.raises(ValueError, match="positions must be one of"):
        ULD(positions="dtw")
    with pytest.raises(ValueError, match="top_k must be None"):
        ULD(top_k=0)
    s_out, t_out = outputs(batch)
    with pytest.raises(ValueError, match="top_k=100000 must be"):
        ULD(top_k=100_000)(batch, s_out, t_out)
    bad = s_out.logits.detach().clone()
    bad[0, 5, 3] = float("nan")
    with pytest.raises(ValueError, match="student_logits contains NaN"):
        sorted_w1(bad[0, :20], t_out.logits[0, :20])


def test_runs_the_models_and_reaches_only_the_student(batch):
    student, teacher = student_model(len(unigram_tokenizer())), teacher_model(len(bpe_tokenizer()))
    out = ULD(student, teacher, positions="offsets")(batch)
    out.loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    assert out.diagnostics["teacher_logits"].logits.shape[-1] == len(bpe_tokenizer())


def test_the_recorder_keeps_the_pairing_as_an_alignment_matrix(batch, tmp_path):
    from kdviz.record import Recorder, open_run

    s_out, t_out = outputs(batch, seed=4)
    out = ULD(positions="offsets")(batch, s_out, t_out)
    with Recorder(tmp_path / "run", every=1, samples=2, probes=["terms", "alignment"]) as rec:
        rec.log(0, batch, out)
    m = open_run(tmp_path / "run").matrix("pairing", step=0, sample=0)
    n_s, n_t = len(m.row_tokens), len(m.col_tokens)  # the sampled sequence's response on each side
    assert m.values.shape == (n_s, n_t) and (n_s, n_t) in {
        (int(batch.student_mask[b].sum()), int(batch.teacher_mask[b].sum())) for b in range(len(batch.texts))
    }
    assert (m.values.sum(1) == 1).all() and set(np.unique(m.values)) <= {0.0, 1.0}  # one teacher position per row
    assert m.reference.shape == m.values.shape and m.info["argmax_overlap"] >= 0.9  # offsets follow characters


def official_uld(z_s, z_t, batch):
    """The DSKD repository's ULD baseline (kd_rate 0.5), restated: roll each side so its first response
    position comes first, sort both softmaxes, zero-pad, sum |difference| where both targets are valid,
    and divide ``0.5 CE_sum + 0.5 ULD_sum`` by the number of student response tokens."""
    s_tgt, t_tgt = batch.student_targets.clone(), batch.teacher_targets.clone()
    z_s, z_t = z_s.detach().double().clone(), z_t.double().clone()
    width = max(z_s.shape[1], z_t.shape[1])
    pad = torch.nn.functional.pad
    s_tgt, t_tgt = pad(s_tgt, (0, width - s_tgt.shape[1]), value=IGNORE), pad(t_tgt, (0, width - t_tgt.shape[1]),
                                                                               value=IGNORE)
    z_s, z_t = pad(z_s, (0, 0, 0, width - z_s.shape[1])), pad(z_t, (0, 0, 0, width - z_t.shape[1]))
    ce_sum = torch.nn.functional.cross_entropy(z_s[s_tgt != IGNORE], s_tgt[s_tgt != IGNORE], reduction="sum")
    n_student = int((s_tgt != IGNORE).sum())
    for i in range(len(s_tgt)):
        a_s, a_t = int(s_tgt[i].ne(IGNORE).nonzero()[0]), int(t_tgt[i].ne(IGNORE).nonzero()[0])
        s_tgt[i], z_s[i] = torch.cat([s_tgt[i][a_s:], s_tgt[i][:a_s]]), torch.cat([z_s[i][a_s:], z_s[i][:a_s]])
        t_tgt[i], z_t[i] = torch.cat([t_tgt[i][a_t:], t_tgt[i][:a_t]]), torch.cat([z_t[i][a_t:], z_t[i][:a_t]])
    q = z_s.softmax(-1).sort(-1, descending=True).values
    p = z_t.softmax(-1).sort(-1, descending=True).values
    gap = q.shape[-1] - p.shape[-1]
    p = pad(p, (0, max(gap, 0)))
    q = pad(q, (0, max(-gap, 0)))
    both = s_tgt.ne(IGNORE) & t_tgt.ne(IGNORE)
    uld_sum = ((q - p).abs().sum(-1) * both).sum()
    return (0.5 * ce_sum + 0.5 * uld_sum) / n_student


def test_official_convention_switches_reproduce_the_dskd_repository_uld(batch):
    s_out, t_out = outputs(batch, seed=5)
    method = ULD(ce_weight=0.5, kd_weight=0.5, positions="shift", kd_normaliser="student")
    got = method(batch, s_out, t_out).loss
    torch.testing.assert_close(got.double(), official_uld(s_out.logits, t_out.logits, batch), rtol=1e-5, atol=1e-6)
    # on contiguous responses "shift" and "index" pair the same positions
    assert torch.equal(method.pair_index(batch), ULD(positions="index").pair_index(batch))
    holed = replace(batch, teacher_labels=batch.teacher_labels.clone())
    first = int(holed.teacher_mask[0].nonzero()[2])
    holed.teacher_labels[0, first + 1] = IGNORE  # an untrained teacher token inside the response
    shift, index = ULD(positions="shift").pair_index(holed), ULD(positions="index").pair_index(holed)
    assert not torch.equal(shift, index) and int((shift[0] == first).sum()) == 0


def test_float64_logits_and_plus_inf_input(batch):
    s_out, t_out = outputs(batch)
    s64 = SimpleNamespace(logits=s_out.logits.detach().double().requires_grad_())
    out = ULD()(batch, s64, SimpleNamespace(logits=t_out.logits.double()))
    assert out.loss.dtype == torch.float64 and out.diagnostics["token_kd"].values.dtype == torch.float64
    out.loss.backward()
    ref = ULD()(batch, s_out, t_out)
    assert float(out.terms["kd"]) == pytest.approx(float(ref.terms["kd"]), rel=1e-5)
    bad = t_out.logits.clone()
    bad[0, int(batch.teacher_mask[0].nonzero()[0]), 4] = float("inf")
    with pytest.raises(ValueError, match=r"teacher_logits contains \+inf"):
        ULD()(batch, s_out, SimpleNamespace(logits=bad))


def test_double_backward_is_a_clear_error(batch):
    s_out, t_out = outputs(batch)
    loss = ULD()(batch, s_out, t_out).loss
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(loss, s_out.logits, create_graph=True)
