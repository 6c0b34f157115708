"""Softmax values at a few columns of vocabulary-wide logit rows, without a ``[rows, V]`` intermediate.

Losses that truncate to ranked columns (MultiLevelOT keeps ``k = 50`` of ``V``) need, per row ``r`` of
logits ``z_r [V]`` at temperature ``tau``::

    log p_r(i) = z_ri / tau - LSE_r,    LSE_r = log sum_j exp(z_rj / tau)

at ``k`` columns ``i`` only, plus the column sums ``sum_r p_r(j)`` over a group of rows (a sequence) for the
ranking. Written with ``log_softmax`` on the whole rows, each temperature keeps ``[rows, V]`` float32
tensors alive for the backward (the rows, their log-softmax, its exponential). Here ``LSE`` is computed
chunk by chunk of rows and differentiated in closed form, ``d LSE_r / d z_r = p_r / tau``, recomputed
chunk by chunk in the backward; the picked columns are plain indexing. Peak memory above the logits is the
gradient of the logits plus one chunk, whatever the number of rows.

Rows are named by ``index`` ``[N]`` into ``z`` ``[R, V]`` (a flattened ``[B, T, V]`` logits tensor: no copy),
and may repeat. Arithmetic is in float32 (float64 stays float64), as everywhere in kdviz.
"""

from __future__ import annotations

import torch

from kdviz._rows import compute_dtype

CHUNK_BYTES = 4 * 2**20  # float32 bytes of one [rows, V] chunk


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


class _RowLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, index, tau):
        out = torch.empty(index.shape[0], dtype=compute_dtype(z.dtype), device=z.device)
        step = chunk_rows(z.shape[-1])
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
        step = chunk_rows(z.shape[-1])
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
    step = chunk_rows(z.shape[-1])
    for start in range(0, index.shape[0], step):
        chunk = slice(start, start + step)
        p = torch.exp(z[index[chunk]].to(lse.dtype) / tau - lse[chunk, None])
        sums.index_add_(0, slot[chunk], p)
    return sums[:groups]
