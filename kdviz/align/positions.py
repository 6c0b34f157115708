"""Hard pairings between student and teacher positions, for losses that compare them one pair at a time.

- :func:`index_pairs` (ULD and MultiLevelOT as published): the ``k``-th trained position of the student
  with the ``k``-th trained position of the teacher, for ``k < min(n_s, n_t)``, counting from the first
  response token of each side.
- :func:`overlap_pairs` (character offsets): each trained student position with the trained teacher
  position whose predicted token shares the most characters with its own, among the pairs the
  ground truth links; predicted tokens without characters (EOS) pair with each other in order.
"""

from __future__ import annotations

import torch


def _check_masks(student_mask: torch.Tensor, teacher_mask: torch.Tensor) -> None:
    if student_mask.dim() != 2 or teacher_mask.dim() != 2 or student_mask.shape[0] != teacher_mask.shape[0]:
        raise ValueError(
            f"student_mask {tuple(student_mask.shape)} and teacher_mask {tuple(teacher_mask.shape)} must be "
            "[B, T_s] and [B, T_t] with the same B"
        )


def index_pairs(
    student_mask: torch.Tensor, teacher_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(student_pos, teacher_pos, valid)``, each ``[B, N]`` with ``N = max_b min(n_s, n_t)``.

    ``student_pos[b, k]`` and ``teacher_pos[b, k]`` are the ``k``-th trained positions of each side
    (0 where ``valid`` is False). An empty side gives no pair.
    """
    _check_masks(student_mask, teacher_mask)
    s_rank = student_mask.long().cumsum(-1) - 1
    t_rank = teacher_mask.long().cumsum(-1) - 1
    n = torch.minimum(student_mask.sum(-1), teacher_mask.sum(-1))
    width = int(n.max()) if n.numel() else 0
    b = student_mask.shape[0]
    valid = torch.arange(width, device=n.device)[None, :] < n[:, None]
    student_pos = torch.zeros(b, width, dtype=torch.long, device=n.device)
    teacher_pos = torch.zeros_like(student_pos)
    for pos, rank, mask in ((student_pos, s_rank, student_mask), (teacher_pos, t_rank, teacher_mask)):
        rows, cols = (mask & (rank < n[:, None])).nonzero(as_tuple=True)
        pos[rows, rank[rows, cols]] = cols
    return student_pos, teacher_pos, valid


def overlap_pairs(
    student_spans: torch.Tensor,
    teacher_spans: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    reference: torch.Tensor,
) -> torch.Tensor:
    """``[B, T_s]`` long: the teacher position paired with each trained student position, ``-1`` if none.

    ``*_spans`` ``[B, T, 2]`` are the character spans of the *predicted* tokens (``start == end`` for
    tokens without characters); ``reference`` ``[B, T_s, T_t]`` bool the ground truth between predicted
    tokens (:meth:`kdviz.methods.KDBatch.target_alignment`). The overlap counted is the raw span
    intersection, over pairs the reference links (ties: the earliest teacher position).
    """
    _check_masks(student_mask, teacher_mask)
    s0, s1 = student_spans[..., 0, None], student_spans[..., 1, None]
    t0, t1 = teacher_spans[:, None, :, 0], teacher_spans[:, None, :, 1]
    overlap = (torch.minimum(s1, t1) - torch.maximum(s0, t0)).clamp(min=0)
    pair_ok = reference.to(torch.bool) & student_mask[:, :, None] & teacher_mask[:, None, :]
    score = torch.where(pair_ok, overlap.clamp(min=1), 0)
    s_empty = student_mask & (student_spans[..., 0] >= student_spans[..., 1])
    t_empty = teacher_mask & (teacher_spans[..., 0] >= teacher_spans[..., 1])
    s_order = s_empty.long().cumsum(-1)
    t_order = t_empty.long().cumsum(-1)
    empty_pair = s_empty[:, :, None] & t_empty[:, None, :] & (s_order[:, :, None] == t_order[:, None, :])
    score = torch.where(empty_pair, 1, score)
    best = score.max(-1)
    return torch.where(best.values > 0, best.indices, -1)
