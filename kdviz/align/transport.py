"""Entropic optimal transport between the positions of padded sequences, batched.

For sequence ``b`` with ``n_b`` rows and ``m_b`` columns of a padded cost ``C [B, N, M]`` and marginals
``a_b``, ``c_b`` (uniform by default: ``1/n_b``, ``1/m_b``), Sinkhorn solves::

    P_b = argmin_{P 1 = a_b, P^T 1 = c_b}  <P, C_b> - reg H(P)

from ``g = 1`` (``v = 0``) by ``f = a / (K g)``, ``g = c / (K^T f)`` with ``K = exp(-C / reg)``, or in the
log domain ``u = log a - LSE_j(-C/reg + v)``, ``v = log c - LSE_i(-C/reg + u)``; ``P = diag(f) K diag(g)``.
The two give the same iterates; the log domain never underflows, the plain one is two batched
vector-matrix products per round. The log domain is POT's ``ot.solve_batch(method="log_sinkhorn")``.
The plain domain runs the same rounds as ``ot.solve_batch(method="sinkhorn")`` (tested equal) but as
``torch.bmm`` row-vector products: POT's batch solver forms ``K * g`` and sums it, which moves three times
the bytes (timings: ``benchmarks/README.md``). ``domain="auto"`` takes the plain
one when it is exact in the dtype -- the cost of each sequence, shifted by its minimum (the plan does not
change), spans at most ``50 reg`` (float32) or ``500 reg`` (float64), so that no kernel entry underflows
(always true for MultiLevelOT's SD: its costs lie in ``[0, 2]``) -- and the log domain otherwise.

Padding: in the plain domain, padded positions get zero marginals, kernel entries 1 and zero scalings
(``f = 0``, ``g = 0``; ``g`` starts at 1 on real columns only), so each sequence gets exactly the iterates
it would get alone and its plan is 0 off the real block. In the log domain, POT's solver starts from
``v = 0`` on every column, so the padding is block-diagonal instead: one extra row and column are
appended, padded rows and columns form a separate block (cost 0, marginals summing to 1 on each side),
and the entries between real and padded positions cost ``+inf`` (kernel exactly 0; a large finite cost
would be as exact, but sends the solver's ``exp`` down its slow underflow path). Sequences
with an empty side get an all-zero plan. ``cost`` must be finite at every position (padded ones too); a
non-finite plan raises instead of returning NaN.

``grad="envelope"``: the plan is a constant and ``<P, C>`` is differentiated through ``C`` only (the
envelope theorem); ``grad="autodiff"``: gradients flow through every iteration, as in code that
backpropagates through a hand-written Sinkhorn loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CHECK_EVERY = 10  # rounds between early-stopping checks, as POT's solvers

PLAIN_SPAN = {torch.float32: 50.0, torch.float64: 500.0}
DOMAINS = ("auto", "log", "plain")


@dataclass
class Transport:
    """A batch of plans ``[B, N, M]`` and what the solver did.

    ``value`` ``[B]`` is ``<P_b, C_b>`` (attached to ``C`` according to ``grad``); ``iterations`` the
    number of Sinkhorn rounds run; ``marginal_error`` the largest deviation of a row or column sum of any
    plan from its marginal, relative to that marginal entry (``|P 1 - a|_i / a_i``); ``domain`` the
    iteration used (``"plain"`` or ``"log"``).
    """

    plan: torch.Tensor
    value: torch.Tensor
    iterations: int
    marginal_error: float
    domain: str = "log"


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
    domain: str = "auto",
) -> Transport:
    """Solve the batch of position-transport problems of the module docstring.

    ``cost`` ``[B, N, M]``; ``row_mask`` ``[B, N]`` and ``col_mask`` ``[B, M]`` bool mark real positions.
    ``mass``: ``"probability"`` (uniform marginals ``1/n``, ``1/m``: each plan sums to 1) or ``"unit"``
    (marginals of 1 per position, for square problems: rows and columns of the plan sum to 1).
    ``tol``: stop early when the row-marginal error falls below it (POT checks every 10 rounds); 0 runs
    exactly ``n_iter`` rounds. ``domain``: ``"auto"``, ``"log"`` or ``"plain"`` (see the module docstring).
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
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    if mass not in ("probability", "unit"):
        raise ValueError(f"mass must be 'probability' or 'unit', got {mass!r}")
    if grad not in ("envelope", "autodiff"):
        raise ValueError(f"grad must be 'envelope' or 'autodiff', got {grad!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    rows, cols = row_mask.to(cost.device, torch.bool), col_mask.to(cost.device, torch.bool)
    n_rows, n_cols = rows.sum(-1), cols.sum(-1)
    if mass == "unit" and not torch.equal(n_rows, n_cols):
        raise ValueError("mass='unit' needs as many rows as columns in every sequence")
    live = ((n_rows > 0) & (n_cols > 0)).nonzero().flatten()
    if len(live) == 0:
        return Transport(cost.new_zeros(b, n, m), cost.new_zeros(b), 0, 0.0, "log" if domain == "auto" else domain)
    all_live = len(live) == b
    c = cost if all_live else cost[live]
    c = c if c.dtype == torch.float64 else c.float()
    if not all_live:
        rows, cols = rows[live], cols[live]
    a, w = rows.to(c.dtype), cols.to(c.dtype)  # zero on padded positions
    if mass == "probability":
        a, w = a / a.sum(-1, keepdim=True), w / w.sum(-1, keepdim=True)
    padded = not (bool(rows.all()) and bool(cols.all()))
    with torch.no_grad():
        lowest, highest = _real_extremes(c, rows, cols) if padded else (c.amin((1, 2)), c.amax((1, 2)))
        span = float((highest - lowest).amax()) / reg
    if not math.isfinite(span):
        raise ValueError("cost must be finite at every position (padded ones too), got inf or NaN")
    if domain == "auto":
        domain = "plain" if span <= PLAIN_SPAN.get(c.dtype, 0.0) else "log"
    solver_cost = c if grad == "autodiff" else c.detach()
    if domain == "plain":
        p, iterations = _plain_sinkhorn(solver_cost, lowest, a, w, padded, reg, n_iter, tol)
    else:
        real = rows[:, :, None] & cols[:, None, :] if padded else None
        p, iterations = _log_sinkhorn(solver_cost - lowest[:, None, None], real, a, w, reg, n_iter, tol, grad)
    from ot.batch import loss_linear_batch  # POT is imported when a plan is first solved, not with kdviz

    live_value = loss_linear_batch(c, p)  # P is 0 on padded positions
    if not bool(torch.isfinite(live_value).all()):
        raise ValueError(
            "the transport plan is not finite: cost must be finite at every position (padded ones too), and "
            f"domain='plain' needs a cost span of at most {PLAIN_SPAN.get(c.dtype, 0.0):g} reg (this one: {span:.3g})"
        )
    with torch.no_grad():
        error = max(_relative_error(p.sum(-1), a), _relative_error(p.sum(-2), w))
    if all_live:
        plan, value = p.to(cost.dtype), live_value.to(cost.dtype)
    else:
        plan = cost.new_zeros(b, n, m).index_copy(0, live, p.to(cost.dtype))
        value = cost.new_zeros(b).index_copy(0, live, live_value.to(cost.dtype))
    return Transport(plan, value, iterations, error, domain)


def _real_extremes(cost, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``(min, max)`` ``[B]`` of the cost over real entries (real rows x real columns)."""
    hide_cols = torch.zeros_like(cols, dtype=cost.dtype).masked_fill(~cols, float("inf"))[:, None, :]
    lowest = (cost + hide_cols).amin(-1).masked_fill(~rows, float("inf")).amin(-1)
    highest = (cost - hide_cols).amax(-1).masked_fill(~rows, float("-inf")).amax(-1)
    return lowest, highest


def _relative_error(sums: torch.Tensor, marginal: torch.Tensor) -> float:
    """``max_i |sums_i - marginal_i| / marginal_i`` over positive marginal entries (padded sums are 0)."""
    return float(((sums - marginal).abs() / marginal.clamp_min(torch.finfo(marginal.dtype).tiny)).amax())


def _plain_sinkhorn(cost, shift, a, w, padded: bool, reg: float, n_iter: int, tol: float) -> tuple[torch.Tensor, int]:
    """The plain-domain rounds of the module docstring on ``K = exp((shift - C) / reg)``: ``f = a / (K g)``,
    ``g = w / (K^T f)``, as ``[B, 1, N]`` row vectors times ``[B, N, M]`` matrices. Padded positions are the
    zero entries of the marginals: their kernel entries are 1, they start with ``g = 0`` and stay at
    ``f = 0``, ``g = 0``, so each sequence gets exactly the iterates it would get alone. Every
    ``CHECK_EVERY`` rounds (after rounds 1, 11, 21, ...), stops when ``max_b |f * (K g) - a|_2 < tol``, as
    ``ot.solve_batch``. Returns the plan ``diag(f) K diag(g)`` and the number of rounds run."""
    scale = 1.0 / (reg * math.log(2.0))  # the kernel as exp2, cheaper than exp on a CPU (benchmarks/README.md)
    exponent = torch.add(shift[:, None, None] * scale, cost, alpha=-scale)
    a_row, w_row = a[:, None, :], w[:, None, :]
    if padded:
        exponent = exponent.mul_((a > 0)[:, :, None]).mul_(w_row > 0)
    kernel = exponent.exp2_()
    kernel_t, g = kernel.transpose(1, 2), (w_row > 0).to(kernel.dtype)
    rounds = 0
    while rounds < n_iter:
        f = a_row / torch.bmm(g, kernel_t)
        g = w_row / torch.bmm(f, kernel)
        rounds += 1
        if tol > 0 and rounds % CHECK_EVERY == 1:
            rows = f * torch.bmm(g, kernel_t)
            if float(torch.linalg.vector_norm(rows - a_row, dim=-1).amax()) < tol:
                break
    return (kernel * f.transpose(1, 2)).mul_(g), rounds


def _log_sinkhorn(cost, real, a, w, reg: float, n_iter: int, tol: float, grad: str):
    """POT's log-domain batch solver; a padded batch (``real`` ``[B, N, M]`` bool) goes through
    :func:`_block_padding`. Returns the plan ``[B, N, M]`` and the number of rounds run."""
    from ot.batch import solve_batch

    b, n, m = cost.shape
    if real is not None:
        cost, a, w = _block_padding(cost.masked_fill(~real, 0.0), real, a, w)
    result = solve_batch(cost, reg=reg, a=a, b=w, max_iter=n_iter, tol=tol, method="log_sinkhorn",
                         grad="autodiff" if grad == "autodiff" else "detach")
    plan = result.plan if real is None else result.plan[:, :n, :m].masked_fill(~real, 0.0)
    return plan, int(result.log["n_iter"]) + 1


def _block_padding(cost, real, a, w):
    """The cost ``[B, N+1, M+1]`` and marginals with the padded positions as a separate block."""
    b, n, m = cost.shape
    rows_real, cols_real = real.any(-1), real.any(-2)
    pad_rows = torch.cat([~rows_real, rows_real.new_ones(b, 1)], 1)
    pad_cols = torch.cat([~cols_real, cols_real.new_ones(b, 1)], 1)
    ext = torch.nn.functional.pad(cost, (0, 1, 0, 1))
    cross = (pad_rows[:, :, None] != pad_cols[:, None, :])
    ext = ext.masked_fill(cross, float("inf"))
    a_ext = torch.cat([a, a.new_zeros(b, 1)], 1) + pad_rows / pad_rows.sum(-1, keepdim=True)
    w_ext = torch.cat([w, w.new_zeros(b, 1)], 1) + pad_cols / pad_cols.sum(-1, keepdim=True)
    return ext, a_ext, w_ext
