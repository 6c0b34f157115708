"""MinED (docs/methods.md#mined): a hand-made alignment with a hand-computed target, a real tokenizer pair
(vocabulary map through the cache), empty sides and bad arguments."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein

from kdviz.align.vocab_map import VocabMap, vocab_map
from kdviz.methods import IGNORE, KDBatch, KDCollator, MinED
from tests.kd_helpers import (
    all_tensors,
    bpe_tokenizer,
    pairs,
    recorded_scores,
    student_model,
    teacher_model,
    unigram_tokenizer,
)

STUDENT_VOCAB = ["<pad>", "<s>", "</s>", "▁Q", "▁The", "▁ca", "t", "▁sleeps"]
TEACHER_VOCAB = ["<eos>", "Q", "ĠThe", "Ġcat", "Ġsleeps", "Ġthe"]
STUDENT_TOKENS = ["<s>", "▁Q", "▁The", "▁ca", "t", "▁sleeps", "</s>"]
TEACHER_TOKENS = ["Q", "ĠThe", "Ġcat", "Ġsleeps", "<eos>"]


def hand_batch() -> KDBatch:
    """One example: prompt "Q", response "The cat sleeps" (+ EOS), tokenised by hand."""
    s_ids = torch.tensor([[STUDENT_VOCAB.index(t) for t in STUDENT_TOKENS]])
    t_ids = torch.tensor([[TEACHER_VOCAB.index(t) for t in TEACHER_TOKENS]])
    s_labels, t_labels = s_ids.clone(), t_ids.clone()
    s_labels[0, :2], t_labels[0, :1] = IGNORE, IGNORE
    return KDBatch(
        s_ids, torch.ones_like(s_ids), s_labels, torch.zeros(1, 7, 2, dtype=torch.long),
        t_ids, torch.ones_like(t_ids), t_labels, torch.zeros(1, 5, 2, dtype=torch.long),
        alignment=torch.zeros(1, 7, 5, dtype=torch.bool),
        student_tokens=[STUDENT_TOKENS], teacher_tokens=[TEACHER_TOKENS],
    )


def hand_map() -> VocabMap:
    # <eos> -> </s>, Q -> ▁Q, ĠThe -> ▁The, Ġcat -> ▁ca (not exact), Ġsleeps -> ▁sleeps, Ġthe -> ▁The (collision)
    ids = np.array([2, 3, 4, 5, 7, 4])
    return VocabMap(ids, np.array([False, True, True, False, True, False]), "s", "t")


def test_hand_made_alignment_and_target():
    batch = hand_batch()
    torch.manual_seed(0)
    z_s = torch.randn(1, 7, 8, requires_grad=True)
    z_t = torch.randn(1, 5, 6)
    z_t[0, 0] = torch.tensor([0.0, -5.0, 3.0, -5.0, 1.0, 2.0])  # top 3: ĠThe (3), Ġthe (2), Ġsleeps (1)
    method = MinED(vocab_map=hand_map(), top_k=3)
    out = method(batch, SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t))
    # predicted tokens: student ▁The ▁ca t ▁sleeps </s> (positions 1..5); teacher ĠThe Ġcat Ġsleeps <eos> (0..3)
    path = out.diagnostics["dtw_path"].weights[0].nonzero().tolist()
    assert path == [[1, 0], [2, 1], [3, 1], [4, 2], [5, 3]]
    assert out.diagnostics["aligned_teacher_position"][0].tolist() == [-1, 0, -1, -1, 2, 3, -1]
    assert float(out.terms["one_to_one_share"]) == pytest.approx(3 / 5)
    assert float(out.terms["vocab_exact_share"]) == pytest.approx(3 / 6)

    want = torch.full((7, 8), -1e5)
    want[1, 4], want[1, 7] = 3.0, 1.0  # ĠThe and Ġthe collide on ▁The: the max
    for s_pos, t_pos in ((4, 2), (5, 3)):
        for v in z_t[0, t_pos].topk(3).indices.tolist():
            sid = int(hand_map().ids[v])
            want[s_pos, sid] = max(float(want[s_pos, sid]), float(z_t[0, t_pos, v]))
    want[2, 5], want[3, 6] = 0.0, 0.0  # many-to-one positions: one-hot on the gold token
    torch.testing.assert_close(out.diagnostics["mapped_teacher_logits"][0, 1:6], want[1:6])

    logp = F.log_softmax(want[1:6] / 2.0, -1)
    logq = F.log_softmax(z_s[0, 1:6].detach() / 2.0, -1)
    fkl = (logp.exp() * (logp - logq)).sum(-1)
    assert float(out.terms["kd"]) == pytest.approx(float(fkl.mean()), rel=1e-5)
    ce = F.cross_entropy(z_s[0, 1:6].detach(), torch.tensor([4, 5, 6, 7, 2]))
    assert float(out.terms["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(out.terms["loss"]) == pytest.approx(0.5 * float(ce) + 0.5 * float(fkl.mean()), rel=1e-5)
    # moved ids: 3 teacher ids at each of 3 positions, exact for ĠThe, Ġsleeps, Q, not Ġthe, Ġcat, <eos>
    moved = [z_t[0, j].topk(3).indices.tolist() for j in (0, 2, 3)]
    exact_share = np.mean([hand_map().exact[v] for ids in moved for v in ids])
    assert float(out.terms["moved_exact_share"]) == pytest.approx(exact_share)
    out.loss.backward()
    assert torch.isfinite(z_s.grad).all() and z_s.grad[0, 0].abs().sum() == 0


@pytest.fixture(scope="module")
def batch():
    return KDCollator(unigram_tokenizer(), bpe_tokenizer())(pairs(3))


def random_outputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t_s = batch.student_input_ids.shape
    z_s = torch.randn(b, t_s, len(unigram_tokenizer()), generator=g).requires_grad_()
    z_t = torch.randn(b, batch.teacher_input_ids.shape[1], len(bpe_tokenizer()), generator=g) * 3
    return SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t)


def test_real_tokenizers_and_the_cache(batch, tmp_path):
    method = MinED(student_tokenizer=unigram_tokenizer(), teacher_tokenizer=bpe_tokenizer(), cache_dir=tmp_path)
    assert not method.map.from_cache and method.map.path.parent == tmp_path / "vocab_maps"
    again = MinED(student_tokenizer=unigram_tokenizer(), teacher_tokenizer=bpe_tokenizer(), cache_dir=tmp_path)
    assert again.map.from_cache and np.array_equal(again.map.ids, method.map.ids)
    s_out, t_out = random_outputs(batch)
    out = method(batch, s_out, t_out)
    d = out.diagnostics
    mask_s, mask_t = batch.student_mask, batch.teacher_mask
    path = d["dtw_path"]
    assert path.weights.shape == (*mask_s.shape, mask_t.shape[1]) and (path.kind, path.reference) == ("hard", "target")
    assert not path.weights[~mask_s].any() and not path.weights.transpose(1, 2)[~mask_t].any()
    aligned = d["one_to_one"]
    assert torch.equal(aligned, d["aligned_teacher_position"] >= 0) and not aligned[~mask_s].any()
    assert float(out.terms["one_to_one_share"]) == pytest.approx(float(aligned.sum() / mask_s.sum()))
    assert 0 < float(out.terms["one_to_one_share"]) < 1
    assert float(out.terms["vocab_exact_share"]) == pytest.approx(method.map.exact_share)
    target = d["mapped_teacher_logits"]
    kept = (target > -1e5).sum(-1)
    assert ((kept[aligned] >= 1) & (kept[aligned] <= 10)).all()
    gold = batch.student_targets
    rest = mask_s & ~aligned
    assert (kept[rest] == 1).all() and (target[rest].argmax(-1) == gold[rest]).all()
    for name in ("loss", "ce", "kd"):
        assert torch.isfinite(out.terms[name]), name
    scores = recorded_scores(batch, out, "dtw_path")
    assert all(np.isfinite(scores[k]) for k in ("argmax_overlap", "overlap_mass"))
    assert all(not v.requires_grad for v in all_tensors(d))
    out.loss.backward()
    assert torch.isfinite(s_out.logits.grad).all()


def test_empty_response_on_one_side_gives_zero_kd(batch, tmp_path):
    method = MinED(vocab_map=vocab_map(unigram_tokenizer(), bpe_tokenizer(), cache_dir=tmp_path))
    for side in ("teacher", "student"):
        empty = replace(batch, **{f"{side}_labels": torch.full_like(getattr(batch, f"{side}_labels"), IGNORE)})
        s_out, t_out = random_outputs(empty)
        out = method(empty, s_out, t_out)
        assert float(out.terms["kd"]) == 0.0 and torch.isfinite(out.loss), side
        out.loss.backward()
        assert torch.isfinite(s_out.logits.grad).all()
    one = replace(batch, teacher_labels=batch.teacher_labels.clone())
    one.teacher_labels[0] = IGNORE  # only the first example loses its teacher response
    out = method(one, *random_outputs(one))
    assert float(out.terms["kd"]) > 0 and float(out.diagnostics["token_kd"].values[0].abs().sum()) == 0.0


def test_bad_arguments(batch, tmp_path):
    with pytest.raises(ValueError, match="needs vocab_map"):
        MinED(student_tokenizer=unigram_tokenizer())
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        MinED(vocab_map=hand_map(), top_k=0)
    method = MinED(vocab_map=hand_map(), top_k=7)
    batch_h = hand_batch()
    with pytest.raises(ValueError, match=r"top_k=7 is larger than the teacher vocabulary \(V_t=6\)"):
        method(batch_h, SimpleNamespace(logits=torch.randn(1, 7, 8)), SimpleNamespace(logits=torch.randn(1, 5, 6)))
    method = MinED(vocab_map=hand_map(), top_k=3)
    z_s, z_t = torch.randn(1, 7, 8), torch.randn(1, 5, 6)
    bad = replace(batch_h, student_labels=batch_h.student_labels.clone())
    bad.student_labels[0, 4] = 99
    with pytest.raises(ValueError, match=r"student_targets must be token ids in \[0, 8\).*got 99 at index \(0, 3\)"):
        method(bad, SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t))
    z_t[0, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_logits contains NaN at index \(0, 2, 5\)"):
        method(batch_h, SimpleNamespace(logits=z_s), SimpleNamespace(logits=z_t))


def test_runs_the_models(batch, tmp_path):
    student, teacher = student_model(len(unigram_tokenizer())), teacher_model(len(bpe_tokenizer()))
    method = MinED(student, teacher, student_tokenizer=unigram_tokenizer(), teacher_tokenizer=bpe_tokenizer(),
                   cache_dir=tmp_path)
    out = method(batch)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def official_dtw(series_1, series_2, dist):
    """The DSKD repository's ``dtw`` (after simpledtw): the mapping of each token of ``series_2``."""
    matrix = np.zeros((len(series_1) + 1, len(series_2) + 1))
    matrix[0, :] = np.inf
    matrix[:, 0] = np.inf
    matrix[0, 0] = 0
    for i, a in enumerate(series_1):
        for j, b in enumerate(series_2):
            matrix[i + 1, j + 1] = dist(a, b) + min(matrix[i, j + 1], matrix[i + 1, j], matrix[i, j])
    matrix = matrix[1:, 1:]
    i, j = matrix.shape[0] - 1, matrix.shape[1] - 1
    mappings_2 = [[] for _ in range(matrix.shape[1])]
    while i > 0 or j > 0:
        mappings_2[j].append(i)
        diag = matrix[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        up = matrix[i - 1, j] if i > 0 else np.inf
        left = matrix[i, j - 1] if j > 0 else np.inf
        move = np.argmin([diag, up, left])
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    mappings_2[0].append(0)
    return [m[::-1] for m in mappings_2]


def official_mined_kd(batch, z_s, z_t, tea2stu, tau):
    """The DSKD repository's ``MinEditDisForwardKLD`` KD term (summed FKL / student tokens), restated."""
    stu2tea = {}
    for tea_id, stu_id in enumerate(tea2stu.tolist()):
        stu2tea.setdefault(stu_id, []).append(tea_id)
    stu_keys = torch.tensor(list(stu2tea))
    tea_first = torch.tensor([ids[0] for ids in stu2tea.values()])
    total, count = 0.0, 0
    for b in range(batch.batch_size):
        s_pos = batch.student_mask[b].nonzero().flatten()
        t_pos = batch.teacher_mask[b].nonzero().flatten()
        s_tokens = [batch.student_tokens[b][i] for i in s_pos]
        t_tokens = [batch.teacher_tokens[b][i] for i in t_pos]
        mapping = official_dtw(t_tokens, s_tokens, lambda a, s: Levenshtein.distance(a.replace("Ġ", ""),
                                                                                       s.replace("▁", "")))
        ok = torch.tensor([len(m) == 1 for m in mapping])
        partner = torch.tensor([m[0] if len(m) == 1 else 0 for m in mapping])
        s_ids, t_ids = batch.student_input_ids[b, s_pos], batch.teacher_input_ids[b, t_pos]
        ok &= s_ids.eq(tea2stu[t_ids[partner]])
        rows = z_t[b, t_pos][partner][:, tea_first.view(-1)].view(-1, len(tea_first), 1).max(-1)[0]
        moved = torch.full((len(s_pos), z_s.shape[-1]), -100000.0)
        moved[:, stu_keys] = rows
        ok &= moved.max(-1)[0].ne(-100000)
        one_hot = F.one_hot(batch.student_targets[b, s_pos], z_s.shape[-1])
        one_hot = (1 - one_hot) * (-100000) + one_hot * 100
        target = torch.where(ok[:, None], moved, one_hot.float())
        p = (target / tau).log_softmax(-1)
        q = (z_s[b, s_pos].detach() / tau).log_softmax(-1)
        total += float((p.exp() * (p - q)).sum())
        count += len(s_pos)
    return total / count


def test_reference_mode_is_the_dskd_repository_mined(batch, tmp_path):
    cases = [(hand_batch(), hand_map()),
             (batch, vocab_map(unigram_tokenizer(), bpe_tokenizer(), cache_dir=tmp_path))]
    for case, vmap in cases:
        g = torch.Generator().manual_seed(0)
        v_s = 8 if case is cases[0][0] else len(unigram_tokenizer())
        v_t = len(vmap)
        z_s = torch.randn(*case.student_input_ids.shape, v_s, generator=g) * 3
        z_t = torch.randn(*case.teacher_input_ids.shape, v_t, generator=g) * 3
        out = MinED(vocab_map=vmap, mode="reference", top_k=3)(case, SimpleNamespace(logits=z_s),
                                                               SimpleNamespace(logits=z_t))
        want = official_mined_kd(case, z_s, z_t, torch.as_tensor(vmap.ids), 2.0)
        assert float(out.terms["kd"]) == pytest.approx(want, rel=1e-5)
        assert torch.isfinite(out.loss)
    # the published DTW aligns the tokens read at the response positions: scored against their ground truth
    path = out.diagnostics["dtw_path"]
    assert path.reference == "input"
    from kdviz.align import alignment_scores

    reference = batch.alignment & batch.teacher_mask[:, None, :]
    want = alignment_scores(path.weights.float(), reference, batch.student_mask)
    got = recorded_scores(batch, out, "dtw_path")
    assert got["overlap_mass"] == pytest.approx(float(want["overlap_mass"]), rel=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        MinED(vocab_map=hand_map(), mode="official")


def test_the_dtw_path_is_recorded_as_an_alignment(batch, tmp_path):
    """MinED's token alignment reaches the run store like CMA's attention: the dashboard's Alignment tab
    shows it against the character-overlap ground truth."""
    from kdviz.record import Recorder, open_run
    from kdviz.viz import dashboard

    method = MinED(student_model(len(unigram_tokenizer())), teacher_model(len(bpe_tokenizer())),
                   student_tokenizer=unigram_tokenizer(), teacher_tokenizer=bpe_tokenizer(), cache_dir=tmp_path)
    out = method(batch)
    with Recorder(tmp_path / "run", every=1, samples=1) as rec:
        rec.log(0, batch, out)
    run = open_run(tmp_path / "run")
    path = run.matrix("dtw_path", step=0, sample=0)
    rows, cols = path.info["rows"], path.info["cols"]
    expected = out.diagnostics["dtw_path"].weights[0][rows][:, cols].float().numpy()
    np.testing.assert_array_equal(path.values, expected)
    assert path.reference is not None and path.values.sum() >= len(rows)  # every student row is on the path
    d = dashboard(run)
    assert "dtw_path" in d.alignment_name.options
