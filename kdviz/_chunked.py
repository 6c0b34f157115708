"""The memory-lean engine the divergences run on: chunks of token rows, gradient computed in the forward.

A naive divergence keeps several ``[tokens, V]`` float32 tensors alive for the backward (two
log-softmaxes, probabilities, products, their gradients). Here the valid tokens are walked in chunks of
rows; each chunk is upcast to float32, its per-token values *and* the gradient with respect to the
student logits are computed at once, the gradient is written (in the input dtype) into one buffer the
size of the student logits, and the chunk's float32 intermediates are freed before the next one. The
backward only scales that buffer (in place for a scalar loss). Peak memory above the inputs is therefore
the gradient itself plus one chunk's intermediates, whatever the number of tokens.

The gradient of a chunk comes from the formula's closed form ``g = dL/d(log q)`` when it has one, pushed
through the temperature-scaled log-softmax, ``dL/dz = (g - q * sum_v g) / tau``; otherwise from autograd
on that chunk alone. Masked rows are never read. The teacher is treated as a constant: a teacher that
needs a gradient is sent to the plain path by :func:`kdviz.divergences.divergence`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kdviz._rows import check_finite, compute_dtype, make_rows

CHUNK_BYTES = 4 * 2**20  # float32 bytes of one [rows, V] intermediate: ~4 MiB keeps a chunk in cache


def auto_chunk_rows(vocab: int) -> int:
    """Rows per chunk so that one float32 ``[rows, V]`` intermediate is about ``CHUNK_BYTES``."""
    return max(1, CHUNK_BYTES // (4 * vocab))


def chunk_value_and_grad(
    formula: Callable, student: torch.Tensor, teacher: torch.Tensor, tau: float, stats: dict, params: dict,
    positions: torch.Tensor, grad: str | None = "closed",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row values ``[c]`` and ``dL/dz_student`` ``[c, V]`` (compute dtype) of one chunk of raw logits.

    ``grad``: ``"closed"`` (the formula's closed form), ``"autograd"`` (this chunk only) or None.
    A non-finite value triggers the input check on this chunk only (``positions`` name the rows), so a
    NaN or ``+inf`` logit is reported with its index without a separate pass over every input.
    """
    if grad == "autograd":
        with torch.enable_grad():
            leaf = student.detach().to(compute_dtype(student.dtype)).requires_grad_()
            values, _ = formula(make_rows(leaf, teacher, tau), stats, **params)
            _check_chunk(values, student, teacher, positions)
            (dz,) = torch.autograd.grad(values.sum(), leaf)
        return values.detach(), dz
    with torch.no_grad():
        rows = make_rows(student, teacher, tau, want_grad=grad == "closed")
        values, grad_logq = formula(rows, stats, **params)
        _check_chunk(values, student, teacher, positions)
        if grad is None:
            return values, None
        return values, (grad_logq - rows.q * grad_logq.sum(-1, keepdim=True)) / tau


def _check_chunk(values, student, teacher, positions) -> None:
    if not bool(torch.isfinite(values).all()):
        check_finite("student_logits", student, positions)
        check_finite("teacher_logits", teacher, positions)


class _ChunkedDivergence(torch.autograd.Function):
    """Forward: values and the scaled gradient, chunk by chunk. Backward: scale the stored gradient."""

    @staticmethod
    def forward(ctx, student, teacher, positions, formula, params, tau, factor, scale, chunk_rows, stats, grad_mode):
        # scale: the reduction's factor (1/count for mean, 1 for sum) or None for reduction="none"
        need_grad = grad_mode is not None
        index = tuple(positions.T)
        values = torch.zeros(student.shape[:-1], dtype=compute_dtype(student.dtype), device=student.device)
        grad = torch.zeros_like(student) if need_grad else None
        grad_scale = factor * (1.0 if scale is None else scale)
        for start in range(0, positions.shape[0], chunk_rows):
            rows = tuple(i[start : start + chunk_rows] for i in index)
            v, g = chunk_value_and_grad(
                formula, student[rows], teacher[rows], tau, stats, params, positions[start : start + chunk_rows],
                grad_mode,
            )
            values[rows] = v
            if need_grad:
                grad[rows] = (g * grad_scale).to(grad.dtype)
        ctx.grad = grad
        ctx.per_token = scale is None
        values = values * factor
        return values if scale is None else values.sum() * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad = ctx.grad
        if ctx.per_token:  # a vector upstream (per-token weights, Jacobians): keep the buffer, allocate
            return grad * grad_out.unsqueeze(-1).to(grad.dtype), *([None] * 10)
        if grad is None:
            raise RuntimeError(
                "backward through a chunked divergence ran twice (retain_graph); the chunked engine hands "
                "its stored gradient over in the first backward: use engine='plain'"
            )
        ctx.grad = None  # the only reference left is the one returned: autograd can adopt it without a copy
        if not bool(grad_out == 1):
            grad.mul_(grad_out.to(grad.dtype))
        return grad, *([None] * 10)


def chunked(
    formula: Callable, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, *, tau: float,
    reduction: str, factor: float, num_items, chunk_rows: int | None, stats: dict, params: dict,
    closed_form: bool = True,
) -> torch.Tensor:
    """Run ``formula`` over the valid rows of checked ``[..., V]`` logits; reduce as asked.

    ``factor`` multiplies every value (``tau**2`` under ``tau_squared``). Returns a scalar for
    ``"mean"``/``"sum"``, the per-token tensor for ``"none"``. ``closed_form=False`` differentiates each
    chunk with autograd (formulas without a closed-form gradient).
    """
    positions = mask.nonzero()
    chunk_rows = chunk_rows or auto_chunk_rows(student.shape[-1])
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number of token rows, got {chunk_rows}")
    if reduction == "none":
        scale = None
    elif reduction == "sum":
        scale = 1.0
    else:
        scale = 1.0 / float(num_items if num_items is not None else max(positions.shape[0], 1))
    stats["tokens"] = stats.get("tokens", 0) + positions.shape[0]
    grad_mode = None
    if torch.is_grad_enabled() and student.requires_grad:
        grad_mode = "closed" if closed_form else "autograd"
    return _ChunkedDivergence.apply(
        student, teacher.detach(), positions, formula, params, tau, factor, scale, chunk_rows, stats, grad_mode
    )
