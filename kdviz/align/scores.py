"""Scores of a soft alignment (attention rows, transport plans) against the character-overlap ground truth.

For weights ``W [..., R, C]`` (any non-negative rows, normalised here to sum to 1) and a boolean
reference ``G [..., R, C]`` (:func:`~kdviz.align.overlap_matrix`), over the rows selected by
``row_mask`` that have at least one reference column (rows of special tokens cannot be right or wrong):

- ``argmax_overlap = mean_i G[i, argmax_j W[i, j]]``: the share of rows whose heaviest column overlaps;
- ``overlap_mass = mean_i sum_j W[i, j] G[i, j]``: the weight landing on overlapping columns;
- ``row_entropy = mean_i -sum_j W[i, j] log W[i, j]`` (nats) over all selected rows: how diffuse rows are
  (0 = hard alignment; ``log C`` = uniform);
- ``scored_rows``: how many rows the first two scores average over.

Scores are NaN when no row qualifies (nothing to judge), never a misleading 0.
"""

from __future__ import annotations

import torch


def row_scores(
    weights: torch.Tensor, reference: torch.Tensor, row_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-row ``argmax_overlap``, ``overlap_mass`` and ``row_entropy`` (shape ``[..., R]``) and ``scored``.

    ``scored`` marks the rows that count (selected and with a reference column).
    """
    if weights.shape != reference.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} and reference {tuple(reference.shape)} must have the same shape"
        )
    w = weights.detach().float()
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be finite and non-negative (an attention matrix or transport plan)")
    ref = reference.to(device=w.device, dtype=torch.bool)
    total = w.sum(-1, keepdim=True)
    w = torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
    selected = torch.ones(w.shape[:-1], dtype=torch.bool, device=w.device)
    if row_mask is not None:
        if row_mask.shape != w.shape[:-1]:
            raise ValueError(f"row_mask has shape {tuple(row_mask.shape)}, expected {tuple(w.shape[:-1])}")
        selected = row_mask.to(device=w.device, dtype=torch.bool)
    selected = selected & (total.squeeze(-1) > 0)
    hit = ref.gather(-1, w.argmax(-1, keepdim=True)).squeeze(-1).float()
    mass = (w * ref).sum(-1)
    entropy = -(torch.where(w > 0, w * w.log(), 0.0)).sum(-1)
    return {
        "argmax_overlap": hit,
        "overlap_mass": mass,
        "row_entropy": entropy,
        "selected": selected,
        "scored": selected & ref.any(-1),
    }


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return (x * mask).sum() / n if bool(n > 0) else torch.tensor(float("nan"), device=x.device)


def alignment_scores(
    weights: torch.Tensor, reference: torch.Tensor, row_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Scalar float32 scores of ``weights`` against ``reference`` (see the module docstring)."""
    rows = row_scores(weights, reference, row_mask)
    scored, selected = rows["scored"], rows["selected"]
    return {
        "argmax_overlap": _masked_mean(rows["argmax_overlap"], scored),
        "overlap_mass": _masked_mean(rows["overlap_mass"], scored),
        "row_entropy": _masked_mean(rows["row_entropy"], selected),
        "scored_rows": scored.sum().float(),
    }
