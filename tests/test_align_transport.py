"""Batched position transport (kdviz.align.transport) against POT's single-problem ``ot.sinkhorn``."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ot.batch import solve_batch

from kdviz.align.transport import sinkhorn_plans

LENGTHS = [(7, 9), (4, 5), (9, 3), (0, 3)]


def padded_problem(dtype=torch.float64):
    torch.manual_seed(0)
    cost = torch.rand(len(LENGTHS), 9, 9, dtype=dtype) * 2
    rows = torch.zeros(len(LENGTHS), 9, dtype=torch.bool)
    cols = torch.zeros_like(rows)
    for b, (n, m) in enumerate(LENGTHS):
        rows[b, :n], cols[b, :m] = True, True
    return cost, rows, cols


def pot_plan(cost: np.ndarray, reg: float, n_iter: int) -> np.ndarray:
    """``ot.sinkhorn`` (log domain) with uniform marginals. POT's single solver updates ``v`` first and the
    batch solver ``u`` first, so the oracle solves the transposed problem: the same iterates."""
    n, m = cost.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ot.sinkhorn(np.ones(m) / m, np.ones(n) / n, cost.T, reg, method="sinkhorn_log",
                           numItermax=n_iter, stopThr=0.0)
    return plan.T


@pytest.mark.parametrize("domain", ["log", "plain"])
@pytest.mark.parametrize("n_iter", [1, 20, 200])
def test_each_padded_plan_equals_pot_sinkhorn(n_iter, domain):
    cost, rows, cols = padded_problem()
    cost[1] += 7.0  # a constant offset changes nothing (the solver shifts each cost by its minimum)
    found = sinkhorn_plans(cost, rows, cols, reg=0.1, n_iter=n_iter, domain=domain)
    assert found.iterations == n_iter and found.domain == domain
    for b, (n, m) in enumerate(LENGTHS):
        plan = found.plan[b]
        assert float(plan[n:].abs().sum() + plan[:, m:].abs().sum()) == 0.0
        if n == 0:
            assert float(found.value[b]) == 0.0
            continue
        want = pot_plan(cost[b, :n, :m].numpy(), 0.1, n_iter)
        np.testing.assert_allclose(plan[:n, :m].numpy(), want, atol=1e-12)  # float64: to rounding
        assert float(found.value[b]) == pytest.approx(float((plan * cost[b]).sum()), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    domain=st.sampled_from(["log", "plain"]),
    mass=st.sampled_from(["probability", "unit"]),
)
def test_scattered_masks_give_each_sequence_its_own_plan(seed, domain, mass):
    """Real positions anywhere (not a prefix), some sequences empty: each plan is POT's on its real block."""
    g = torch.Generator().manual_seed(seed)
    b, n = 4, 6
    cost = torch.rand(b, n, n, dtype=torch.float64, generator=g) * 3
    rows = torch.rand(b, n, generator=g) < 0.6
    cols = rows.clone() if mass == "unit" else torch.rand(b, n, generator=g) < 0.6
    found = sinkhorn_plans(cost, rows, cols, reg=0.1, n_iter=15, mass=mass, domain=domain)
    for i in range(b):
        r, c = rows[i].nonzero().flatten(), cols[i].nonzero().flatten()
        if len(r) == 0 or len(c) == 0:
            assert float(found.plan[i].abs().sum()) == 0.0
            continue
        block = cost[i][r][:, c].numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, w = np.ones(len(r)), np.ones(len(c))
            if mass == "probability":
                a, w = a / len(r), w / len(c)
            want = ot.sinkhorn(w, a, block.T, 0.1, method="sinkhorn_log", numItermax=15, stopThr=0.0).T
        np.testing.assert_allclose(found.plan[i][r][:, c].numpy(), want, atol=1e-12)
        assert float(found.plan[i].sum()) == pytest.approx(float(want.sum()), abs=1e-12)  # nothing off the block


@pytest.mark.parametrize("domain", ["log", "plain"])
def test_unpadded_batch_equals_pot_sinkhorn(domain):
    cost = torch.rand(3, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    full = torch.ones(3, 6, dtype=torch.bool), torch.ones(3, 8, dtype=torch.bool)
    found = sinkhorn_plans(cost, *full, reg=0.1, n_iter=20, domain=domain)
    for b in range(3):
        np.testing.assert_allclose(found.plan[b].numpy(), pot_plan(cost[b].numpy(), 0.1, 20), atol=1e-12)
    assert torch.allclose(found.value, (found.plan * cost).sum((1, 2)))


@pytest.mark.parametrize("tol", [0.0, 1e-6])
def test_plain_domain_runs_the_rounds_of_pot_solve_batch(tol):
    """The plain domain is kdviz's own batched products; POT's batch solver is the oracle, early stop too."""
    cost = torch.rand(3, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    full = torch.ones(3, 6, dtype=torch.bool), torch.ones(3, 8, dtype=torch.bool)
    found = sinkhorn_plans(cost, *full, reg=0.1, n_iter=200, tol=tol, domain="plain")
    want = solve_batch(cost - cost.amin((1, 2), keepdim=True), reg=0.1, max_iter=200, tol=tol, method="sinkhorn")
    assert found.iterations == int(want.log["n_iter"]) + 1
    assert (found.iterations == 200) == (tol == 0)
    torch.testing.assert_close(found.plan, want.plan, rtol=0, atol=1e-14)


def test_float32_and_the_reported_marginal_error():
    cost, rows, cols = padded_problem(torch.float32)
    found = sinkhorn_plans(cost, rows, cols, reg=0.1, n_iter=20)
    worst = 0.0
    for b, (n, m) in enumerate(LENGTHS[:3]):
        want = pot_plan(cost[b, :n, :m].double().numpy(), 0.1, 20)
        np.testing.assert_allclose(found.plan[b, :n, :m].numpy(), want, atol=1e-6)  # float32 tolerance
        plan = found.plan[b, :n, :m].double()
        worst = max(worst, float((plan.sum(1) * n - 1).abs().max()), float((plan.sum(0) * m - 1).abs().max()))
    assert found.marginal_error == pytest.approx(worst, rel=1e-3, abs=1e-6)
    assert found.marginal_error < 0.1


def test_auto_domain_falls_back_to_the_log_domain_when_the_kernel_would_underflow():
    cost, rows, cols = padded_problem(torch.float32)
    assert sinkhorn_plans(cost, rows, cols, reg=0.1).domain == "plain"  # span 2 / 0.1 = 20 <= 50
    found = sinkhorn_plans(cost * 3, rows, cols, reg=0.1)  # span 60: the kernel would reach exp(-60)
    assert found.domain == "log" and torch.isfinite(found.plan).all()
    want = pot_plan((cost[0, :7] * 3).double().numpy(), 0.1, 20)
    np.testing.assert_allclose(found.plan[0, :7].numpy(), want, atol=1e-6)
    assert sinkhorn_plans(cost.double() * 3, rows, cols, reg=0.1).domain == "plain"  # float64: up to 500


def test_unit_mass_and_early_stop():
    cost, rows, _ = padded_problem()
    found = sinkhorn_plans(cost, rows, rows, reg=0.1, n_iter=500, tol=1e-9, mass="unit")
    assert found.iterations < 500 and found.marginal_error < 1e-6
    for b, (n, _) in enumerate(LENGTHS):
        plan = found.plan[b, :n, :n]
        assert torch.allclose(plan.sum(0), torch.ones(n, dtype=plan.dtype), atol=1e-8)
        assert torch.allclose(plan.sum(1), torch.ones(n, dtype=plan.dtype), atol=1e-6)
    with pytest.raises(ValueError, match="as many rows as columns"):
        sinkhorn_plans(*padded_problem(), mass="unit")


def test_gradients_envelope_and_autodiff():
    cost, rows, cols = padded_problem(torch.float32)
    for grad, domain in (("envelope", "plain"), ("envelope", "log"), ("autodiff", "plain"), ("autodiff", "log")):
        leaf = cost.clone().requires_grad_()
        found = sinkhorn_plans(leaf, rows, cols, reg=0.1, n_iter=20, grad=grad, domain=domain)
        found.value.sum().backward()
        assert torch.isfinite(leaf.grad).all()
        assert float(leaf.grad[~(rows[:, :, None] & cols[:, None, :])].abs().max()) == 0.0
        if grad == "envelope":  # d<P, C>/dC with P held fixed is P itself
            assert torch.allclose(leaf.grad, found.plan.detach())


@pytest.mark.parametrize("domain", ["log", "plain"])
def test_autodiff_gradients_are_exact(domain):
    """Through every round, checked by finite differences in float64 (one sequence padded)."""
    cost = (torch.rand(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2).requires_grad_()
    rows, cols = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    rows[1, 3] = False

    def value(c):
        return sinkhorn_plans(c, rows, cols, reg=0.1, n_iter=5, grad="autodiff", domain=domain).value

    assert torch.autograd.gradcheck(value, (cost,))


def test_non_finite_cost_and_an_underflowing_plain_kernel_raise():
    cost, rows, cols = padded_problem(torch.float32)
    bad = cost.clone()
    bad[0, 2, 3] = float("nan")  # a real position
    with pytest.raises(ValueError, match="cost must be finite"):
        sinkhorn_plans(bad, rows, cols)
    bad = cost.clone()
    bad[0, 8, 8] = float("inf")  # a padded position of sequence 0 (7 x 9)
    for domain in ("auto", "log"):
        with pytest.raises(ValueError, match="padded ones too"):
            sinkhorn_plans(bad, rows, cols, domain=domain)
    with pytest.raises(ValueError, match="span of at most 50 reg"):
        sinkhorn_plans(cost * 100, rows, cols, domain="plain")  # exp(-2000): the kernel underflows


def test_all_empty_and_bad_arguments():
    cost = torch.rand(2, 3, 3)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    found = sinkhorn_plans(cost, empty, empty)
    assert float(found.plan.abs().sum()) == 0.0 and found.iterations == 0
    with pytest.raises(ValueError, match="row_mask"):
        sinkhorn_plans(cost, empty[:, :2], empty)
    with pytest.raises(ValueError, match="reg must be positive"):
        sinkhorn_plans(cost, empty, empty, reg=0.0)
    with pytest.raises(ValueError, match="n_iter must be at least 1"):
        sinkhorn_plans(cost, empty, empty, n_iter=0)
    with pytest.raises(ValueError, match="domain must be one of"):
        sinkhorn_plans(cost, empty, empty, domain="exp")
