"""The memory-lean engine the divergences run on: chunks of token rows, gradient computed in the forward.
(Also, at the end: softmax values at a few ranked columns of long rows, for MultiLevelOT.)

A naive divergence keeps several ``[tokens, V]`` float32 tensors alive for the backward (two
log-softmaxes, probabilities, products, their gradients). Here the valid tokens are walked in chunks of
rows; each chunk is upcast to float32, its per-token values *and* the gradient with respect to the
student logits are computed at once, the gradient is written (in the input dtype) into one buffer the
size of the student logits, and the chunk's float32 intermediates are freed before the next one. The
backward only scales that buffer (in place for a scalar loss). Peak memory above the inputs is therefore
the gradient itself plus one chunk's intermediates, whatever the number of tokens.

The gradient of a chunk comes from the formula's closed form with respect to ``u = z / tau`` when it has
one (``dL/dz = dL/du / tau``); otherwise from autograd
on that chunk alone. Masked rows are never read. The teacher is treated as a constant: a teacher that
needs a gradient is sent to the plain path by :func:`kdviz.divergences.divergence`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdviz._rows import check_values, compute_dtype, make_rows


@dataclass(frozen=True)
class ChunkBudget:
    """Bytes of one ``[rows, V]`` intermediate in the compute dtype: at least ``bytes``, and at least ``min_rows``
    rows unless that exceeds ``max_bytes``."""

    bytes: int
    min_rows: int
    max_bytes: int


# On a CPU small chunks are reused from the heap from one chunk to the next (the gradient is then the only memory
# faulted in per call), while intermediates of tens of MiB are mapped and faulted afresh in every chunk; but each
# operation costs a synchronisation of the threads, which on a loaded machine takes longer than the arithmetic of
# a few rows, so thousands of one-row chunks (V = 151936 at 512 KiB) are slow: hence a floor of rows. A GPU wants
# few large chunks (each kernel filling the device, one launch per operation) at a bounded transient memory.
# The floor stops at 4 MiB: at V = 151936 (1 thread, 512 rows) FKL forward + backward took 2.38 s in chunks of 32
# rows (19 MiB) and 0.94 s in chunks of 6 (4 MiB), 1.60 s and 0.54 s at 2 threads; head_tail at V = 262208, 192
# rows, 7.6 s at 32 rows and 2.6 s at 4 (it gets 3). Measurements: benchmarks/bench_divergences.py. The CPU's
# 512 KiB and floor of at most 32 rows keep the rows the demo's vocabularies (V <= 4096) always had,
# 512 KiB // (4 V): its results stay bit-identical (pinned by a test).
CHUNK_BUDGETS = {
    "cpu": ChunkBudget(bytes=512 * 2**10, min_rows=32, max_bytes=4 * 2**20),
    "cuda": ChunkBudget(bytes=128 * 2**20, min_rows=64, max_bytes=2**30),
}


def rows_per_chunk(
    device: torch.device | str, vocab: int, dtype: torch.dtype = torch.float32, cpu_bytes: int | None = None
) -> int:
    """Rows per chunk of ``[rows, V]`` logits on ``device`` under its :data:`CHUNK_BUDGETS` entry, one
    intermediate being ``V`` values of ``compute_dtype(dtype)`` per row. ``cpu_bytes`` replaces the CPU's
    ``bytes`` for a computation that wants larger chunks there. Every device but the CPU is budgeted as
    ``"cuda"``.

    The chunks never change the formula, only how many rows each operation sees. At V <= 4096 on a CPU in
    float32 they are ``512 KiB // (4 V)`` rows, as before this rule existed.
    """
    kind = "cpu" if torch.device(device).type == "cpu" else "cuda"
    budget = CHUNK_BUDGETS[kind]
    least = cpu_bytes if cpu_bytes is not None and kind == "cpu" else budget.bytes
    row_bytes = vocab * compute_dtype(dtype).itemsize
    return max(least // row_bytes, min(budget.min_rows, budget.max_bytes // row_bytes), 1)


def chunk_value_and_grad(
    formula: Callable, student: torch.Tensor, teacher: torch.Tensor, tau: float, stats: dict, params: dict,
    positions: torch.Tensor, grad: str | None = "closed", out: torch.Tensor | None = None, scale: float = 1.0,
    support: str = "full",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row values ``[c]`` and ``scale * dL/dz_student`` ``[c, V]`` of one chunk of raw logits.

    ``grad``: ``"closed"`` (the formula's closed form), ``"autograd"`` (this chunk only) or None.
    ``out``, if given, receives the gradient (any float dtype; written once). A non-finite value
    triggers the input check on this chunk only (``positions`` name the rows), so a NaN or ``+inf``
    logit is reported with its index without a separate pass over every input; an infinite divergence
    is reported as such (:func:`kdviz._rows.check_values`).
    """
    if grad == "autograd":
        with torch.enable_grad():
            leaf = student.detach().to(compute_dtype(student.dtype)).requires_grad_()
            values, _ = formula(make_rows(leaf, teacher, tau, support=support), stats, **params)
            check_values(values, student, teacher, positions)
            (dz,) = torch.autograd.grad(values.sum(), leaf)
        dz.mul_(scale)
    else:
        with torch.no_grad():
            rows = make_rows(student, teacher, tau, want_grad=grad == "closed", support=support)
            values, grad_u = formula(rows, stats, **params)
            check_values(values, student, teacher, positions)
            if grad is None:
                return values, None
            same = out is not None and out.dtype == grad_u.dtype
            dz = torch.mul(grad_u, scale / tau, out=out if same else None)  # written once into the buffer
            if same:
                return values, out
    if out is not None:
        out.copy_(dz)
        return values, out
    return values, dz


def first_order_only(what: str, alternative: str) -> None:
    """Raise inside a backward run with ``create_graph=True``: its gradient is a stored constant, so a
    second derivative through it would silently miss every second-order term."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{what} computes its gradient in the forward pass, so a backward with create_graph=True (double "
            f"backward, gradient penalties, Hessian-vector products) would silently drop the second-order "
            f"terms; {alternative}"
        )


class RowChunks:
    """The valid rows of ``[..., V]`` tensors, chunk by chunk: a view when a chunk's rows are contiguous
    in memory (the usual case), a gathered copy otherwise."""

    def __init__(self, mask: torch.Tensor, chunk_rows: int):
        self.positions = mask.nonzero()
        self.flat = mask.flatten().nonzero().squeeze(1)
        self.chunk_rows = chunk_rows

    def __iter__(self):
        for start in range(0, self.flat.shape[0], self.chunk_rows):
            ids = self.flat[start : start + self.chunk_rows]
            first, last = int(ids[0]), int(ids[-1])
            contiguous = last - first + 1 == ids.shape[0]
            yield (slice(first, last + 1) if contiguous else ids), self.positions[start : start + self.chunk_rows]

    @staticmethod
    def read(x: torch.Tensor, rows, positions: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous():
            flat = x.view(-1, x.shape[-1])
            return flat[rows] if isinstance(rows, slice) else flat.index_select(0, rows)
        return x[tuple(positions.T)]


class _ChunkedDivergence(torch.autograd.Function):
    """Forward: values and the scaled gradient, chunk by chunk. Backward: scale the stored gradient."""

    @staticmethod
    def forward(
        ctx, student, teacher, mask, formula, params, tau, factor, scale, chunk_rows, stats, grad_mode, support
    ):
        # scale: the reduction's factor (1/count for mean, 1 for sum) or None for reduction="none"
        values = torch.zeros(mask.numel(), dtype=compute_dtype(student.dtype), device=student.device)
        grad = grad_rows = None
        if grad_mode:  # every valid row is written below: only the masked rows need zeros
            grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
            grad_rows = grad.view(-1, student.shape[-1])
            grad_rows.index_fill_(0, (~mask.flatten()).nonzero().squeeze(1), 0)
        grad_scale = factor * (1.0 if scale is None else scale)
        for rows, positions in RowChunks(mask, chunk_rows):
            target = None
            if grad_rows is not None:
                target = grad_rows[rows] if isinstance(rows, slice) else None
            v, g = chunk_value_and_grad(
                formula, RowChunks.read(student, rows, positions), RowChunks.read(teacher, rows, positions), tau,
                stats, params, positions, grad_mode, out=target, scale=grad_scale, support=support,
            )
            values[rows] = v
            if g is not None and target is None:
                grad_rows.index_copy_(0, rows, g.to(grad.dtype))
        ctx.grad = grad
        ctx.per_token = scale is None
        values = values.view(mask.shape) * factor
        return values if scale is None else values.sum() * scale

    @staticmethod
    def backward(ctx, grad_out):
        first_order_only("the chunked divergence engine", "pass engine='plain' for higher-order gradients")
        grad = ctx.grad
        if ctx.per_token:  # a vector upstream (per-token weights, Jacobians): keep the buffer, allocate
            return grad * grad_out.unsqueeze(-1).to(grad.dtype), *([None] * 11)
        if grad is None:
            raise RuntimeError(
                "backward through a chunked divergence ran twice (retain_graph); the chunked engine hands "
                "its stored gradient over in the first backward: use engine='plain'"
            )
        ctx.grad = None  # the only reference left is the one returned: autograd can adopt it without a copy
        if not bool(grad_out == 1):
            grad.mul_(grad_out.to(grad.dtype))
        return grad, *([None] * 11)


def chunked(
    formula: Callable, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, *, tau: float,
    reduction: str, factor: float, num_items, chunk_rows: int | None, stats: dict, params: dict,
    closed_form: bool = True, support: str = "full",
) -> torch.Tensor:
    """Run ``formula`` over the valid rows of checked ``[..., V]`` logits; reduce as asked.

    ``factor`` multiplies every value (``tau**2`` under ``tau_squared``). Returns a scalar for
    ``"mean"``/``"sum"``, the per-token tensor for ``"none"``. ``closed_form=False`` differentiates each
    chunk with autograd (formulas without a closed-form gradient).
    """
    chunk_rows = chunk_rows or rows_per_chunk(student.device, student.shape[-1], student.dtype)
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number of token rows, got {chunk_rows}")
    count = int(mask.sum())
    if reduction == "none":
        scale = None
    elif reduction == "sum":
        scale = 1.0
    else:
        scale = 1.0 / float(num_items if num_items is not None else max(count, 1))
    stats["tokens"] = stats.get("tokens", 0) + count
    grad_mode = None
    if torch.is_grad_enabled() and student.requires_grad:
        grad_mode = "closed" if closed_form else "autograd"
    return _ChunkedDivergence.apply(
        student, teacher.detach(), mask, formula, params, tau, factor, scale, chunk_rows, stats, grad_mode, support
    )


# -- Softmax values at a few columns -----------------------------------------------------------------
# Losses that truncate to ranked columns (MultiLevelOT keeps k = 50 of V) need, per row r of logits z_r [V]
# at temperature tau, log p_r(i) = z_ri / tau - LSE_r at k columns only, plus the column sums sum_r p_r(j)
# over a group of rows (a sequence) for the ranking. Whole-row log_softmax keeps [rows, V] float32 tensors
# alive for the backward at each temperature; here LSE_r is computed chunk by chunk of rows and
# differentiated in closed form, d LSE_r / d z_r = p_r / tau, recomputed chunk by chunk in the backward; the
# picked columns are plain indexing. Rows are named by ``index`` [N] into ``z`` [R, V] (a flattened
# [B, T, V] logits tensor: no copy) and may repeat.


class _RowLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, index, tau):
        out = torch.empty(index.shape[0], dtype=compute_dtype(z.dtype), device=z.device)
        step = rows_per_chunk(z.device, z.shape[-1], z.dtype)
        for start in range(0, index.shape[0], step):
            rows = index[start : start + step]
            out[start : start + step] = torch.logsumexp(z[rows].to(out.dtype) / tau, -1)
        ctx.save_for_backward(z, index, out)
        ctx.tau = tau
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, index, lse = ctx.saved_tensors
        grad = torch.zeros_like(z)
        step = rows_per_chunk(z.device, z.shape[-1], z.dtype)
        for start in range(0, index.shape[0], step):
            rows, chunk = index[start : start + step], slice(start, start + step)
            p = torch.exp(z[rows].to(lse.dtype) / ctx.tau - lse[chunk, None])
            grad.index_add_(0, rows, (p * (grad_out[chunk, None] / ctx.tau)).to(grad.dtype))
        return grad, None, None


def row_logsumexp(z: torch.Tensor, index: torch.Tensor, tau: float) -> torch.Tensor:
    """``[N]``: ``LSE_r = log sum_j exp(z[index_r, j] / tau)``, differentiable with respect to ``z``."""
    return _RowLogSumExp.apply(z, index, tau)


def log_softmax_at(z: torch.Tensor, index: torch.Tensor, lse: torch.Tensor, columns: torch.Tensor, tau: float):
    """``[N, k]``: ``log p_r(i) = z[index_r, i] / tau - LSE_r`` at ``columns`` ``[N, k]``."""
    picked = z[index[:, None], columns].to(lse.dtype)
    return picked / tau - lse[:, None]


@torch.no_grad()
def column_mass(
    z: torch.Tensor, index: torch.Tensor, lse: torch.Tensor, tau: float, group: torch.Tensor, groups: int
) -> torch.Tensor:
    """``[groups, V]``: ``sum_r p_r(j)`` over the rows of each group (``group`` ``[N]``: a row's group, or
    -1 for a row that counts nowhere). No gradient: it only ranks columns."""
    sums = torch.zeros(groups + 1, z.shape[-1], dtype=lse.dtype, device=z.device)
    slot = torch.where(group < 0, groups, group)
    step = rows_per_chunk(z.device, z.shape[-1], z.dtype)
    for start in range(0, index.shape[0], step):
        chunk = slice(start, start + step)
        p = torch.exp(z[index[chunk]].to(lse.dtype) / tau - lse[chunk, None])
        sums.index_add_(0, slot[chunk], p)
    return sums[:groups]


class _RowCrossEntropy(torch.autograd.Function):
    """Forward: per-row CE and, when ``z`` needs a gradient, ``softmax - onehot`` written into one buffer
    from the same ``exp`` pass. Backward: that buffer scaled row by row in place, handed over once; a
    second backward (``retain_graph``) or one with ``create_graph=True`` recomputes it from ``z`` with
    differentiable operations."""

    @staticmethod
    def forward(ctx, z, index, targets):
        out = torch.empty(index.shape[0], dtype=compute_dtype(z.dtype), device=z.device)
        lse = torch.empty_like(out)
        ctx.grad = torch.zeros_like(z) if ctx.needs_input_grad[0] else None
        step = rows_per_chunk(z.device, z.shape[-1], z.dtype)
        for start in range(0, index.shape[0], step):
            chunk = slice(start, start + step)
            rows = z[index[chunk]].to(out.dtype)
            top = rows.amax(-1, keepdim=True)
            e = torch.exp(rows - top)
            total = e.sum(-1, keepdim=True)
            lse[chunk] = (top + total.log()).squeeze(-1)
            out[chunk] = lse[chunk] - rows.gather(-1, targets[chunk, None]).squeeze(-1)
            if ctx.grad is not None:
                ctx.grad.index_copy_(0, index[chunk], _minus_onehot(e.div_(total), targets[chunk]).to(z.dtype))
        ctx.save_for_backward(z, index, targets, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, index, targets, lse = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if grad is None or torch.is_grad_enabled():  # a second backward, or create_graph=True: recompute
            grad = torch.zeros_like(z)
            step = rows_per_chunk(z.device, z.shape[-1], z.dtype)
            for start in range(0, index.shape[0], step):
                chunk = slice(start, start + step)
                p = torch.softmax(z[index[chunk]].to(lse.dtype), -1)  # differentiable: exact second derivatives
                onehot = torch.zeros_like(p).scatter_(-1, targets[chunk, None], 1.0)
                grad.index_copy_(0, index[chunk], (p - onehot).to(z.dtype))
        row_scale = grad_out.new_zeros(z.shape[0]).index_copy(0, index, grad_out)
        if torch.is_grad_enabled():
            return grad * row_scale[:, None], None, None
        return grad.mul_(row_scale[:, None]), None, None  # float32 scale: one rounding for bf16


def _minus_onehot(p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p[torch.arange(p.shape[0], device=p.device), targets] -= 1.0
    return p


def row_cross_entropy(z: torch.Tensor, index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]``: ``CE_r = LSE(z[index_r]) - z[index_r, targets_r]``, in chunks of rows; its gradient
    ``softmax - onehot`` is recomputed chunk by chunk into one buffer the size of ``z``."""
    return _RowCrossEntropy.apply(z, index, targets)
