"""The memory-lean engine the divergences run on: chunks of token rows, gradient computed in the forward.

A naive divergence keeps several ``[tokens, V]`` float32 tensors alive for the backward (two
log-softmaxes, probabilities, products, their gradients). Here the valid tokens are walked in chunks of
rows; each chunk is upcast to float32, its per-token values *and* the gradient with respect to the
student logits are computed at once, the gradient is written (in the input dtype) into one buffer the
size of the student logits, and the next chunk's float32 intermediates overwrite them (one set of work
buffers per call, :class:`kdviz.ops.rows.Scratch`: a fresh page is slow to fault in on a CPU). The
backward only scales that buffer (in place for a scalar loss). Peak memory above the inputs is therefore
the gradient itself plus one chunk's intermediates, whatever the number of tokens.

The gradient of a chunk comes from the formula's closed form with respect to ``u = z / tau`` when it has
one (``dL/dz = dL/du / tau``); otherwise from autograd
on that chunk alone. Masked rows are never read. The teacher is treated as a constant: a teacher that
needs a gradient is sent to the plain path by :func:`kdviz.divergences.divergence`.

A formula that returns ``None`` as its gradient has no closed form (:func:`has_closed_form`): the engine
then differentiates each chunk with autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from kdviz.ops.budget import compute_dtype, rows_per_chunk
from kdviz.ops.checks import check_values
from kdviz.ops.rows import Scratch, make_rows


def has_closed_form(formula: Callable, params: dict) -> bool:
    """Whether ``formula`` returns a gradient next to its value (rather than None) under ``params``: asked
    once per formula and parameters, on one two-entry row, so a formula only has to return None to be
    differentiated with autograd."""
    key = tuple(sorted(params.items()))
    try:
        return _probe(formula, key)
    except TypeError:  # a parameter that cannot be hashed: ask again
        return _probe.__wrapped__(formula, key)


@functools.lru_cache(maxsize=256)
def _probe(formula: Callable, params: tuple) -> bool:
    probe = torch.zeros(1, 2, dtype=torch.float64)
    with torch.no_grad():
        _, grad = formula(make_rows(probe, probe, 1.0, want_grad=True), {}, **dict(params))
    return grad is not None


def chunk_value_and_grad(
    formula: Callable, student: torch.Tensor, teacher: torch.Tensor, tau: float, stats: dict, params: dict,
    positions: torch.Tensor, grad: str | None = "closed", out: torch.Tensor | None = None, scale: float = 1.0,
    support: str = "full", scratch: Scratch | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row values ``[c]`` and ``scale * dL/dz_student`` ``[c, V]`` of one chunk of raw logits.

    ``grad``: ``"closed"`` (the formula's closed form), ``"autograd"`` (this chunk only) or None.
    ``out``, if given, receives the gradient (any float dtype; written once). A non-finite value
    triggers the input check on this chunk only (``positions`` name the rows), so a NaN or ``+inf``
    logit is reported with its index without a separate pass over every input; an infinite divergence
    is reported as such (:func:`kdviz.ops.check_values`). ``scratch`` (not with ``"autograd"``) holds the
    chunk's intermediates, reused from one chunk to the next.
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
            rows = make_rows(student, teacher, tau, want_grad=grad == "closed", support=support, scratch=scratch)
            values, grad_u = formula(rows, stats, **params)
            check_values(values, student, teacher, positions)
            if grad is None:
                return values, None
            if grad_u is None:
                raise RuntimeError(
                    f"the formula {getattr(formula, '__name__', formula)!r} returned a gradient for one row and None "
                    "for others; a formula without a closed-form gradient returns None for every row"
                )
            same = out is not None and out.dtype == grad_u.dtype
            reuse = out if same else grad_u if scratch is not None else None  # a scratch temporary: overwritten
            dz = torch.mul(grad_u, scale / tau, out=reuse)  # written once into the buffer
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
        chunks = RowChunks(mask, chunk_rows)
        scratch = None
        if grad_mode != "autograd":
            rows_at_most = min(chunk_rows, chunks.flat.shape[0])
            scratch = Scratch(rows_at_most, student.shape[-1], values.dtype, student.device)
        for rows, positions in chunks:
            target = None
            if grad_rows is not None:
                target = grad_rows[rows] if isinstance(rows, slice) else None
            v, g = chunk_value_and_grad(
                formula, RowChunks.read(student, rows, positions), RowChunks.read(teacher, rows, positions), tau,
                stats, params, positions, grad_mode, out=target, scale=grad_scale, support=support, scratch=scratch,
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
    support: str = "full",
) -> torch.Tensor:
    """Run ``formula`` over the valid rows of checked ``[..., V]`` logits; reduce as asked.

    ``factor`` multiplies every value (``tau**2`` under ``tau_squared``). Returns a scalar for
    ``"mean"``/``"sum"``, the per-token tensor for ``"none"``. A formula without a closed-form gradient
    (:func:`has_closed_form`) is differentiated with autograd, chunk by chunk.
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
        grad_mode = "closed" if has_closed_form(formula, params) else "autograd"
    return _ChunkedDivergence.apply(
        student, teacher.detach(), mask, formula, params, tau, factor, scale, chunk_rows, stats, grad_mode, support
    )

