"""The chunked row functions of kdviz.ops.reductions (softmax values at a few columns, cross-entropy) against
whole-row float64 autograd."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdviz.ops import cross_entropy
from kdviz.ops import reductions as sc


def rows_and_index(seed: int, r: int, v: int, n: int, dtype=torch.float64, pad: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, v, generator=g, dtype=torch.float64) * 6
    if pad:
        z[:, -pad:] = float("-inf")  # vocabulary padding
    index = torch.randint(0, r, (n,), generator=g)  # rows may repeat
    columns = torch.randint(0, v - pad, (n, 3), generator=g)
    return z.to(dtype).requires_grad_(), index, columns


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    v=st.integers(2, 300),
    n=st.integers(1, 40),
    tau=st.sampled_from([0.5, 1.0, 2.0]),
    pad=st.integers(0, 1),
)
def test_values_and_gradients_equal_whole_row_log_softmax(seed, v, n, tau, pad):
    with mock.patch.object(sc, "rows_per_chunk", lambda *_: 3):  # three rows per chunk: boundaries crossed
        check_against_whole_rows(seed, v, n, tau, pad)


def check_against_whole_rows(seed, v, n, tau, pad):
    z, index, columns = rows_and_index(seed, 7, v + pad, n, pad=pad)
    weights = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lse = sc.row_logsumexp(z, index, tau)
    found = sc.log_softmax_at(z, index, lse, columns, tau)
    want = torch.log_softmax(z[index] / tau, -1).gather(-1, columns)
    torch.testing.assert_close(found, want, rtol=1e-12, atol=1e-12)
    (grad_found,) = torch.autograd.grad((found.exp() * weights).sum() + (lse * weights[:, 0]).sum(), z)
    (grad_want,) = torch.autograd.grad(
        (want.exp() * weights).sum() + (torch.logsumexp(z[index] / tau, -1) * weights[:, 0]).sum(), z
    )
    torch.testing.assert_close(grad_found, grad_want, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(grad_found).all()


def test_gradcheck_and_low_precision_inputs():
    z, index, _ = rows_and_index(0, 5, 11, 8)
    assert torch.autograd.gradcheck(lambda x: sc.row_logsumexp(x, index, 0.7), (z,))
    z16 = z.detach().to(torch.bfloat16).requires_grad_()
    lse = sc.row_logsumexp(z16, index, 1.0)
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse, torch.logsumexp(z16.float()[index], -1))
    lse.sum().backward()
    assert z16.grad.dtype == torch.bfloat16 and torch.isfinite(z16.grad.float()).all()


def test_extreme_logits_stay_finite():
    z = torch.tensor([[1e4, -1e4, 0.0], [-3e4, -3e4, -3e4]], dtype=torch.float32, requires_grad=True)
    index = torch.tensor([0, 1])
    lse = sc.row_logsumexp(z, index, 1.0)
    out = sc.log_softmax_at(z, index, lse, torch.tensor([[0, 1], [1, 2]]), 1.0)
    assert torch.isfinite(out).all() and float(out[0, 0].detach()) == 0.0
    out.exp().sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("groups", [1, 3])
def test_column_mass_sums_each_group(groups):
    z, index, _ = rows_and_index(1, 6, 50, 20)
    group = torch.randint(-1, groups, (20,), generator=torch.Generator().manual_seed(2))
    lse = sc.row_logsumexp(z, index, 2.0)
    found = sc.column_mass(z, index, lse, 2.0, group, groups)
    p = torch.softmax(z.detach()[index] / 2.0, -1)
    for g in range(groups):
        torch.testing.assert_close(found[g], p[group == g].sum(0), rtol=1e-12, atol=1e-12)
    assert not found.requires_grad


# -- cross-entropy (kdviz.ops.cross_entropy on kdviz.ops.row_cross_entropy) ---------------


def whole_row_ce(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per token, written out: ``log sum_j exp z_j - z_y`` in float64, 0 where the target is -100."""
    valid = targets != -100
    picked = z.double().gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(valid, torch.logsumexp(z.double(), -1) - picked, 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), v=st.integers(2, 200), t=st.integers(1, 9), pad=st.integers(0, 2))
def test_cross_entropy_values_and_gradients(seed, v, t, pad):
    with mock.patch.object(sc, "rows_per_chunk", lambda *_: 2):  # two rows per chunk
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(3, t, v + pad, generator=g, dtype=torch.float64) * 8
        if pad:
            z[..., -pad:] = float("-inf")  # vocabulary padding, never a target
        targets = torch.randint(0, v, (3, t), generator=g)
        targets[torch.rand(3, t, generator=g) < 0.3] = -100
        z.requires_grad_()
        mean, per_token = cross_entropy(z, targets)
        want = whole_row_ce(z, targets)
        torch.testing.assert_close(per_token, want, rtol=1e-12, atol=1e-12)
        count = max(int((targets != -100).sum()), 1)
        torch.testing.assert_close(mean, want.sum() / count, rtol=1e-12, atol=1e-12)
        weights = torch.randn(3, t, generator=g, dtype=torch.float64)
        (found,) = torch.autograd.grad(mean + (per_token * weights).sum(), z)
        (expected,) = torch.autograd.grad(want.sum() / count + (want * weights).sum(), z)
        torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)
        assert torch.isfinite(found).all()


def test_cross_entropy_bf16_all_masked_extremes_and_bad_targets():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(2, 5, 40, generator=g) * 3).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 40, (2, 5), generator=g)
    mean, per_token = cross_entropy(z, targets)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(per_token, whole_row_ce(z.float(), targets).float(), rtol=1e-5, atol=1e-5)
    mean.backward()
    assert z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad.float()).all()
    masked = torch.full((2, 5), -100)
    z.grad = None
    mean, per_token = cross_entropy(z, masked)
    mean.backward()
    assert float(mean.detach()) == 0.0 and float(per_token.detach().abs().sum()) == 0.0
    assert float(z.grad.float().abs().sum()) == 0.0
    extreme = torch.tensor([[[1e30, -1e30, 0.0]]], requires_grad=True)
    mean, _ = cross_entropy(extreme, torch.tensor([[1]]))
    mean.backward()
    assert float(mean.detach()) == pytest.approx(2e30) and torch.isfinite(extreme.grad).all()
    with pytest.raises(ValueError, match=r"targets must be -100 or a token id in \[0, 40\)"):
        cross_entropy(z, torch.full((2, 5), 40))


def test_cross_entropy_backward_twice_and_without_gradient():
    z = torch.randn(2, 3, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    targets = torch.tensor([[1, -100, 16], [0, 5, -100]])
    mean, per_token = cross_entropy(z, targets)
    first = torch.autograd.grad(mean, z, retain_graph=True)[0]
    second = torch.autograd.grad(mean, z, retain_graph=True)[0]  # the stored buffer is spent: recomputed
    third = torch.autograd.grad(per_token[0, 2] * 3.0, z)[0]
    torch.testing.assert_close(first, second, rtol=1e-12, atol=1e-15)
    want = torch.softmax(z.detach()[0, 2], -1) * 3.0
    want[16] -= 3.0
    torch.testing.assert_close(third[0, 2], want)
    assert float(third[1].abs().sum()) == 0.0
    with torch.no_grad():
        assert float(cross_entropy(z, targets)[0]) == pytest.approx(float(mean.detach()))
