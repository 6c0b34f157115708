"""Head/tail statistics: hand-computed cases, ties, the top-k search and the float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import kdviz
from kdviz.headtail import head_mask
from tests import reference
from tests.test_divergences import logit_pairs


def logits_of(*probs):
    return torch.tensor([list(p) for p in probs], dtype=torch.float64).log()


def head_of(p, mu, crossing_in_head=False):
    return head_mask(torch.tensor([p], dtype=torch.float64), mu, crossing_in_head)[0].nonzero().flatten().tolist()


def test_argmax_above_mu_is_the_whole_head():
    assert head_of([0.2, 0.6, 0.2], 0.5) == [1]
    assert head_of([0.2, 0.6, 0.2], 0.5, crossing_in_head=True) == [1]


def test_crossing_token_goes_to_the_tail_unless_switched():
    p = [0.05, 0.3, 0.25, 0.4]  # sorted: 0.4 (3), 0.3 (1), 0.25 (2): c = 0.4, 0.7, 0.95
    assert head_of(p, 0.5) == [3]
    assert head_of(p, 0.5, crossing_in_head=True) == [1, 3]
    assert head_of(p, 0.75) == [1, 3]
    assert head_of(p, 0.75, crossing_in_head=True) == [1, 2, 3]


def test_ties_at_the_boundary_go_to_the_lower_id():
    p = [0.1, 0.3, 0.15, 0.15, 0.3]  # sorted: 0.3 (1), 0.3 (4), 0.15 (2), 0.15 (3), 0.1 (0)
    assert head_of(p, 0.5) == [1]
    assert head_of(p, 0.65) == [1, 4]
    assert head_of(p, 0.65, crossing_in_head=True) == [1, 2, 4]


def test_masses_follow_the_tied_ids_that_are_in_the_head():
    t = logits_of([0.1, 0.3, 0.15, 0.15, 0.3])  # with the crossing: head {1, 4} and the lower tied id, 2
    s = logits_of([0.1, 0.1, 0.5, 0.2, 0.1])
    ht = kdviz.head_tail(s, t, mu=0.65, crossing_in_head=True)
    assert ht.head_size.item() == 3
    assert ht.q_head.item() == pytest.approx(0.7) and ht.q_tail.item() == pytest.approx(0.3)
    assert ht.p_head.item() == pytest.approx(0.75) and ht.p_tail.item() == pytest.approx(0.25)
    assert ht.g_head.item() == pytest.approx(0.2 + 0.35 + 0.2) and ht.g_tail.item() == pytest.approx(0.05)


def test_hand_computed_statistics():
    t = logits_of([0.05, 0.3, 0.25, 0.4])
    s = logits_of([0.25, 0.25, 0.25, 0.25])
    ht = kdviz.head_tail(s, t, mu=0.75)  # head {1, 3}
    assert ht.head_size.item() == 2
    assert ht.p_head.item() == pytest.approx(0.7) and ht.q_head.item() == pytest.approx(0.5)
    assert ht.p_tail.item() == pytest.approx(0.3) and ht.q_tail.item() == pytest.approx(0.5)
    assert ht.g_head.item() == pytest.approx(0.05 + 0.15)
    assert ht.g_tail.item() == pytest.approx(0.2 + 0.0)
    assert ht.d_head.item() == pytest.approx(0.2)
    assert ht.w_head.item() == pytest.approx(0.5) and ht.weight_fallback.item() == 0.0
    p, q = np.array([0.05, 0.3, 0.25, 0.4]), np.full(4, 0.25)
    assert ht.fkl.item() == pytest.approx((p * np.log(p / q)).sum())
    assert ht.rkl.item() == pytest.approx((q * np.log(q / p)).sum())
    assert ht.entropy_p.item() == pytest.approx(-(p * np.log(p)).sum())
    assert ht.entropy_q.item() == pytest.approx(math.log(4))
    assert ht.argmax_agree.item() == 0.0


@settings(max_examples=40, deadline=None)
@given(pair=logit_pairs(max_v=60))
def test_matches_reference_and_masses_sum_to_one(pair):
    s, t, mask = pair
    ht = kdviz.head_tail(s, t, mask, mu=0.6)
    p, q = reference.distributions(s[mask].double().numpy(), t[mask].double().numpy(), 1.0)
    head = reference.head_sets(p, 0.6)
    w, _ = reference.akl_weights(p, q, 0.6)
    valid = {k: v[mask].double().numpy() for k, v in ht.as_dict().items()}
    np.testing.assert_array_equal(valid["head_size"], head.sum(-1))
    np.testing.assert_allclose(valid["p_head"], (p * head).sum(-1), atol=1e-6)
    np.testing.assert_allclose(valid["q_head"], (q * head).sum(-1), atol=1e-6)
    # w_head = g_head / g_all is ill-conditioned when the gaps are small: float32 error ~ eps / g_all
    g_all = np.abs(p - q).sum(-1)
    assert np.all(np.abs(valid["w_head"] - w) <= 1e-5 + 2e-7 / np.maximum(g_all, 1e-12))
    np.testing.assert_allclose(valid["p_head"] + valid["p_tail"], 1.0, atol=1e-6)
    np.testing.assert_allclose(valid["q_head"] + valid["q_tail"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(valid["argmax_agree"], p.argmax(-1) == q.argmax(-1))
    for name, value in ht.as_dict().items():
        assert torch.isnan(value[~mask]).all(), name


def test_large_vocabulary_small_head_does_not_sort(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(6, 50_000, generator=gen)
    t[:, :3] += 20.0  # a peaked teacher: the head is a handful of tokens
    s = torch.randn(6, 50_000, generator=gen)

    def no_sort(*args, **kwargs):
        raise AssertionError("the full vocabulary was sorted")

    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    ht = kdviz.head_tail(s, t)
    assert torch.all(ht.head_size <= 3)


def test_flat_teacher_falls_back_to_a_full_sort():
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(3, 3000, generator=gen) * 0.01  # head of ~1500 tokens: beyond the top-k rounds
    s = torch.randn(3, 3000, generator=gen)
    ht = kdviz.head_tail(s, t, mu=0.5)
    p, _ = reference.distributions(s.double().numpy(), t.double().numpy(), 1.0)
    np.testing.assert_array_equal(ht.head_size.numpy(), reference.head_sets(p, 0.5).sum(-1))
    assert ht.head_size.min() > 1000


def test_no_sort_at_most_two_topks_per_chunk_and_the_same_heads_in_any_chunking(monkeypatch):
    """The head is found with a ``topk`` per chunk of rows (its ``k`` guessed from the previous chunk's heads,
    else from the probability histogram; rows the guess leaves short get one more ``topk``), never a sort of
    the vocabulary, on a teacher with a head of hundreds of tokens; chunking the rows changes nothing."""
    import kdviz.headtail as headtail

    gen = torch.Generator().manual_seed(2)
    t = torch.randn(2, 9, 20_000, generator=gen) * 2
    t[1] *= 0.5  # flatter in the second sequence: the guess from a sharper neighbour falls short there
    s = torch.randn(2, 9, 20_000, generator=gen)
    p, _ = reference.distributions(s.double().numpy().reshape(18, -1), t.double().numpy().reshape(18, -1), 1.0)
    want = reference.head_sets(p, 0.5).sum(-1)
    calls = {"topk": 0, "sort": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _f=original, _n=name, **k: calls.__setitem__(_n, calls[_n] + 1) or _f(self, *a, **k),
        )
    retried = 0
    for rows in (1, 5, 18):
        monkeypatch.setattr(headtail, "rows_per_chunk", lambda *_, rows=rows: rows)
        calls.update(topk=0, sort=0)
        ht = kdviz.head_tail(s, t, mu=0.5)
        np.testing.assert_array_equal(ht.head_size.reshape(-1).numpy(), want)
        chunks = math.ceil(18 / rows)
        assert calls["sort"] == 0 and chunks <= calls["topk"] <= 2 * chunks
        retried += calls["topk"] - chunks
    assert retried > 0  # the retry path ran
    assert want.min() > 16  # beyond a small first topk
    assert want[9:].min() > 1.25 * want[:9].max()


def test_tau_and_errors():
    s, t = torch.randn(2, 10), torch.randn(2, 10) * 5
    hot, cold = kdviz.head_tail(s, t, tau=4.0), kdviz.head_tail(s, t, tau=1.0)
    assert torch.all(hot.head_size >= cold.head_size)  # a higher temperature flattens the teacher
    with pytest.raises(ValueError, match="mu must be a number strictly between 0 and 1"):
        kdviz.head_tail(s, t, mu=0.0)
    with pytest.raises(ValueError, match="tau must be a positive number"):
        kdviz.head_tail(s, t, tau=-1)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        kdviz.head_tail(s, torch.randn(2, 11))
