"""CMA (DSKD with cross-model attention, docs/methods.md#cma) between a Llama student (Unigram tokenizer)
and a GPT-2 teacher (byte-level BPE tokenizer)."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdviz.methods import CMA, DSKD, IGNORE, KDCollator, KDOutput, Method, VanillaKD
from tests.kd_helpers import (
    all_tensors,
    bpe_tokenizer,
    pairs,
    recorded_scores,
    student_model,
    teacher_model,
    unigram_tokenizer,
)


def make(**switches) -> CMA:
    torch.manual_seed(3)
    student = student_model(len(unigram_tokenizer()))
    teacher = teacher_model(len(bpe_tokenizer()))
    return CMA(student, teacher, **switches)


@pytest.fixture(scope="module")
def collate() -> KDCollator:
    return KDCollator(unigram_tokenizer(), bpe_tokenizer())


@pytest.fixture(scope="module")
def batch(collate):
    return collate(pairs(3))


def test_shapes_rows_and_diagnostics(batch):
    m = make()
    out = m(batch)
    assert isinstance(out, KDOutput) and isinstance(m, Method)
    b, t_s = batch.student_input_ids.shape
    t_t = batch.teacher_input_ids.shape[1]
    assert t_s != t_t
    d = out.diagnostics
    t2s, s2t = d["t2s_weight"].weights, d["s2t_weight"].weights
    assert t2s.shape == (b, t_s, t_t) and s2t.shape == (b, t_s, t_t)  # one orientation: student rows
    assert (d["t2s_weight"].over, d["s2t_weight"].over) == ("teacher", "student")
    assert d["t2s_reference"].shape == (b, t_s, t_t) and d["token_kd"].values.shape == (b, t_s)
    assert d["token_s2t_kd"].values.shape == (b, t_t) and d["t2s_kept"].shape == (b, t_s)
    mask_s, mask_t = d["student_mask"], d["teacher_mask"]
    assert torch.equal(mask_s, batch.student_mask) and torch.equal(mask_t, batch.teacher_mask)
    rows = t2s[mask_s]
    assert torch.allclose(rows.sum(-1), torch.ones(len(rows)), atol=1e-6)
    assert float(t2s.masked_fill(mask_t[:, None, :], 0)[mask_s].abs().max()) == 0.0
    s2t_columns = s2t.transpose(1, 2)[mask_t]  # each teacher token's distribution over the student tokens
    assert torch.allclose(s2t_columns.sum(-1), torch.ones(len(s2t_columns)), atol=1e-6)
    assert not torch.allclose(s2t, t2s)
    assert torch.equal(d["student_target_ids"], batch.student_targets)
    for name in ("loss", "ce", "kd", "t2s_ce", "t2s_kd", "s2t_kd", "t2s_acc", "s2t_acc", "max_t2s_prob",
                 "kept_fraction"):
        assert out.terms[name].dim() == 0 and torch.isfinite(out.terms[name]), name
    assert not any(name.startswith("align") for name in out.terms)  # the recorder scores, once
    scores = recorded_scores(batch, out, "t2s_weight")
    assert all(math.isfinite(scores[k]) for k in ("argmax_overlap", "overlap_mass", "row_entropy"))
    assert out.terms["loss"].dtype == torch.float32
    assert scores["scored_rows"] > 0
    assert all(not v.requires_grad for v in all_tensors(d))
    assert {n for n, _ in m.named_parameters()} == {
        "t2s.weight", "t2s.bias", "s2t.weight", "s2t.bias", "query.weight", "query.bias"
    }


def fkl(p_logits: torch.Tensor, q_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(p/tau) || softmax(q/tau)) per row, written out."""
    logp, logq = F.log_softmax(p_logits / tau, -1), F.log_softmax(q_logits / tau, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.no_grad()
def reference_cma(m: CMA, batch, s_out, t_out, key_norm: str, value_target: str, acc_filter: bool) -> dict:
    """CMA recomputed example by example on the valid positions only, from the formulas of docs/methods.md;
    also the published code's summed ``s2t_kd`` and its ``s2t_acc`` (argmax against the teacher's label)."""
    e_s = m.student.get_input_embeddings().weight.detach()
    e_t = m.teacher.get_input_embeddings().weight.detach()
    w_s = m.student.get_output_embeddings().weight.detach()
    w_t = m.teacher.get_output_embeddings().weight.detach()
    lab_s, lab_t = batch.student_labels, batch.teacher_labels
    y_s = torch.cat([lab_s[:, 1:], torch.full_like(lab_s[:, :1], IGNORE)], 1)
    y_t = torch.cat([lab_t[:, 1:], torch.full_like(lab_t[:, :1], IGNORE)], 1)
    ok_s, ok_t = y_s >= 0, y_t >= 0
    x_t0 = torch.where(ok_t, batch.teacher_input_ids, 0)
    y_t0 = torch.where(ok_t, y_t, 0)
    key_all = torch.cat([e_t[x_t0], e_t[y_t0]], -1)
    h_t_all = t_out.hidden_states[-1]
    z_t = t_out.logits
    v_tok_all = torch.where(ok_t, y_t if value_target == "gold" else z_t.argmax(-1), 0)
    emb_v_all = e_t[v_tok_all]

    def std(z):
        return z[ok_t].std() if key_norm == "valid" else z.std()

    key_std, h_std, v_std = std(key_all), std(h_t_all), std(emb_v_all)
    tau = m.tau
    sums = dict(ce=0.0, t2s_ce=0.0, t2s_kd=0.0, s2t_kd=0.0, s2t_gold_hits=0.0, student_hits=0.0)
    n_s = int(ok_s.sum())
    n_t = int(ok_t.sum())
    for b in range(batch.batch_size):
        i_idx, j_idx = ok_s[b].nonzero().squeeze(1), ok_t[b].nonzero().squeeze(1)
        xs, ys = batch.student_input_ids[b, i_idx], y_s[b, i_idx]
        xt, yt = batch.teacher_input_ids[b, j_idx], y_t[b, j_idx]
        q = torch.cat([e_s[xs], e_s[ys]], -1) @ m.query.weight.T + m.query.bias
        k = torch.cat([e_t[xt], e_t[yt]], -1) / key_std
        a = q @ k.T / math.sqrt(2 * e_t.shape[1])
        v_t = (h_t_all[b, j_idx] / h_std + emb_v_all[b, j_idx] / v_std) @ m.t2s.weight.T + m.t2s.bias
        v_s = s_out.hidden_states[-1][b, i_idx] @ m.s2t.weight.T + m.s2t.bias
        t2s_logits = (a.softmax(-1) @ v_t) @ w_s.T
        s2t_logits = (a.T.softmax(-1) @ v_s) @ w_t.T
        z_s = s_out.logits[b, i_idx]
        sums["ce"] += F.cross_entropy(z_s, ys, reduction="sum")
        sums["t2s_ce"] += F.cross_entropy(t2s_logits, ys, reduction="sum")
        kept = t2s_logits.argmax(-1) == ys if acc_filter else torch.ones_like(ys, dtype=torch.bool)
        sums["t2s_kd"] += fkl(t2s_logits[kept], z_s[kept], tau).sum()
        sums["s2t_kd"] += fkl(z_t[b, j_idx], s2t_logits, tau).sum()
        sums["s2t_gold_hits"] += float((s2t_logits.argmax(-1) == yt).sum())
        sums["student_hits"] += float((z_s.argmax(-1) == ys).sum())
    out = {k: sums[k] / n_s for k in ("ce", "t2s_ce", "t2s_kd")}
    out["s2t_kd"] = sums["s2t_kd"] / n_t
    out["official_s2t_kd"] = sums["s2t_kd"] / n_s  # the published code: every sum over the student count
    out["s2t_gold_acc"] = sums["s2t_gold_hits"] / n_t
    out["student_acc"] = sums["student_hits"] / n_s
    out["loss"] = 0.5 * out["ce"] + 0.5 * (out["t2s_ce"] + out["t2s_kd"] + out["s2t_kd"])
    return out


@pytest.mark.parametrize(
    "key_norm,value_target,acc_filter",
    [("valid", "gold", False), ("global", "teacher_argmax", False), ("valid", "gold", True)],
)
def test_loss_equals_independent_recomputation(batch, key_norm, value_target, acc_filter):
    m = make(key_norm=key_norm, value_target=value_target, acc_filter=acc_filter)
    if acc_filter:  # make the filter keep a few tokens: point t2s at the student's LM head of the labels
        with torch.no_grad():
            m.t2s.bias.copy_(m.student.get_output_embeddings().weight[batch.student_targets[0, -6]] * 50)
    s_out = m.student(batch.student_input_ids, attention_mask=batch.student_attention_mask, output_hidden_states=True)
    t_out = m.teacher(batch.teacher_input_ids, attention_mask=batch.teacher_attention_mask, output_hidden_states=True)
    out = m(batch, student_outputs=s_out, teacher_outputs=t_out)
    ref = reference_cma(m, batch, s_out, t_out, key_norm, value_target, acc_filter)
    official_s2t = ref.pop("official_s2t_kd")
    for name, value in ref.items():
        assert float(out.terms[name]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), name
    m.s2t_normaliser = "student"
    official = m(batch, student_outputs=s_out, teacher_outputs=t_out).terms
    assert float(official["s2t_kd"]) == pytest.approx(float(official_s2t), rel=1e-4)
    assert float(official["s2t_kd"]) != pytest.approx(float(out.terms["s2t_kd"]), rel=1e-3)  # N_t != N_s here
    m.s2t_normaliser = "teacher"
    if acc_filter:
        assert 0 < float(out.terms["kept_fraction"]) < 1 and float(out.terms["t2s_kd"]) > 0
    # running the models itself gives the same loss as the precomputed outputs
    assert m(batch).loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


def nonzero_grads(term: torch.Tensor, params: list[torch.nn.Parameter]) -> bool:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_gradient_routing(batch):
    m = make(acc_filter=False)
    out = m(batch)
    head = [m.student.get_output_embeddings().weight]
    body = [p for p in m.student.parameters() if p is not head[0]]
    groups = {"head": head, "body": body, "t2s": list(m.t2s.parameters()), "s2t": list(m.s2t.parameters()),
              "query": list(m.query.parameters())}
    expected = {
        "t2s_ce": {"t2s", "query"},  # the student (head included) gets nothing from the t2s projection
        "t2s_kd": {"head", "body"},  # t2s_logits are a detached target
        "s2t_kd": {"s2t", "query", "body"},  # the teacher head is frozen; the student head is not used
        "ce": {"head", "body"},
    }
    for term, receivers in expected.items():
        got = {g for g, params in groups.items() if nonzero_grads(out.parts[term], params)}
        assert got == receivers, term
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())


def test_switches(batch):
    base = make()(batch)
    t = base.terms
    # the accuracy filter: kept = response & (argmax t2s_logits == label)
    d = base.diagnostics
    kept = d["student_mask"] & (d["t2s_logits"].logits.argmax(-1) == d["student_target_ids"])
    assert torch.equal(d["t2s_kept"], kept)
    assert float(t["kept_fraction"]) == pytest.approx(float(kept.sum() / d["student_mask"].sum()))
    unfiltered = make(acc_filter=False)(batch)
    assert float(unfiltered.terms["kept_fraction"]) == 1.0
    assert torch.equal(unfiltered.diagnostics["t2s_kept"], d["student_mask"])
    assert float(unfiltered.terms["t2s_kd"]) > float(t["t2s_kd"])
    # the divergence D changes only the student-space KD; teacher_space_divergence only the teacher-space KD
    rkl = make(divergence="rkl", acc_filter=False)(batch).terms
    assert float(rkl["t2s_kd"]) != pytest.approx(float(unfiltered.terms["t2s_kd"]))
    assert float(rkl["s2t_kd"]) == pytest.approx(float(unfiltered.terms["s2t_kd"]))
    ts = make(teacher_space_divergence="rkl")(batch).terms
    assert float(ts["s2t_kd"]) != pytest.approx(float(t["s2t_kd"]))
    assert float(ts["t2s_ce"]) == pytest.approx(float(t["t2s_ce"]))
    akl = make(divergence="akl", divergence_params={"mu": 0.3}, acc_filter=False)(batch).terms
    assert torch.isfinite(akl["t2s_kd"])
    # temperature: KD terms change, CE terms do not
    hot = make(tau=1.0)(batch).terms
    assert float(hot["ce"]) == pytest.approx(float(t["ce"]))
    assert float(hot["t2s_ce"]) == pytest.approx(float(t["t2s_ce"]))
    assert float(hot["s2t_kd"]) != pytest.approx(float(t["s2t_kd"]))
    sq = make(tau_squared=True)(batch).terms
    assert float(sq["s2t_kd"]) == pytest.approx(4 * float(t["s2t_kd"]), rel=1e-5)
    # weights
    w = make(ce_weight=0.2, kd_weight=1.5)(batch).terms
    assert float(w["loss"]) == pytest.approx(0.2 * float(w["ce"]) + 1.5 * float(w["kd"]), rel=1e-6)
    assert float(t["kd"]) == pytest.approx(float(t["t2s_ce"] + t["t2s_kd"] + t["s2t_kd"]), rel=1e-6)
    # value_target: same attention, different values
    arg = make(value_target="teacher_argmax")(batch).diagnostics
    assert torch.allclose(arg["t2s_weight"].weights, d["t2s_weight"].weights)
    assert not torch.allclose(arg["t2s_logits"].logits, d["t2s_logits"].logits)
    for bad in ({"key_norm": "std"}, {"value_target": "label"}, {"mask_value": float("-inf")}, {"divergence": "kl"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make(**bad)


def pad_teacher(batch, extra: int):
    """The same batch with ``extra`` more padding columns on the teacher side."""
    b = batch.batch_size

    def grow(x, value):
        return torch.cat([x, torch.full((b, extra, *x.shape[2:]), value, dtype=x.dtype)], 1)

    return replace(
        batch,
        teacher_input_ids=grow(batch.teacher_input_ids, bpe_tokenizer().pad_token_id),
        teacher_attention_mask=grow(batch.teacher_attention_mask, 0),
        teacher_labels=grow(batch.teacher_labels, IGNORE),
        teacher_offsets=grow(batch.teacher_offsets, 0),
        alignment=torch.cat([batch.alignment, torch.zeros(b, batch.alignment.shape[1], extra, dtype=torch.bool)], 2),
        same_tokenizer=False,
    )


def test_key_norm_valid_ignores_padding_global_does_not(batch):
    padded = pad_teacher(batch, 7)
    t_t = batch.teacher_input_ids.shape[1]
    for key_norm, invariant in (("valid", True), ("global", False)):
        m = make(key_norm=key_norm)
        w0, w1 = m(batch).diagnostics["t2s_weight"].weights, m(padded).diagnostics["t2s_weight"].weights[..., :t_t]
        mask = batch.student_mask
        assert torch.allclose(w0[mask], w1[mask], atol=1e-5) == invariant, key_norm


def test_all_masked_batch_and_batch_of_one(collate):
    empty = KDCollator(unigram_tokenizer(), bpe_tokenizer(), add_eos=False)([("Q: who moves?\nA:", "")] * 2)
    m = make()
    out = m(empty)
    assert out.loss.item() == 0.0
    out.loss.backward()
    for p in [*m.parameters(), *m.student.parameters()]:
        assert p.grad is None or (torch.isfinite(p.grad).all() and float(p.grad.abs().max()) == 0.0)
    # nothing to score is no numerical fault: the scores are absent (not NaN), scored_rows says why
    scores = recorded_scores(empty, out, "t2s_weight")
    assert scores["scored_rows"] == 0 and "argmax_overlap" not in scores
    assert all(torch.isfinite(v) for v in out.terms.values())
    one = m(collate(pairs(1)))
    assert torch.isfinite(one.loss) and one.diagnostics["t2s_weight"].weights.shape[0] == 1
    one.loss.backward()


def test_clear_errors(batch, collate):
    m = make()
    with pytest.raises(ValueError, match="on cpu but the batch is on meta"):
        m(batch.to("meta"))
    s_out = m.student(batch.student_input_ids, output_hidden_states=True)
    t_out = m.teacher(batch.teacher_input_ids, output_hidden_states=True)
    with pytest.raises(ValueError, match=r"teacher_outputs.logits must be \[B, T, V\]"):
        m(batch, s_out, SimpleNamespace(logits=t_out.logits[:, :-1], hidden_states=t_out.hidden_states))
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        m(batch, s_out, SimpleNamespace(logits=t_out.logits, hidden_states=None))
    with pytest.raises(TypeError, match="floating point"):
        m(batch, SimpleNamespace(logits=s_out.logits.long(), hidden_states=s_out.hidden_states), t_out)
    with pytest.raises(TypeError, match="student must be a Hugging Face causal LM"):
        CMA(object(), m.teacher)
    with pytest.raises(ValueError, match="use kdviz.methods.CMA"):
        DSKD(m.student, m.teacher)(batch)
    with pytest.raises(ValueError, match="use kdviz.methods.CMA"):
        VanillaKD(m.student, m.teacher)(batch)
    for side in ("student", "teacher"):
        bad = replace(batch, **{f"{side}_labels": getattr(batch, f"{side}_labels").clone()})
        labels = getattr(bad, f"{side}_labels")
        labels[0, int(labels[0].ne(IGNORE).nonzero()[-1])] = 10_000
        with pytest.raises(ValueError, match=rf"{side}_targets must be token ids in \[0, "):
            m(bad, s_out, t_out)
    with pytest.raises(ValueError, match="s2t_normaliser must be one of"):
        make(s2t_normaliser="batch")
    # a bf16 teacher is not an error: everything is computed in float32
    m.teacher.to(torch.bfloat16)
    out = m(batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_training_improves_alignment(collate, record_property):
    """A brief projector warm-up (60 steps, as DSKD's projector pre-training stage) on the tiny models moves
    the attention towards the character-overlap ground truth on held-out data."""
    torch.manual_seed(0)
    m = make()
    m.student.requires_grad_(False)
    train = [collate(pairs(8, seed=100 + k)) for k in range(8)]
    held = collate(pairs(16, seed=7))

    def scores():
        with torch.no_grad():
            scores = recorded_scores(held, m(held), "t2s_weight")
        return {k: scores[k] for k in ("argmax_overlap", "overlap_mass", "row_entropy")}

    before = scores()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    for step in range(60):
        out = m(train[step % len(train)])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = scores()
    record_property("cma_alignment_before", before)
    record_property("cma_alignment_after", after)
    print(f"\nCMA alignment on held-out pairs, untrained: {before}\n                           trained: {after}")
    assert after["overlap_mass"] > before["overlap_mass"] + 0.01
    assert after["argmax_overlap"] > before["argmax_overlap"]
    assert after["row_entropy"] < before["row_entropy"] - 0.3
