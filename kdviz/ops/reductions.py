"""Row reductions of ``[R, V]`` logits in chunks of rows, with closed-form gradients: log-sum-exp, softmax values
at a few columns, column sums of the softmax, and the cross-entropy used by every method and by
:func:`kdviz.fused_divergence`.

Rows are named by ``index`` ``[N]`` into ``z`` ``[R, V]`` (a flattened ``[B, T, V]`` logits tensor: no copy)
and may repeat. Whole-row ``log_softmax`` keeps ``[rows, V]`` float32 tensors alive for the backward; here
each function keeps at most one chunk of them (:func:`kdviz.ops.budget.rows_per_chunk`) plus its gradient.
"""

from __future__ import annotations

import torch

from kdviz.ops.budget import compute_dtype, rows_per_chunk
from kdviz.ops.targets import IGNORE

# -- Softmax values at a few columns -----------------------------------------------------------------
# Losses that truncate to ranked columns (MultiLevelOT keeps k = 50 of V) need, per row r of logits z_r [V]
# at temperature tau, log p_r(i) = z_ri / tau - LSE_r at k columns only, plus the column sums sum_r p_r(j)
# over a group of rows (a sequence) for the ranking. LSE_r is computed chunk by chunk of rows and
# differentiated in closed form, d LSE_r / d z_r = p_r / tau, recomputed chunk by chunk in the backward; the
# picked columns are plain indexing.


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


# -- Cross-entropy -----------------------------------------------------------------------------------


def chunk_cross_entropy(
    rows: torch.Tensor, targets: torch.Tensor, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of rows ``[c, V]`` (in the compute dtype) and their target ids ``[c]``:
    ``CE = LSE(rows) - rows[target]`` ``[c]`` and, when ``want_grad``, the gradient
    ``dCE/drows = softmax(rows) - onehot(target)`` ``[c, V]``, built in place from the same ``exp`` pass (one
    ``[c, V]`` buffer besides ``rows``)."""
    top = rows.amax(-1, keepdim=True)
    e = torch.sub(rows, top).exp_()
    total = e.sum(-1, keepdim=True)
    ce = (top + total.log()).squeeze(-1) - rows.gather(-1, targets[:, None]).squeeze(-1)
    if not want_grad:
        return ce, None
    softmax = e.div_(total)
    softmax[torch.arange(softmax.shape[0], device=softmax.device), targets] -= 1.0
    return ce, softmax


class _RowCrossEntropy(torch.autograd.Function):
    """Forward: per-row CE and, when ``z`` needs a gradient, ``softmax - onehot`` written into one buffer
    from the same ``exp`` pass. Backward: that buffer scaled row by row in place, handed over once; a
    second backward (``retain_graph``) or one with ``create_graph=True`` recomputes it from ``z`` with
    differentiable operations."""

    @staticmethod
    def forward(ctx, z, index, targets):
        out = torch.empty(index.shape[0], dtype=compute_dtype(z.dtype), device=z.device)
        ctx.grad = torch.zeros_like(z) if ctx.needs_input_grad[0] else None
        step = rows_per_chunk(z.device, z.shape[-1], z.dtype)
        for start in range(0, index.shape[0], step):
            chunk = slice(start, start + step)
            out[chunk], grad = chunk_cross_entropy(
                z[index[chunk]].to(out.dtype), targets[chunk], ctx.grad is not None
            )
            if grad is not None:
                ctx.grad.index_copy_(0, index[chunk], grad.to(z.dtype))
        ctx.save_for_backward(z, index, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, index, targets = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if grad is None or torch.is_grad_enabled():  # a second backward, or create_graph=True: recompute
            grad = torch.zeros_like(z)
            step = rows_per_chunk(z.device, z.shape[-1], z.dtype)
            for start in range(0, index.shape[0], step):
                chunk = slice(start, start + step)
                # differentiable operations: exact second derivatives
                p = torch.softmax(z[index[chunk]].to(compute_dtype(z.dtype)), -1)
                onehot = torch.zeros_like(p).scatter_(-1, targets[chunk, None], 1.0)
                grad.index_copy_(0, index[chunk], (p - onehot).to(z.dtype))
        row_scale = grad_out.new_zeros(z.shape[0]).index_copy(0, index, grad_out)
        if torch.is_grad_enabled():
            return grad * row_scale[:, None], None, None
        return grad.mul_(row_scale[:, None]), None, None  # float32 scale: one rounding for bf16


def row_cross_entropy(z: torch.Tensor, index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]``: ``CE_r = LSE(z[index_r]) - z[index_r, targets_r]``, in chunks of rows; its gradient
    ``softmax - onehot`` is recomputed chunk by chunk into one buffer the size of ``z``."""
    return _RowCrossEntropy.apply(z, index, targets)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean CE over ``targets != -100`` in float32 (float64 stays float64; 0 with zero gradients when
    nothing is valid), in chunks of rows (:func:`row_cross_entropy`): the only ``[B, T, V]``
    tensor it adds is the gradient.

    Returns ``(mean, per_token)`` with ``per_token`` ``[B, T]`` (0 where not valid).
    """
    vocab = logits.shape[-1]
    flat_targets = targets.flatten()
    index = (flat_targets != IGNORE).nonzero().squeeze(1)
    picked = flat_targets[index]
    if len(picked) and not (0 <= int(picked.min()) and int(picked.max()) < vocab):
        raise ValueError(
            f"targets must be -100 or a token id in [0, {vocab}) (the logits' vocabulary), "
            f"got ids from {int(picked.min())} to {int(picked.max())}"
        )
    flat = logits.reshape(-1, vocab)
    per_valid = row_cross_entropy(flat, index, picked)
    if not bool(torch.isfinite(per_valid.detach()).all()):
        _raise_bad_logits(flat, index, picked, targets.shape)
    per_token = per_valid.new_zeros(flat_targets.shape).index_copy(0, index, per_valid).view(targets.shape)
    return per_valid.sum() / max(len(index), 1), per_token


def _raise_bad_logits(flat: torch.Tensor, index: torch.Tensor, picked: torch.Tensor, shape: torch.Size) -> None:
    """A non-finite cross-entropy: name the first position and why (NaN, +inf, or a -inf at the target)."""
    rows = flat[index].detach()
    bad_rows = torch.isnan(rows) | (rows == float("inf"))
    target_neg_inf = torch.isneginf(rows.gather(-1, picked[:, None]).squeeze(-1))
    first = int((bad_rows.any(-1) | target_neg_inf).nonzero()[0])
    position = tuple(int(i) for i in torch.unravel_index(index[first], shape))
    if bool(bad_rows[first].any()):
        col = int(bad_rows[first].nonzero()[0])
        kind = "NaN" if torch.isnan(rows[first, col]) else "+inf"
        raise ValueError(f"logits contain {kind} at index {(*position, col)}; logits must be finite or -inf")
    raise ValueError(
        f"logits are -inf at the target id {int(picked[first])} of position {position}: the cross-entropy of an "
        "impossible label is infinite; mask that position (target -100) or keep the label's logit finite"
    )
