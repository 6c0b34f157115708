"""The chunked engine agrees with the plain autograd path: values, gradients, reductions, masks, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdviz.divergences import DIVERGENCES, divergence
from kdviz.ops import engine as chunk_engine
from kdviz.ops import rows_per_chunk
from tests.test_divergences import CASE_IDS, CASES, NAMES, logit_pairs
from tests.test_divergences_numerics import FINITE_AGAINST_FILTERED_TEACHER


def run(name, s, t, mask, engine, reduction, params, upstream=None, **kw):
    s = s.detach().clone().requires_grad_()
    out = divergence(name, s, t, mask, engine=engine, reduction=reduction, **params, **kw)
    (out if upstream is None else (out * upstream).sum()).sum().backward()
    return out.detach(), s.grad


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@settings(max_examples=15, deadline=None)
@given(pair=logit_pairs(), reduction=st.sampled_from(["mean", "sum", "none"]), chunk=st.integers(1, 5),
       tau=st.sampled_from([0.7, 1.0, 2.0]), tau_squared=st.booleans(), support=st.sampled_from(["full", "shared"]))
def test_chunked_matches_plain(name, params, pair, reduction, chunk, tau, tau_squared, support):
    check_chunked_matches_plain(name, params, pair, reduction, chunk, tau, tau_squared, support)


def check_chunked_matches_plain(name, params, pair, reduction, chunk, tau, tau_squared, support):
    """Values and gradients of the chunked engine equal the plain autograd path's (or both raise)."""
    s, t, mask = pair
    kw = {"tau": tau, "tau_squared": tau_squared, "support": support}
    try:
        v_plain, g_plain = run(name, s, t, mask, "plain", reduction, params, **kw)
    except ValueError as err:  # an infinite true divergence: the chunked engine says the same
        assert "the divergence is inf" in str(err)
        with pytest.raises(ValueError, match="the divergence is inf"):
            run(name, s, t, mask, "chunked", reduction, params, chunk_rows=chunk, **kw)
        return
    v_chunk, g_chunk = run(name, s, t, mask, "chunked", reduction, params, chunk_rows=chunk, **kw)
    if not torch.isfinite(v_plain).all():  # abkd with negative exponents can overflow float32 on wide logits
        return
    torch.testing.assert_close(v_chunk, v_plain, rtol=1e-5, atol=1e-6)
    # Gradients are sums of probability-sized terms times log-ratios: the closed form and autograd round
    # differently in float32, so the tolerance is relative to that natural scale (2 eps * log-ratio / tau:
    # each side rounds once, eps = 1.19e-7).
    finite = torch.cat([s[torch.isfinite(s)], t[torch.isfinite(t)]])
    log_ratio = float(finite.max() - finite.min()) / tau
    scale = (1.0 if reduction != "mean" else 1.0 / max(int(mask.sum()), 1)) * (tau**2 if tau_squared else 1)
    atol = scale * max(2e-6, 2.4e-7 * log_ratio / tau)
    torch.testing.assert_close(g_chunk, g_plain, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_per_token_upstream_gradient_is_applied(name):
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 17, generator=gen), torch.randn(3, 4, 17, generator=gen) * 2
    mask = torch.rand(3, 4, generator=gen) < 0.7
    weights = torch.rand(3, 4, generator=gen)
    _, g_plain = run(name, s, t, mask, "plain", "none", {}, upstream=weights)
    _, g_chunk = run(name, s, t, mask, "chunked", "none", {}, upstream=weights, chunk_rows=2)
    torch.testing.assert_close(g_chunk, g_plain, rtol=1e-5, atol=1e-6)
    # a scalar upstream factor (e.g. kd_weight) on a mean loss
    _, g_plain = run(name, s, t, mask, "plain", "mean", {}, upstream=torch.tensor(0.37))
    _, g_chunk = run(name, s, t, mask, "chunked", "mean", {}, upstream=torch.tensor(0.37), chunk_rows=2)
    torch.testing.assert_close(g_chunk, g_plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_gradient_is_the_float32_gradient_rounded_once(name):
    gen = torch.Generator().manual_seed(1)
    s = (torch.randn(2, 6, 300, generator=gen) * 3).bfloat16()
    t = (torch.randn(2, 6, 300, generator=gen) * 3).bfloat16()
    t[..., -7:] = s[..., -7:] = -math.inf
    mask = torch.rand(2, 6, generator=gen) < 0.8
    v16, g16 = run(name, s, t, mask, "chunked", "mean", {}, chunk_rows=4)
    v32, g32 = run(name, s.float(), t.float(), mask, "plain", "mean", {})
    assert g16.dtype == torch.bfloat16 and v16.dtype == torch.float32
    torch.testing.assert_close(v16, v32, rtol=1e-5, atol=1e-7)
    # one rounding of the float32 gradient to bf16: at most one bf16 ulp apart
    ulp = g32.abs().clamp(min=1e-30) * 2.0**-7
    assert torch.all((g16.float() - g32.bfloat16().float()).abs() <= ulp)


@pytest.mark.parametrize(("name", "support"), [(n, "shared") for n in NAMES if n != "akl"]
                         + [(n, "full") for n in FINITE_AGAINST_FILTERED_TEACHER])
def test_gradcheck_float64_chunked(name, support):
    gen = torch.Generator().manual_seed(7)
    s = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64) * 2
    t[..., 0] = -math.inf
    mask = torch.tensor([[True, False, True], [True, True, False]])

    def f(student):
        return divergence(name, student, t, mask, tau=1.3, reduction="none", chunk_rows=2, support=support)

    assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-5)


def test_non_contiguous_logits_are_read_in_place():
    gen = torch.Generator().manual_seed(2)
    full_s, full_t = torch.randn(2, 9, 40, generator=gen), torch.randn(2, 9, 40, generator=gen)
    s, t = full_s[:, :-1], full_t[:, 1:]  # the usual shifted views
    assert not s.is_contiguous()
    v_plain, g_plain = run("akl", s, t, None, "plain", "mean", {})
    v_chunk, g_chunk = run("akl", s, t, None, "chunked", "mean", {}, chunk_rows=3)
    torch.testing.assert_close(v_chunk, v_plain)
    torch.testing.assert_close(g_chunk, g_plain)


def test_teacher_requiring_grad_takes_the_plain_path():
    s = torch.randn(2, 5, requires_grad=True)
    t = torch.randn(2, 5, requires_grad=True)
    divergence("fkl", s, t).backward()
    assert t.grad is not None and torch.any(t.grad != 0)


def test_backward_twice_is_a_clear_error():
    s = torch.randn(2, 5, requires_grad=True)
    loss = divergence("fkl", s, torch.randn(2, 5))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="use engine='plain'"):
        loss.backward()


def test_no_grad_and_stats():
    stats = {}
    with torch.no_grad():
        loss = divergence("akl", torch.randn(3, 4, 8, requires_grad=True), torch.randn(3, 4, 8), stats=stats)
    assert loss.grad_fn is None and stats["tokens"] == 12 and int(stats["akl_fallbacks"]) == 0


def test_rows_per_chunk_keeps_the_demo_rows_on_a_cpu():
    # Pinned: at the demo's vocabularies (V <= 4096, float32 on a CPU) the rows per chunk are 512 KiB // (4 V), as
    # they have always been, so the demo's losses and gradients stay bit-identical; ULD's sorts keep 4 MiB // (4 V).
    assert [rows_per_chunk("cpu", v, torch.float32) for v in (1000, 2048, 4096)] == [131, 64, 32]
    assert [rows_per_chunk("cpu", v, torch.float32, 4 * 2**20) for v in (1000, 2048, 4096)] == [1048, 512, 256]
    assert rows_per_chunk(torch.device("cpu"), 1000, torch.bfloat16) == 131  # bf16 rows are computed in float32
    assert rows_per_chunk("cpu", 1000, torch.float64) == 65  # float64 ones take twice the bytes


def test_rows_per_chunk_has_a_floor_and_a_cap_on_a_cpu_and_a_large_budget_on_a_gpu():
    assert rows_per_chunk("cpu", 32000) == 32  # not 4 rows
    assert rows_per_chunk("cpu", 151936) == 6 and rows_per_chunk("cpu", 262208) == 3  # 4 MiB at most for the floor
    assert rows_per_chunk("cpu", 10**9) == 1
    assert rows_per_chunk("cpu", 151936, torch.float32, cpu_bytes=32 * 2**20) == 55  # a larger budget on a CPU
    # a CUDA device object needs no GPU: the rule only reads its type
    for device in (torch.device("cuda"), torch.device("cuda", 1), "cuda:0"):
        assert rows_per_chunk(device, 151936, torch.bfloat16) == 128 * 2**20 // (4 * 151936) == 220
    assert rows_per_chunk("cuda", 32000, torch.float32, cpu_bytes=4 * 2**20) == 1048  # cpu_bytes is for CPUs only
    assert rows_per_chunk("cuda", 2**22) == 64 and rows_per_chunk("cuda", 2**30) == 1
    assert rows_per_chunk("mps", 151936) == 220  # other accelerators are budgeted as a GPU


def test_a_large_vocabulary_is_walked_in_chunks_of_several_rows(monkeypatch):
    seen, real = [], chunk_engine.chunk_value_and_grad

    def counted(formula, student, *args, **kwargs):
        seen.append(len(student))
        return real(formula, student, *args, **kwargs)

    monkeypatch.setattr(chunk_engine, "chunk_value_and_grad", counted)
    s = torch.randn(3, 32, 151936, requires_grad=True)
    divergence("fkl", s, torch.randn(3, 32, 151936)).backward()
    assert seen == [6] * 16


def test_chunk_size_and_engine_errors():
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    with pytest.raises(ValueError, match="engine must be one of"):
        divergence("fkl", s, t, engine="fast")
    with pytest.raises(ValueError, match="chunk_rows must be a positive"):
        divergence("fkl", s, t, chunk_rows=-1)
    t[1, 3] = math.nan
    for engine in ("plain", "chunked"):
        with pytest.raises(ValueError, match=r"teacher_logits contains NaN at index \(1, 3\)"):
            divergence("tvd", s, t, engine=engine)


CLOSED_FORM = [name for name in NAMES if chunk_engine.has_closed_form(DIVERGENCES[name].formula, {})]


def test_every_divergence_but_abkd_has_a_closed_form_gradient():
    assert set(NAMES) - set(CLOSED_FORM) == {"abkd"}


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_chunks_reuse_their_work_buffers(name):
    """The engine's row-sized allocations do not grow with the number of chunks (fresh pages are slow to
    fault in on a CPU): 2 chunks and 12 chunks of one row make the same number, for every divergence with a
    closed-form gradient."""
    from torch.profiler import ProfilerActivity, profile

    def row_sized_allocations(rows, vocab=4096):
        g = torch.Generator().manual_seed(0)
        s, t = torch.randn(rows, vocab, generator=g).requires_grad_(), torch.randn(rows, vocab, generator=g)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            divergence(name, s, t, None, engine="chunked", chunk_rows=1, reduction="sum").backward()
        return sum(1 for e in prof.events() if e.cpu_memory_usage >= 4 * vocab)

    assert row_sized_allocations(12) == row_sized_allocations(2)
