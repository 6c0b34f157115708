"""Entropic optimal transport between the positions of padded sequences, batched with POT.

For sequence ``b`` with ``n_b`` rows and ``m_b`` columns of a padded cost ``C [B, N, M]`` and marginals
``a_b``, ``c_b`` (uniform by default: ``1/n_b``, ``1/m_b``), Sinkhorn solves::

    P_b = argmin_{P 1 = a_b, P^T 1 = c_b}  <P, C_b> - reg H(P)

with ``ot.solve_batch`` in the log domain: ``u = log a - LSE_j(-C/reg + v)``, ``v = log c - LSE_i(-C/reg + u)``
from ``v = 0``. Padded rows and columns get marginal 0 (log-marginal ``-inf``), so their plan entries are
exactly 0, and padded cost entries are set to ``1e5 * reg`` (their kernel ``exp(-1e5)`` is exactly 0, also
in the very first round, when ``v`` is still 0): one batch holds sequences of any lengths and each gets
the plan it would get alone. Sequences with an empty side get an all-zero plan.

``grad="envelope"``: the plan is a constant and ``<P, C>`` is differentiated through ``C`` only (the
envelope theorem); ``grad="autodiff"``: gradients flow through every iteration, as in code that
backpropagates through a hand-written Sinkhorn loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ot.batch import loss_linear_batch, solve_batch

PAD_SCALE = 1e5


@dataclass
class Transport:
    """A batch of plans ``[B, N, M]`` and what the solver did.

    ``value`` ``[B]`` is ``<P_b, C_b>`` (attached to ``C`` according to ``grad``); ``iterations`` the
    number of Sinkhorn rounds run; ``marginal_error`` the largest deviation of a row or column sum of any
    plan from its marginal, relative to that marginal entry (``|P 1 - a|_i / a_i``).
    """

    plan: torch.Tensor
    value: torch.Tensor
    iterations: int
    marginal_error: float


def sinkhorn_plans(
    cost: torch.Tensor,
    row_mask: torch.Tensor,
    col_mask: torch.Tensor,
    *,
    reg: float = 0.1,
    n_iter: int = 20,
    tol: float = 0.0,
    mass: str = "probability",
    grad: str = "envelope",
) -> Transport:
    """Solve the batch of position-transport problems of the module docstring.

    ``cost`` ``[B, N, M]``; ``row_mask`` ``[B, N]`` and ``col_mask`` ``[B, M]`` bool mark real positions.
    ``mass``: ``"probability"`` (uniform marginals ``1/n``, ``1/m``: each plan sums to 1) or ``"unit"``
    (marginals of 1 per position, for square problems: rows and columns of the plan sum to 1).
    ``tol``: stop early when the row-marginal error falls below it (POT checks every 10 rounds); 0 runs
    exactly ``n_iter`` rounds.
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be [B, N, M], got shape {tuple(cost.shape)}")
    b, n, m = cost.shape
    if tuple(row_mask.shape) != (b, n) or tuple(col_mask.shape) != (b, m):
        raise ValueError(
            f"row_mask {tuple(row_mask.shape)} and col_mask {tuple(col_mask.shape)} must be {(b, n)} and {(b, m)}"
        )
    if not reg > 0:
        raise ValueError(f"reg must be positive, got {reg}")
    if mass not in ("probability", "unit"):
        raise ValueError(f"mass must be 'probability' or 'unit', got {mass!r}")
    if grad not in ("envelope", "autodiff"):
        raise ValueError(f"grad must be 'envelope' or 'autodiff', got {grad!r}")
    rows, cols = row_mask.to(cost.device, torch.bool), col_mask.to(cost.device, torch.bool)
    n_rows, n_cols = rows.sum(-1), cols.sum(-1)
    if mass == "unit" and not torch.equal(n_rows, n_cols):
        raise ValueError("mass='unit' needs as many rows as columns in every sequence")
    plan = cost.new_zeros(b, n, m)
    value = cost.new_zeros(b)
    live = ((n_rows > 0) & (n_cols > 0)).nonzero().flatten()
    if len(live) == 0:
        return Transport(plan, value, 0, 0.0)
    c = cost[live] if cost.dtype == torch.float64 else cost[live].float()
    a, w = rows[live].to(c.dtype), cols[live].to(c.dtype)
    if mass == "probability":
        a, w = a / a.sum(-1, keepdim=True), w / w.sum(-1, keepdim=True)
    pad = ~(rows[live, :, None] & cols[live, None, :])
    c = c.masked_fill(pad, 0.0)
    solver_cost = c.masked_fill(pad, PAD_SCALE * reg)  # exp(-PAD_SCALE) == 0: padding never enters a sum
    result = solve_batch(
        solver_cost if grad == "autodiff" else solver_cost.detach(),
        reg=reg,
        a=a,
        b=w,
        max_iter=n_iter,
        tol=tol,
        method="log_sinkhorn",
        grad="autodiff" if grad == "autodiff" else "detach",
    )
    p = result.plan.masked_fill(pad, 0.0)
    live_value = loss_linear_batch(c, p)
    plan = plan.index_copy(0, live, p.to(plan.dtype))
    value = value.index_copy(0, live, live_value.to(value.dtype))
    with torch.no_grad():
        row_error = torch.where(a > 0, (p.sum(-1) - a).abs() / a.clamp_min(1e-30), 0.0).amax()
        col_error = torch.where(w > 0, (p.sum(-2) - w).abs() / w.clamp_min(1e-30), 0.0).amax()
        error = torch.maximum(row_error, col_error)
    return Transport(plan, value, int(result.log["n_iter"]) + 1, float(error))
