"""The divergences against an independent float64 reference, their invariants and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kdviz
from kdviz.divergences import divergence
from tests import reference

PARAMS = {  # non-default settings exercised next to the defaults
    "sym_kl": [{"lam": 0.2}],
    "gjsd": [{"teacher_weight": 0.0}, {"teacher_weight": 0.3}, {"teacher_weight": 1.0}],
    "sfkl": [{"a": 0.0}, {"a": 0.4}],
    "srkl": [{"a": 0.7}],
    "akl": [{"mu": 0.3}, {"mu": 0.8, "crossing_in_head": True}],
    "abkd": [{"alpha": 1.0, "beta": 0.0}, {"alpha": 0.0, "beta": 0.5}, {"alpha": 0.5, "beta": -0.5},
             {"alpha": 0.0, "beta": 0.0}, {"alpha": 1.5, "beta": 0.3}],
}


def cases() -> list[tuple[str, dict]]:
    """Every registered divergence at its defaults, then the settings of :data:`PARAMS`."""
    return [(n, {}) for n in kdviz.DIVERGENCES] + [(n, p) for n, ps in PARAMS.items() for p in ps]


NAMES = list(kdviz.DIVERGENCES)
CASES = cases()
CASE_IDS = [f"{n}-{p}" if p else n for n, p in CASES]


@st.composite
def logit_pairs(draw, max_v=48):
    """Random ``[B, T, V]`` logit pairs (float32) with a mask and optional ``-inf`` padding columns."""
    seed = draw(st.integers(0, 2**31 - 1))
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, max_v))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0, 20.0]))
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, t, v)) * scale
    te = rng.normal(size=(b, t, v)) * scale
    if draw(st.booleans()):  # padded vocabulary rows and top-k style filtering
        s[..., -1] = -np.inf
        te[..., -1] = -np.inf
        holes = rng.random(size=(b, t, v)) < 0.2
        holes[..., 0] = False
        te[holes] = -np.inf
    mask = rng.random(size=(b, t)) < 0.7
    return (torch.tensor(s, dtype=torch.float32), torch.tensor(te, dtype=torch.float32),
            torch.tensor(mask))


def reference_tokens(name, s, t, mask, tau, support="full", **params):
    rows = reference.divergence(name, s[mask].double().numpy(), t[mask].double().numpy(), tau, support, **params)
    out = np.zeros(mask.shape)
    out[mask.numpy()] = rows
    return out


@pytest.mark.parametrize("support", ["full", "shared"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None)
@given(pair=logit_pairs(), tau=st.sampled_from([0.5, 1.0, 2.0]))
def test_matches_float64_reference(name, params, support, pair, tau):
    s, t, mask = pair
    want = reference_tokens(name, s, t, mask, tau, support, **params)
    if not np.all(np.isfinite(want)):  # the true divergence is infinite: a clear error, never inf or NaN
        with pytest.raises(ValueError, match="the divergence is inf"):
            divergence(name, s, t, mask, tau=tau, reduction="none", support=support, **params)
        return
    assume(np.all(want < 1e30))  # abkd with a negative exponent can exceed float32's range on wide logits
    got = divergence(name, s, t, mask, tau=tau, reduction="none", support=support, **params)
    assert got.dtype == torch.float32 and got.shape == mask.shape
    atol = float32_atol(s, t, tau)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=atol)
    mean = divergence(name, s, t, mask, tau=tau, support=support, **params)
    np.testing.assert_allclose(float(mean), want.sum() / max(mask.sum().item(), 1), rtol=1e-5, atol=atol)


def float32_atol(s, t, tau):
    """2e-6, plus the float32 rounding of log-probabilities of logits as wide as ``s`` and ``t``: a
    log-probability ``z / tau - LSE`` carries an error of about ``eps * |z / tau|``, and a divergence sums
    such differences weighted by probabilities (e.g. 3.8e-6 on AKL at logits ~50 and tau 0.5)."""
    finite = torch.cat([s[torch.isfinite(s)], t[torch.isfinite(t)]])
    widest = float(finite.abs().max()) / tau if finite.numel() else 0.0
    return 2e-6 + 2 * torch.finfo(torch.float32).eps * widest


@settings(max_examples=30, deadline=None)
@given(pair=logit_pairs(), tau=st.sampled_from([0.5, 1.0, 3.0]))
def test_fkl_rkl_gradients_match_closed_forms(pair, tau):
    s, t, mask = pair
    p, q = (torch.tensor(x) for x in reference.distributions(s.double().numpy(), t.double().numpy(), tau, "shared"))
    m = mask[..., None].double()
    s_f = s.clone().requires_grad_()
    divergence("fkl", s_f, t, mask, tau=tau, reduction="sum", support="shared").backward()
    np.testing.assert_allclose(s_f.grad.double(), m * (q - p) / tau, atol=2e-6)

    s_r = s.clone().requires_grad_()
    divergence("rkl", s_r, t, mask, tau=tau, reduction="sum", support="shared").backward()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = torch.where(q > 0, torch.log(q) - torch.log(p), 0.0)
    rkl = (torch.special.xlogy(q, q) - torch.where(q > 0, q * torch.log(p), 0.0)).sum(-1, keepdim=True)
    # float32 cancellation in log q - log p - RKL grows with the size of the log-ratios
    atol = 2e-6 * max(1.0, float(rkl.max())) / tau
    np.testing.assert_allclose(s_r.grad.double(), m * q * (log_ratio - rkl) / tau, atol=atol)


@pytest.mark.parametrize(("name", "params"), [c for c in CASES if c[0] != "akl"],
                         ids=[i for c, i in zip(CASES, CASE_IDS, strict=True) if c[0] != "akl"])
def test_gradcheck_float64(name, params):
    gen = torch.Generator().manual_seed(7)
    s = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64) * 2
    s[..., -1] = t[..., -1] = -math.inf  # padding column
    t[0, 0, 2] = -math.inf  # filtered teacher entry
    mask = torch.tensor([[True, True, False], [True, False, True]])
    s.requires_grad_()
    t.requires_grad_()

    def f(student, teacher):
        return divergence(name, student, teacher, mask, tau=1.5, reduction="none", support="shared", **params)

    assert divergence(name, s, t, mask, support="shared", **params).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (s, t), eps=1e-6, atol=1e-5)


def test_akl_is_head_tail_weighted_fkl_rkl_with_detached_weights():
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, 30, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(3, 5, generator=gen) < 0.8
    w = kdviz.head_tail(s, t, mask, mu=0.4).w_head.nan_to_num(0.0)
    fkl = divergence("fkl", s, t, mask, reduction="none")
    rkl = divergence("rkl", s, t, mask, reduction="none")
    akl = divergence("akl", s, t, mask, reduction="none", mu=0.4)
    torch.testing.assert_close(akl, w * fkl + (1 - w) * rkl)
    (g_akl,) = torch.autograd.grad(akl.sum(), s)
    (g_mix,) = torch.autograd.grad((w * fkl + (1 - w) * rkl).sum(), s)
    torch.testing.assert_close(g_akl, g_mix)


def test_akl_counts_zero_over_zero_fallbacks():
    t = torch.randn(2, 4, 11)
    stats = {}
    loss = divergence("akl", t.clone(), t, stats=stats)
    assert float(loss) == 0.0
    assert int(stats["akl_fallbacks"]) == 8 and stats["tokens"] == 8
    assert torch.all(kdviz.head_tail(t.clone(), t).weight_fallback == 1.0)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(pair=logit_pairs())
def test_nonnegative_and_zero_on_equal(name, pair):
    s, t, mask = pair
    # float32 rounding of a sum of V non-negative terms; abkd's 1/(alpha beta) = 7 amplifies it
    tol = 2e-5 if name == "abkd" else 1e-6
    per_token = divergence(name, s, t, mask, reduction="none", support="shared")
    assert torch.all(per_token >= -tol)
    equal = divergence(name, t.clone(), t, mask, reduction="none")
    assert torch.all(equal.abs() <= tol)


@settings(max_examples=30, deadline=None)
@given(pair=logit_pairs())
def test_special_cases_and_bounds(pair):
    s, t, mask = pair

    def d(name, **kw):
        return divergence(name, s, t, mask, reduction="none", support="shared", **kw)

    assert torch.equal(d("gjsd", teacher_weight=0.0), d("fkl"))
    assert torch.equal(d("gjsd", teacher_weight=1.0), d("rkl"))
    torch.testing.assert_close(d("gjsd", teacher_weight=0.5), d("js"))
    torch.testing.assert_close(d("sfkl", a=0.0), d("fkl"))
    torch.testing.assert_close(d("srkl", a=0.0), d("rkl"))
    torch.testing.assert_close(d("sym_kl", lam=0.0), d("fkl"))
    torch.testing.assert_close(d("sym_kl", lam=1.0), d("rkl"))
    torch.testing.assert_close(d("abkd", alpha=1.0, beta=0.0), d("fkl"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d("abkd", alpha=0.0, beta=1.0), d("rkl"), rtol=1e-5, atol=1e-5)
    assert torch.all(d("tvd") <= 1.0 + 1e-6)
    assert torch.all(d("js") <= math.log(2) + 1e-6)


def test_abkd_limits_are_continuous():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    t = torch.randn(4, 9, generator=gen, dtype=torch.float64)

    def d(alpha, beta):
        return divergence("abkd", s, t, reduction="none", alpha=alpha, beta=beta)

    eps = 1e-6
    for exact, near in [((0.7, 0.0), (0.7, eps)), ((0.0, 0.6), (eps, 0.6)), ((0.5, -0.5), (0.5, -0.5 + eps)),
                        ((0.0, 0.0), (eps, eps))]:
        torch.testing.assert_close(d(*exact), d(*near), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_padding_columns_change_nothing(name):
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 20, generator=gen), torch.randn(2, 3, 20, generator=gen) * 2
    pad = torch.full((2, 3, 5), -math.inf)
    plain = divergence(name, s, t, reduction="none")
    padded = divergence(name, torch.cat([s, pad], -1), torch.cat([t, pad], -1), reduction="none")
    torch.testing.assert_close(padded, plain, rtol=1e-6, atol=1e-7)
    s_pad = torch.cat([s, pad], -1).requires_grad_()
    divergence(name, s_pad, torch.cat([t, pad], -1)).backward()
    assert torch.isfinite(s_pad.grad).all() and torch.all(s_pad.grad[..., 20:] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_stay_finite(name):
    gen = torch.Generator().manual_seed(2)
    s = (torch.randn(2, 4, 50, generator=gen) * 1e4).requires_grad_()
    t = torch.randn(2, 4, 50, generator=gen) * 1e4
    loss = divergence(name, s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    fkl, rkl = reference.kl_logspace(s.detach().reshape(8, 50).numpy(), t.reshape(8, 50).numpy())
    if name in ("fkl", "rkl", "sym_kl"):  # at this scale probabilities underflow: compare in log space
        want = {"fkl": fkl, "rkl": rkl, "sym_kl": 0.5 * fkl + 0.5 * rkl}[name].mean()
        np.testing.assert_allclose(float(loss.detach()), want, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_are_upcast(name):
    gen = torch.Generator().manual_seed(4)
    s32, t32 = torch.randn(2, 5, 64, generator=gen) * 3, torch.randn(2, 5, 64, generator=gen) * 3
    s16 = s32.bfloat16().requires_grad_()
    t16 = t32.bfloat16()
    loss16 = divergence(name, s16, t16)
    loss16.backward()
    assert loss16.dtype == torch.float32 and s16.grad.dtype == torch.bfloat16
    # bf16 values are upcast before any arithmetic: identical to float32 on the same rounded values ...
    torch.testing.assert_close(loss16, divergence(name, s16.detach().float(), t16.float()), rtol=1e-6, atol=0)
    # ... and within bf16 input rounding of the float32 result
    torch.testing.assert_close(loss16, divergence(name, s32, t32), rtol=3e-2, atol=3e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", NAMES)
def test_all_masked_batch_is_exactly_zero_with_zero_grad(name, reduction):
    s = torch.randn(2, 3, 10, requires_grad=True)
    t = torch.randn(2, 3, 10)
    t[0, 0, 0] = math.nan  # masked positions may hold anything
    loss = divergence(name, s, t, torch.zeros(2, 3, dtype=torch.bool), reduction=reduction)
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert s.grad is not None and torch.all(s.grad == 0)


def test_reductions_and_num_items():
    gen = torch.Generator().manual_seed(5)
    s, t = torch.randn(3, 4, 12, generator=gen), torch.randn(3, 4, 12, generator=gen)
    mask = torch.rand(3, 4, generator=gen) < 0.5
    mask[0, 0] = True
    none = divergence("fkl", s, t, mask, reduction="none")
    assert torch.all(none[~mask] == 0)
    torch.testing.assert_close(divergence("fkl", s, t, mask, reduction="sum"), none.sum())
    torch.testing.assert_close(divergence("fkl", s, t, mask), none.sum() / mask.sum())
    torch.testing.assert_close(divergence("fkl", s, t, mask, num_items=100), none.sum() / 100)
    torch.testing.assert_close(divergence("fkl", s, t, mask, tau=2.0, tau_squared=True),
                               4 * divergence("fkl", s, t, mask, tau=2.0))
    flat = divergence("fkl", s.reshape(-1, 12), t.reshape(-1, 12), mask.reshape(-1), reduction="none")
    torch.testing.assert_close(flat.reshape(3, 4), none)
    assert torch.equal(divergence("fkl", s, t, mask.int()), divergence("fkl", s, t, mask))


def test_nan_input_raises_with_the_first_bad_index():
    s, t = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    t[1, 2, 5] = math.nan
    with pytest.raises(ValueError, match=r"teacher_logits contains NaN at index \(1, 2, 5\)"):
        divergence("fkl", s, t)
    s[0, 1, 3] = math.inf
    with pytest.raises(ValueError, match=r"student_logits contains \+inf at index \(0, 1, 3\)"):
        divergence("rkl", s, t)


def test_mismatched_vocabularies_raise_and_trim_vocab_drops_padding():
    s, t = torch.randn(2, 3, 151936), torch.randn(2, 3, 152064)
    with pytest.raises(ValueError, match=r"student_logits has V=151936, teacher_logits has V=152064.*trim_vocab"):
        divergence("fkl", s, t)
    trimmed = divergence("fkl", s, t, trim_vocab=True)
    torch.testing.assert_close(trimmed, divergence("fkl", s, t[..., :151936]))
    with pytest.raises(ValueError, match="trim_vocab=200000 exceeds"):
        divergence("fkl", s, t, trim_vocab=200000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0}, "tau must be a positive number"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"reduction": "sum", "num_items": 5}, "num_items is the denominator"),
        ({"num_items": 0}, "num_items must be a positive finite number"),
        ({"num_items": -1}, "num_items must be a positive finite number"),
        ({"num_items": math.nan}, "num_items must be a positive finite number"),
        ({"tau": math.inf}, "tau must be a positive number"),
        ({"tau": True}, "tau must be a positive number"),
        ({"trim_vocab": -3}, "trim_vocab must be None, True .* or a positive number"),
        ({"support": "union"}, "support must be one of"),
        ({"mask": torch.ones(3, 2, dtype=torch.bool)}, r"mask has shape \(3, 2\)"),
        ({"mask": torch.full((2, 3), 0.5)}, "mask must be boolean"),
    ],
)
def test_bad_options_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        divergence("fkl", torch.randn(2, 3, 5), torch.randn(2, 3, 5), **kwargs)


def test_bad_names_params_and_shapes():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="unknown divergence 'kl'; valid names: fkl, rkl"):
        divergence("kl", s, t)
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['alpha'\]; its parameters are \['teacher_weight'\]"):
        divergence("gjsd", s, t, alpha=0.3)
    with pytest.raises(ValueError, match=r"teacher_weight must be a number in \[0, 1\]"):
        divergence("gjsd", s, t, teacher_weight=1.5)
    with pytest.raises(ValueError, match="mu must be a number strictly between 0 and 1"):
        divergence("akl", s, t, mu=1.0)
    with pytest.raises(ValueError, match="must share their leading"):
        divergence("fkl", s, torch.randn(2, 4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        divergence("fkl", s.long(), t)
    empty_row = torch.full((1, 5), -math.inf)
    with pytest.raises(ValueError, match="no vocabulary entry that is finite"):
        divergence("fkl", torch.randn(1, 5), empty_row)


def test_registry_functions_have_formula_docstrings():
    for name, fn in kdviz.DIVERGENCES.items():
        assert fn.__name__ == name
        assert "sum" in fn.__doc__ or "KL(" in fn.__doc__, name
        assert "Signature" in fn.__doc__
