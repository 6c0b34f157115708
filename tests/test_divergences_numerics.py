"""The numerical holes closed in issue 15: filtered teachers, huge finite logits, alpha-beta near its limits,
the option checks and double backward through the chunked engine."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdviz
from kdviz.divergences import divergence
from tests import reference
from tests.test_divergences import NAMES


def filtered_teacher(seed=0, v=12, k=4, dtype=torch.float64):
    """A student over the whole vocabulary and a top-k teacher (every other logit -inf)."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(3, v, generator=gen, dtype=dtype) * 2
    t = torch.randn(3, v, generator=gen, dtype=dtype) * 2
    top = t.topk(k, -1).indices
    t = torch.full_like(t, -math.inf).scatter(-1, top, t.gather(-1, top))
    return s, t


def finite_against_a_filtered_teacher(name: str) -> bool:
    """Whether the true divergence (the float64 reference, default parameters) is finite against a top-k teacher."""
    s, t = filtered_teacher()
    return bool(np.isfinite(reference.divergence(name, s.numpy(), t.numpy(), 1.0, "full")).all())


FINITE_AGAINST_FILTERED_TEACHER = [n for n in NAMES if finite_against_a_filtered_teacher(n)]
INFINITE_AGAINST_FILTERED_TEACHER = [n for n in NAMES if n not in FINITE_AGAINST_FILTERED_TEACHER]


def test_the_registry_has_divergences_of_both_kinds_against_a_filtered_teacher():
    assert {"fkl", "tvd"} <= set(FINITE_AGAINST_FILTERED_TEACHER) and "rkl" in INFINITE_AGAINST_FILTERED_TEACHER


def test_fkl_against_a_top_k_teacher_is_the_true_kl_and_penalises_mass_outside_the_support():
    s, t = filtered_teacher()
    s = s.requires_grad_()
    p = torch.softmax(t, -1)
    q = torch.softmax(s.detach(), -1)  # the student over its whole vocabulary
    true_kl = torch.special.xlogy(p, p).sum(-1) - (p * torch.log(q)).sum(-1)
    got = divergence("fkl", s, t, reduction="none")
    torch.testing.assert_close(got, true_kl)
    got.sum().backward()
    torch.testing.assert_close(s.grad, q - p)
    outside = torch.isneginf(t)
    assert torch.all(s.grad[outside] > 0)  # gradient descent lowers the student's mass outside the support
    # the renormalised variant is a switch, and differs
    shared = divergence("fkl", s.detach(), t, reduction="none", support="shared")
    q_shared = torch.softmax(s.detach().masked_fill(outside, -math.inf), -1)
    torch.testing.assert_close(shared, (torch.special.xlogy(p, p) - torch.special.xlogy(p, q_shared)).sum(-1))
    assert torch.all(shared < got)


@pytest.mark.parametrize("name", INFINITE_AGAINST_FILTERED_TEACHER)
@pytest.mark.parametrize("engine", ["chunked", "plain"])
def test_an_infinite_true_divergence_is_a_clear_error_not_inf(name, engine):
    s, t = filtered_teacher(dtype=torch.float32)
    mask = torch.tensor([False, True, True])
    with pytest.raises(ValueError, match=r"the divergence is inf at the token with index \(1,\).*support='shared'"):
        divergence(name, s, t, mask, engine=engine)
    assert torch.isfinite(divergence(name, s, t, mask, engine=engine, support="shared"))


def test_student_only_neg_inf_makes_fkl_infinite_but_not_rkl():
    s = torch.tensor([[0.0, 1.0, -math.inf]])
    t = torch.tensor([[0.5, 0.0, 1.0]])
    with pytest.raises(ValueError, match="the divergence is inf"):
        divergence("fkl", s, t)
    q, p = torch.softmax(s, -1), torch.softmax(t, -1)
    want = (q[:, :2] * (q[:, :2].log() - p[:, :2].log())).sum(-1)
    torch.testing.assert_close(divergence("rkl", s, t, reduction="none"), want)


@pytest.mark.parametrize("name", FINITE_AGAINST_FILTERED_TEACHER)
def test_finite_divergences_against_a_filtered_teacher_match_the_reference(name):
    s, t = filtered_teacher(3)
    want = reference.divergence(name, s.numpy(), t.numpy(), 1.5, "full")
    got = divergence(name, s.float(), t.float(), reduction="none", tau=1.5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_huge_finite_student_logits_give_the_float64_value(name):
    s = torch.tensor([[3e38, -3e38, 0.0, 1.0]])
    t = torch.tensor([[2.0, 0.5, -1.0, 1.0]])
    want = reference.divergence(name, s.double().numpy(), t.double().numpy(), 1.0, "full")
    got = divergence(name, s, t, reduction="none")
    assert torch.isfinite(got).all()
    if np.isfinite(want).all():
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    else:  # log q = -6e38 where p > 0: the true value is about 1e38 (float64's q underflows to 0)
        assert float(got) > 1e37
    s = s.clone().requires_grad_()
    divergence(name, s, t).backward()
    assert torch.isfinite(s.grad).all()


def test_a_large_teacher_logit_at_a_small_temperature_is_not_padding():
    s = torch.tensor([[1.0, 0.0, 0.0]])
    for big in (-1e36, 1e36):
        t = torch.tensor([[big, 0.5, 0.0]])
        got = divergence("fkl", s, t, tau=1e-3)
        want, _ = reference.kl_logspace(s.double().numpy() / 1e-3, t.double().numpy() / 1e-3)
        assert math.isfinite(float(got))
        np.testing.assert_allclose(float(got), want[0], rtol=1e-5)
    # the -1e36 entry has teacher probability 0 but the student's mass on it is penalised: about 1000 here
    assert float(divergence("fkl", s, torch.tensor([[-1e36, 0.5, 0.0]]), tau=1e-3)) > 999


def mp_abkd(student, teacher, a, b):
    """The alpha-beta divergence of one row at 60 digits."""
    mpmath.mp.dps = 60
    a, b = mpmath.mpf(a), mpmath.mpf(b)

    def softmax(row):
        row = [mpmath.mpf(float(x)) for x in row]
        total = sum(mpmath.exp(x) for x in row)
        return [mpmath.exp(x) / total for x in row]

    p, q = softmax(teacher), softmax(student)
    s = a + b
    total = sum(pi**a * qi**b - a / s * pi**s - b / s * qi**s for pi, qi in zip(p, q, strict=True))
    return float(-total / (a * b))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    alpha=st.sampled_from([1e-6, 1e-4, 1e-2, 0.2, 1.0, 2.5]),
    beta=st.sampled_from([1e-6, 1e-4, 1e-2, 0.7, 1.0, 3.0]),
    scale=st.sampled_from([0.1, 1.0, 4.0]),
)
def test_abkd_in_float32_keeps_its_digits_near_the_limits(seed, alpha, beta, scale):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=(2, 16)) * scale, rng.normal(size=(2, 16)) * scale
    got = divergence("abkd", torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                     reduction="none", alpha=alpha, beta=beta)
    s32, t32 = s.astype(np.float32), t.astype(np.float32)  # the same rounded inputs
    want = [mp_abkd(s32[i], t32[i], alpha, beta) for i in range(2)]
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-7)


def test_abkd_at_alpha_beta_1e_minus_6_is_not_cancelled_away():
    s, t = torch.tensor([[0.0, 3.0, -2.0]]), torch.tensor([[1.0, -1.0, 2.0]])
    got = divergence("abkd", s, t, reduction="none", alpha=1e-6, beta=1e-6)
    want = 0.5 * ((torch.log_softmax(t.double(), -1) - torch.log_softmax(s.double(), -1)) ** 2).sum(-1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


def test_numpy_and_tensor_numbers_are_accepted_as_options():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    want = divergence("fkl", s, t, tau=2.0, num_items=4)
    torch.testing.assert_close(divergence("fkl", s, t, tau=np.float32(2.0), num_items=np.int64(4)), want)
    torch.testing.assert_close(divergence("fkl", s, t, tau=torch.tensor(2.0), num_items=torch.tensor(4)), want)
    torch.testing.assert_close(divergence("sym_kl", s, t, lam=np.float32(0.25)), divergence("sym_kl", s, t, lam=0.25))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_items": 0}, "num_items must be a positive finite number"),
        ({"num_items": -1}, "num_items must be a positive finite number"),
        ({"num_items": math.nan}, "num_items must be a positive finite number"),
        ({"tau": math.inf}, "tau must be a positive number"),
        ({"tau": np.float32(-1.0)}, "tau must be a positive number"),
        ({"reduction": "none"}, "reduction must be one of"),
        ({"kd_weight": math.nan}, "kd_weight must be a finite number"),
        ({"support": "union"}, "support must be one of"),
    ],
)
def test_fused_divergence_checks_its_options(kwargs, message):
    h, w = torch.randn(2, 3, 4), torch.randn(6, 4)
    labels = torch.randint(0, 6, (2, 3))
    with pytest.raises(ValueError, match=message):
        kdviz.fused_divergence("fkl", h, w, labels, teacher_logits=torch.randn(2, 3, 6), **kwargs)


def test_double_backward_through_the_chunked_engine_raises_and_the_plain_engine_is_exact():
    s = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 7, dtype=torch.float64)
    loss = divergence("js", s, t)
    with pytest.raises(RuntimeError, match="create_graph=True.*engine='plain'"):
        torch.autograd.grad(loss, s, create_graph=True)
    (g,) = torch.autograd.grad(divergence("js", s, t, engine="plain"), s, create_graph=True)
    assert g.requires_grad  # the plain engine differentiates twice
    assert torch.autograd.gradgradcheck(lambda x: divergence("js", x, t, engine="plain"), (s,))


def test_double_backward_through_fused_divergence_raises():
    h = torch.randn(2, 3, 4, requires_grad=True)
    loss = kdviz.fused_divergence("fkl", h, torch.randn(6, 4), torch.randint(0, 6, (2, 3)),
                                  teacher_logits=torch.randn(2, 3, 6))
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(loss, h, create_graph=True)


def official_dskd_akl(student, teacher, alpha):
    """The DSKD repository's ``compute_adaptive_kl_divergence`` (kd temperature 1), restated."""
    probs, teacher_probs = student.softmax(-1), teacher.softmax(-1)
    sorted_teacher, order = teacher_probs.sort(-1)
    gap = (sorted_teacher - probs.gather(-1, order)).abs()
    tail = (sorted_teacher.cumsum(-1) < alpha).to(gap.dtype)
    g_head, g_tail = (gap * (1 - tail)).sum(-1), (gap * tail).sum(-1)
    fkl = (teacher_probs * (teacher.log_softmax(-1) - student.log_softmax(-1))).sum(-1)
    rkl = (probs * (student.log_softmax(-1) - teacher.log_softmax(-1))).sum(-1)
    return g_head / (g_head + g_tail) * fkl + g_tail / (g_head + g_tail) * rkl


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]),
       scale=st.sampled_from([0.5, 2.0, 6.0]))
def test_akl_tail_mass_is_the_dskd_adaptive_kl(seed, alpha, scale):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(6, 40, generator=gen, dtype=torch.float64) * scale
    t = torch.randn(6, 40, generator=gen, dtype=torch.float64) * scale
    got = divergence("akl", s, t, reduction="none", tail_mass=alpha)
    torch.testing.assert_close(got, official_dskd_akl(s, t, alpha))
    torch.testing.assert_close(got, divergence("akl", s, t, reduction="none", mu=1 - alpha, crossing_in_head=True))


def test_akl_tail_mass_errors():
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    with pytest.raises(ValueError, match="tail_mass must be a number strictly between 0 and 1"):
        divergence("akl", s, t, tail_mass=1.0)
    with pytest.raises(ValueError, match="either tail_mass"):
        divergence("akl", s, t, tail_mass=0.3, mu=0.2)
