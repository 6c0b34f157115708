"""The next-token shift and the label of untrained positions, in one place."""

from __future__ import annotations

import torch

IGNORE = -100  # the label of a position that is not trained (Hugging Face's convention)


def shift_left(x: torch.Tensor, fill, dim: int = -1) -> torch.Tensor:
    """``out[t] = x[t + 1]`` along ``dim``, the last entry ``fill``: what each position predicts."""
    out = torch.full_like(x, fill)
    out.narrow(dim, 0, x.shape[dim] - 1).copy_(x.narrow(dim, 1, x.shape[dim] - 1))
    return out


def shift_alignment(alignment: torch.Tensor) -> torch.Tensor:
    """``[B, T_s, T_t]`` ground truth between *predicted* tokens: ``alignment`` (between input tokens) shifted
    by one on both token axes, last row and column empty."""
    return shift_left(shift_left(alignment, 0, dim=1), 0, dim=2)


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """``targets[..., t] = labels[..., t + 1]``, last column :data:`IGNORE`: the token each position predicts."""
    return shift_left(labels, IGNORE)
