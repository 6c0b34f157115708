"""Universal logit distillation (ULD, docs/methods.md#uld; Boizard et al., arXiv 2402.12030): a
Wasserstein-1 distance between sorted distributions, which needs no shared vocabulary.

At each paired position, with ``q = softmax(z_s / tau)`` ``[V_s]`` and ``p = softmax(z_t / tau)`` ``[V_t]``
sorted in descending order and the shorter zero-padded to ``V = max(V_s, V_t)``::

    W1 = sum_{i < V} |q_(i) - p_(i)|        (= V * ot.wasserstein_1d(q_pad, p_pad))
    loss = ce_weight * CE(z_s, y) + kd_weight * mean_{paired positions} W1

The gradient is closed-form: ``dW1/dq_(i) = sign(q_(i) - p_(i))`` pushed back through the sort and the
softmax. With ``top_k = k`` the sum runs over the ``k`` largest entries of each side plus one residual
term ``|(1 - sum_k q) - (1 - sum_k p)|`` (a lower bound of the exact value; never the default).
"""

from __future__ import annotations

import torch
from torch import nn

from kdviz.align.positions import index_pairs, overlap_pairs
from kdviz.methods._common import attach_models, check_weights, kd_output, masked_mean, run_models
from kdviz.methods.base import KDBatch, KDOutput
from kdviz.methods.diagnostics import Alignment, Logits, TokenValues
from kdviz.ops import compute_dtype, cross_entropy, first_order_only, rows_per_chunk, shift_left

POSITIONS = ("index", "shift", "offsets")
KD_NORMALISERS = ("paired", "student")

# float32 bytes per [rows, V] intermediate of the sorts. Larger than the divergences' chunks on purpose: a
# sort parallelises over rows, so single-row chunks leave cores idle (timings in benchmarks/README.md).
SORT_CHUNK_BYTES = 4 * 2**20


def _w1_chunk(z_s: torch.Tensor, z_t: torch.Tensor, tau: float, top_k: int | None):
    """Per-row W1 ``[c]`` and ``dW1/dz_s`` ``[c, V_s]`` of one chunk (float32; float64 stays float64)."""
    dtype = compute_dtype(z_s.dtype)
    q = torch.softmax(z_s.to(dtype) / tau, -1)
    p = torch.softmax(z_t.to(dtype) / tau, -1)
    if top_k is None:
        q_sorted, order = q.sort(-1, descending=True)
        p_sorted = p.sort(-1, descending=True).values
        common = min(q.shape[-1], p.shape[-1])
        diff = q_sorted[:, :common] - p_sorted[:, :common]
        values = diff.abs().sum(-1) + q_sorted[:, common:].sum(-1) + p_sorted[:, common:].sum(-1)
        sign = torch.ones_like(q_sorted)  # past V_t the teacher is padded with zeros: d|q - 0|/dq = 1
        sign[:, :common] = diff.sign()
        g = torch.empty_like(q).scatter_(-1, order, sign)
    else:
        q_top, order = q.topk(top_k, -1)
        p_top = p.topk(top_k, -1).values
        diff = q_top - p_top
        residual = p_top.sum(-1) - q_top.sum(-1)  # (1 - sum_k q) - (1 - sum_k p)
        values = diff.abs().sum(-1) + residual.abs()
        g = residual.sign()[:, None].expand_as(q).clone().scatter_(-1, order, diff.sign())
    grad = q * (g - (q * g).sum(-1, keepdim=True)) / tau
    return values, grad


class _SortedW1(torch.autograd.Function):
    """Rows of student and teacher logits -> per-row W1, with the gradient computed chunk by chunk."""

    @staticmethod
    def forward(ctx, z_s, z_t, tau, top_k, chunk_rows):
        n = z_s.shape[0]
        values = z_s.new_empty(n, dtype=compute_dtype(z_s.dtype))
        grad = torch.empty_like(z_s)
        for start in range(0, n, chunk_rows):
            rows = slice(start, start + chunk_rows)
            values[rows], g = _w1_chunk(z_s[rows], z_t[rows], tau, top_k)
            grad[rows] = g
        ctx.save_for_backward(grad)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        first_order_only("ULD's sorted W1", "ULD supports first-order gradients only")
        (grad,) = ctx.saved_tensors
        return grad * grad_values[:, None].to(grad.dtype), None, None, None, None


def sorted_w1(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    tau: float = 1.0,
    top_k: int | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Per-row ULD distance ``[N]`` between rows of ``student_logits [N, V_s]`` and ``teacher_logits [N, V_t]``.

    Exact (full sort) unless ``top_k`` is given (top-k plus residual, see the module docstring). Gradients
    reach the student logits only; the teacher is a constant. Rows are processed in chunks of
    ``chunk_rows`` (default: about 4 MiB of float32 per intermediate).
    """
    if student_logits.dim() != 2 or teacher_logits.dim() != 2 or len(student_logits) != len(teacher_logits):
        raise ValueError(
            f"expected [N, V_s] and [N, V_t] logits, got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    if top_k is not None and not (isinstance(top_k, int) and 0 < top_k <= min(v_s, v_t)):
        raise ValueError(
            f"top_k={top_k!r} must be a positive integer no larger than both vocabularies (V_s={v_s}, V_t={v_t})"
        )
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        bad = torch.isnan(x) | (x == float("inf"))
        if bool(bad.any()):
            first = bad.nonzero()[0].tolist()
            kind = "NaN" if bool(torch.isnan(x[tuple(first)])) else "+inf"
            raise ValueError(f"{name} contains {kind} (first at index {first}); logits must be finite or -inf")
    if len(student_logits) == 0:
        return student_logits.new_zeros(0, dtype=torch.float32) + 0 * student_logits.sum()
    chunk = chunk_rows or rows_per_chunk(student_logits.device, max(v_s, v_t), student_logits.dtype, SORT_CHUNK_BYTES)
    return _SortedW1.apply(student_logits, teacher_logits.detach(), tau, top_k, chunk)


def shift_pairs(mask_s: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
    """``[B, T_s]``: student position ``a_s + k`` paired with teacher position ``a_t + k`` (``a`` each side's
    first response position) where both are trained, else -1."""
    pair = torch.full(mask_s.shape, -1, dtype=torch.long, device=mask_s.device)
    t_t = mask_t.shape[1]
    for b in range(mask_s.shape[0]):
        if not (mask_s[b].any() and mask_t[b].any()):
            continue
        a_s, a_t = int(mask_s[b].nonzero()[0]), int(mask_t[b].nonzero()[0])
        s_pos = torch.arange(a_s, mask_s.shape[1], device=mask_s.device)
        t_pos = s_pos - a_s + a_t
        inside = t_pos < t_t
        s_pos, t_pos = s_pos[inside], t_pos[inside]
        both = mask_s[b, s_pos] & mask_t[b, t_pos]
        pair[b, s_pos[both]] = t_pos[both]
    return pair


def target_spans(offsets: torch.Tensor) -> torch.Tensor:
    """``[B, T, 2]`` character spans of the token each position predicts (offsets shifted by one)."""
    return shift_left(offsets, 0, dim=1)


class ULD(nn.Module):
    """Universal logit distillation: sorted-distribution W1 at paired positions, for any two vocabularies.

    ``ULD(student=None, teacher=None, *, positions="index", ce_weight=1.0, kd_weight=1.5, tau=1.0,
    top_k=None, ranks=10, chunk_rows=None, kd_normaliser="paired")``

    - ``positions``: ``"index"`` (the paper's code) pairs the ``k``-th response position of each side, over
      ``min(len_s, len_t)`` positions; ``"shift"`` (the DSKD repository's ULD baseline) pairs the
      positions at the same offset from each side's first response position, where both are trained
      (the same pairs unless a response has untrained holes); ``"offsets"`` pairs each student position
      with the teacher position whose predicted token overlaps its own the most in characters (EOS with
      EOS).
    - ``ce_weight``, ``kd_weight``: the paper's 1.0 and 1.5; ``tau`` divides both sides (1.0).
    - ``kd_normaliser``: ``"paired"`` (default) makes ``kd`` the mean over paired positions;
      ``"student"`` divides the summed W1 by the number of student response tokens, as the DSKD
      repository does. With ``ce_weight=kd_weight=0.5, positions="shift", kd_normaliser="student"`` the
      loss is that repository's ``(0.5 CE_sum + 0.5 ULD_sum) / N_student``.
    - ``top_k``: None (default) for the exact full sort; an integer for the top-k-plus-residual
      approximation.
    - ``ranks``: how many ranks of each side to record in the diagnostics.

    The method has no parameters; it runs the models it holds unless given their outputs.

    Terms: ``loss``, ``ce``, ``kd`` (also in ``parts``), ``paired_fraction`` (share of student response
    positions with a teacher partner), ``student_acc``. Diagnostics (:mod:`kdviz.methods.diagnostics`):
    ``token_kd`` and ``token_ce`` (:class:`~kdviz.methods.diagnostics.TokenValues` ``[B, T_s]``),
    ``pair_index`` ``[B, T_s]`` (teacher position or -1), ``pairing`` (a hard
    :class:`~kdviz.methods.diagnostics.Alignment` ``[B, T_s, T_t]``, one-hot rows, which the recorder
    scores against the character-overlap ground truth: ``alignment/pairing/argmax_overlap``, ...), the
    rank matching ``rank_ids_student`` / ``rank_ids_teacher`` ``[B, T_s, r]`` (ids at ranks ``0..r-1``, -1
    where unpaired) with ``rank_probs_student`` / ``rank_probs_teacher``, the masks,
    ``student_target_ids`` and both logits (:class:`~kdviz.methods.diagnostics.Logits`).
    """

    def __init__(
        self,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        *,
        positions: str = "index",
        ce_weight: float = 1.0,
        kd_weight: float = 1.5,
        tau: float = 1.0,
        top_k: int | None = None,
        ranks: int = 10,
        chunk_rows: int | None = None,
        kd_normaliser: str = "paired",
    ) -> None:
        super().__init__()
        ce_weight, kd_weight, tau = check_weights(ce_weight, kd_weight, tau)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if top_k is not None and not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"top_k must be None (exact) or a positive integer, got {top_k!r}")
        if kd_normaliser not in KD_NORMALISERS:
            raise ValueError(f"kd_normaliser must be one of {KD_NORMALISERS}, got {kd_normaliser!r}")
        self.kd_normaliser = kd_normaliser
        if not (isinstance(ranks, int) and ranks > 0):
            raise ValueError(f"ranks must be a positive integer, got {ranks!r}")
        self.positions, self.top_k, self.ranks, self.chunk_rows = positions, top_k, ranks, chunk_rows
        self.ce_weight, self.kd_weight, self.tau = ce_weight, kd_weight, tau
        attach_models(self, student, teacher)

    def extra_repr(self) -> str:
        return (
            f"positions={self.positions!r}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"tau={self.tau}, top_k={self.top_k}, kd_normaliser={self.kd_normaliser!r}"
        )

    def pair_index(self, batch: KDBatch) -> torch.Tensor:
        """``[B, T_s]``: the teacher position paired with each student position (-1: none)."""
        mask_s, mask_t = batch.student_mask, batch.teacher_mask
        if self.positions == "offsets":
            return overlap_pairs(
                target_spans(batch.student_offsets),
                target_spans(batch.teacher_offsets),
                mask_s,
                mask_t,
                batch.target_alignment(),
            )
        if self.positions == "shift":
            return shift_pairs(mask_s, mask_t)
        s_pos, t_pos, valid = index_pairs(mask_s, mask_t)
        pair = torch.full(mask_s.shape, -1, dtype=torch.long, device=mask_s.device)
        rows = torch.arange(len(pair), device=pair.device)[:, None].expand_as(s_pos)
        pair[rows[valid], s_pos[valid]] = t_pos[valid]
        return pair

    def forward(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput:
        s_out, t_out = run_models(self, batch, student_outputs, teacher_outputs, hidden=False)
        z_s, z_t = s_out.logits, t_out.logits.detach()
        targets, mask_s, mask_t = batch.student_targets, batch.student_mask, batch.teacher_mask
        pair = self.pair_index(batch)
        paired = pair >= 0
        b_idx, s_idx = paired.nonzero(as_tuple=True)
        t_idx = pair[b_idx, s_idx]
        values = sorted_w1(
            z_s[b_idx, s_idx], z_t[b_idx, t_idx], tau=self.tau, top_k=self.top_k, chunk_rows=self.chunk_rows
        )
        denominator = paired.sum() if self.kd_normaliser == "paired" else mask_s.sum()
        kd = values.sum() / denominator.clamp(min=1)
        ce, token_ce = cross_entropy(z_s, targets)
        loss = self.ce_weight * ce + self.kd_weight * kd
        with torch.no_grad():
            token_kd = values.new_zeros(mask_s.shape).index_put((b_idx, s_idx), values.detach())
            pairing = torch.zeros(*mask_s.shape, z_t.shape[1], device=z_s.device)
            pairing[b_idx, s_idx, t_idx] = 1.0
            metrics = {
                "paired_fraction": masked_mean(paired, mask_s),
                "student_acc": masked_mean(z_s.argmax(-1) == targets, mask_s),
            }
            diagnostics = {
                "token_kd": TokenValues(token_kd, "student"),
                "token_ce": TokenValues(token_ce.detach(), "student"),
                "pair_index": pair,
                "pairing": Alignment(pairing, "hard", "target"),
                **self._rank_matching(z_s, z_t, b_idx, s_idx, t_idx),
                "student_mask": mask_s,
                "teacher_mask": mask_t,
                "student_target_ids": targets,
                "student_logits": Logits(z_s.detach(), "student", "student"),
                "teacher_logits": Logits(z_t, "teacher", "teacher"),
            }
        return kd_output(loss, {"ce": ce, "kd": kd}, metrics, diagnostics)

    def _rank_matching(self, z_s, z_t, b_idx, s_idx, t_idx) -> dict[str, torch.Tensor]:
        """Top-``r`` ids and probabilities of both sides at each paired student position (rank ``i`` is
        compared with rank ``i``)."""
        r = min(self.ranks, z_s.shape[-1], z_t.shape[-1])
        shape = (*z_s.shape[:2], r)
        out = {}
        for side, logits, rows in (("student", z_s, s_idx), ("teacher", z_t, t_idx)):
            top = torch.softmax(logits[b_idx, rows].float() / self.tau, -1).topk(r, -1)
            ids = torch.full(shape, -1, dtype=torch.long, device=z_s.device)
            probs = torch.zeros(shape, device=z_s.device)
            ids[b_idx, s_idx], probs[b_idx, s_idx] = top.indices, top.values
            out[f"rank_ids_{side}"], out[f"rank_probs_{side}"] = ids, probs
        return out
