"""MultiLevelOT: token-level and sequence-level optimal transport between two vocabularies
(METHODS.md section 7).

The ``k``-th response position of the student is paired with the ``k``-th of the teacher over
``n = min(n_s, n_t)`` positions (:func:`kdviz.align.positions.index_pairs`). Per sequence:

- *Sequence-level ranking*: the teacher vocabulary is permuted by ``sum_t p(t)`` over the ``n`` positions,
  descending, and the student vocabulary by ``sum_t q(t)``; both are truncated to the top ``k`` columns,
  giving ``t^k(t)`` and ``s^k(t)`` (``[n, k]``, the values of ``p, q`` at tau, not renormalised).
- ``HAD = sum_t sum_i |t^k_i(t) - s^k_i(t)|``  (holistic absolute difference)
- ``SL = -sum_t sum_i t^k_i(t) log s^k_i(t)``  (sequential logarithmic)
- ``SD = <P, C>`` with ``C_ij = sum_l |t^k_l(i) - s^k_l(j)|`` built from the distributions at ``tau_sd``
  (same ranking), and ``P`` the entropic plan (``reg``, ``n_iter`` Sinkhorn rounds, uniform marginals,
  :func:`kdviz.align.transport.sinkhorn_plans`, batched; the log domain's iterates, computed exactly in
  the plain domain since ``C`` lies in ``[0, 2]``) scaled to unit marginals
  (``P <- n P``). The gradient of ``SD`` flows through ``C`` (envelope theorem).

The ranking and the truncated values come from :func:`ranked_log_probs`, which never forms a ``[B, N, V]``
tensor (chunks of rows, closed-form gradient of the log-normaliser): at B = 4, T = 256, V_s = 32000,
V_t = 151936 this part's forward + backward peaks at 0.11x the memory of whole-row ``log_softmax`` and
takes 0.65x the time (``benchmarks/bench_ot.py``).

Each part is a token mean pooled over the batch (sum over sequences / total ``n``), and
``loss = ce_weight * CE + kd_weight * (HAD + beta SL + gamma SD)`` (``ce_weight=1``, ``kd_weight=0.15``,
``beta = gamma = 0.1``).

``mode="reference"`` reproduces the published code instead:

1. one ranking for the whole batch (probabilities summed over every sequence);
2. logits divided by their per-position standard deviation (over the vocabulary) + 1e-4 before the softmax;
3. ``SL = -sum_t sum_i softmax(s^k(t))_i log softmax(t^k(t))_i``: roles swapped, and a second softmax
   over the ``k`` already-softmaxed values;
4. ``SD``: the cost between ``softmax(t^k / 2)`` and ``softmax(s^k / 2)`` (a second softmax again),
   10 Sinkhorn rounds of plain row/column normalisation of ``exp(-C / reg)`` (unit marginals), with
   gradients through the iterations;
5. ``SD`` weighted by ``gamma * 1e-3`` (the code's ``0.001`` inside its Sinkhorn loss, i.e. ``1e-4`` in
   all at ``gamma = 0.1``);
6. a distillation factor ``kd_weight = 1.5``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdviz._chunked import column_mass, log_softmax_at, row_logsumexp
from kdviz.align.positions import index_pairs
from kdviz.align.scores import alignment_scores
from kdviz.align.transport import sinkhorn_plans
from kdviz.methods._common import attach_models, check_weights, cross_entropy, masked_mean, run_models
from kdviz.methods.base import KDBatch, KDOutput

MODES = ("paper", "reference")
REFERENCE_STD_EPS = 1e-4
REFERENCE_SD_SCALE = 1e-3
REFERENCE_SD_TAU = 2.0


def std_normalise(logits: torch.Tensor) -> torch.Tensor:
    """The published code's ``z / (std_v(z) + 1e-4)`` per position (unbiased std over the vocabulary)."""
    if logits.numel() == 0:
        return logits
    return logits / (logits.std(-1, keepdim=True) + REFERENCE_STD_EPS)


def ranked_log_probs(
    logits: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, k: int, taus: tuple[float, ...], reference: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sequence-level ranking and truncation of one side: ``(ids [B, k], [log p_tau [B, N, k] per tau])``.

    ``logits`` ``[B, T, V]``, positions ``pos`` ``[B, N]`` (``valid`` marks the real ones). The ``k`` columns
    with the largest ``sum_t p(t)`` at ``taus[0]`` over the valid positions, descending (``reference``: summed
    over the whole batch, one ranking for every sequence, on std-normalised logits), and the log-softmax
    at each tau at those columns. Computed in chunks of rows (:mod:`kdviz._chunked`): no
    ``[B, N, V]`` tensor, except the std-normalised logits of ``reference``.
    """
    b, n = pos.shape
    seq = torch.arange(b, device=pos.device)[:, None]
    if reference:
        z = std_normalise(logits[seq, pos].float()).flatten(0, 1)
        index = torch.arange(b * n, device=pos.device)
    else:
        z, index = logits.flatten(0, 1), (seq * logits.shape[1] + pos).flatten()
    lses = [row_logsumexp(z, index, tau) for tau in taus]
    group = torch.where(valid, 0 if reference else seq, -1).flatten()
    mass = column_mass(z, index, lses[0], taus[0], group, 1 if reference else b)
    ids = mass.topk(k, -1).indices.expand(b, k)
    columns = ids[:, None, :].expand(b, n, k).reshape(b * n, k)
    logs = [log_softmax_at(z, index, lse, columns, tau).view(b, n, k) for lse, tau in zip(lses, taus, strict=True)]
    return ids, logs


class MultiLevelOT(nn.Module):
    """Multi-level optimal-transport KD (HAD + SL + SD) between any two vocabularies.

    ``MultiLevelOT(student=None, teacher=None, *, mode="paper", top_k=50, ce_weight=1.0, kd_weight=None,
    beta=0.1, gamma=0.1, tau=1.0, tau_sd=2.0, reg=0.1, n_iter=None, sinkhorn_tol=0.0)``

    - ``mode``: ``"paper"`` or ``"reference"`` (the published code; see the module docstring).
    - ``kd_weight``: ``alpha``; None gives 0.15 (paper) or 1.5 (reference). ``n_iter``: None gives 20
      (paper) or 10 (reference). ``sinkhorn_tol``: stop Sinkhorn early below this marginal error
      (0: always run ``n_iter`` rounds).
    - ``top_k`` may not exceed either vocabulary.

    The method has no parameters; it runs the models it holds unless given their outputs.

    Terms: ``loss``, ``ce``, ``kd``, ``had``, ``sl``, ``sd`` (also in ``parts``), ``sinkhorn_iterations``,
    ``sinkhorn_marginal_error`` (largest relative deviation of a plan's row or column sum from 1),
    ``student_acc``, and the plans' scores against the character-overlap ground truth (``align_*``, rows
    of ``transport_plan`` transposed to student positions). Diagnostics: ``transport_plan`` and
    ``cost_matrix`` ``[B, T_t, T_s]`` (teacher rows, student columns, unit marginals on the paired
    positions, 0 elsewhere), ``transport_cost`` ``[B]`` (``<P, C>`` per sequence), ``teacher_topk_ids``
    and ``student_topk_ids`` ``[B, k]`` (rank ``i`` of one side faces rank ``i`` of the other: a soft
    vocabulary map), ``token_had`` and ``token_sl`` ``[B, T_s]``, ``token_ce``, ``pair_index``
    ``[B, T_s]``, the masks, ``student_target_ids`` and both logits.
    """

    def __init__(
        self,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        *,
        mode: str = "paper",
        top_k: int = 50,
        ce_weight: float = 1.0,
        kd_weight: float | None = None,
        beta: float = 0.1,
        gamma: float = 0.1,
        tau: float = 1.0,
        tau_sd: float = 2.0,
        reg: float = 0.1,
        n_iter: int | None = None,
        sinkhorn_tol: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        reference = mode == "reference"
        kd_weight = (1.5 if reference else 0.15) if kd_weight is None else kd_weight
        n_iter = (10 if reference else 20) if n_iter is None else n_iter
        ce_weight, kd_weight, tau = check_weights(ce_weight, kd_weight, tau)
        for name, value in (("beta", beta), ("gamma", gamma), ("sinkhorn_tol", sinkhorn_tol)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name, value in (("tau_sd", tau_sd), ("reg", reg)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, value in (("top_k", top_k), ("n_iter", n_iter)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.mode, self.top_k, self.n_iter, self.sinkhorn_tol = mode, top_k, n_iter, sinkhorn_tol
        self.ce_weight, self.kd_weight, self.beta, self.gamma = ce_weight, kd_weight, beta, gamma
        self.tau, self.tau_sd, self.reg = tau, tau_sd, reg
        attach_models(self, student, teacher)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, top_k={self.top_k}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"beta={self.beta}, gamma={self.gamma}, tau={self.tau}, tau_sd={self.tau_sd}, reg={self.reg}, "
            f"n_iter={self.n_iter}"
        )

    def forward(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput:
        s_out, t_out = run_models(self, batch, student_outputs, teacher_outputs, hidden=False)
        z_s, z_t = s_out.logits, t_out.logits.detach()
        v_s, v_t = z_s.shape[-1], z_t.shape[-1]
        if self.top_k > min(v_s, v_t):
            raise ValueError(
                f"top_k={self.top_k} is larger than a vocabulary (V_s={v_s}, V_t={v_t}); lower top_k"
            )
        reference = self.mode == "reference"
        targets, mask_s, mask_t = batch.student_targets, batch.student_mask, batch.teacher_mask
        s_pos, t_pos, valid = index_pairs(mask_s, mask_t)
        rows = torch.arange(len(s_pos), device=s_pos.device)[:, None]
        taus = (self.tau,) if reference else (self.tau, self.tau_sd)
        ids_s, (logq_k, *logy_s) = ranked_log_probs(z_s, s_pos, valid, self.top_k, taus, reference)
        ids_t, (logp_k, *logx_t) = ranked_log_probs(z_t, t_pos, valid, self.top_k, taus, reference)
        s_k, t_k = logq_k.exp(), logp_k.exp()
        token_had = (t_k - s_k).abs().sum(-1)
        if reference:
            token_sl = -(torch.softmax(s_k, -1) * torch.log_softmax(t_k, -1)).sum(-1)
            x_t = torch.softmax(t_k / REFERENCE_SD_TAU, -1)
            y_s = torch.softmax(s_k / REFERENCE_SD_TAU, -1)
        else:
            token_sl = -(t_k * logq_k).sum(-1)
            x_t, y_s = logx_t[0].exp(), logy_s[0].exp()
        cost = torch.cdist(x_t, y_s, p=1)
        transport = sinkhorn_plans(
            cost,
            valid,
            valid,
            reg=self.reg,
            n_iter=self.n_iter,
            tol=self.sinkhorn_tol,
            mass="unit" if reference else "probability",
            grad="autodiff" if reference else "envelope",
        )
        n = valid.sum(-1)
        scale = 1.0 if reference else n.to(cost.dtype)
        plan, seq_cost = transport.plan * (1.0 if reference else scale[:, None, None]), transport.value * scale
        count = n.sum().clamp(min=1)
        had = (token_had * valid).sum() / count
        sl = (token_sl * valid).sum() / count
        sd = seq_cost.sum() / count
        kd = had + self.beta * sl + self.gamma * (REFERENCE_SD_SCALE if reference else 1.0) * sd
        ce, token_ce = cross_entropy(z_s, targets)
        loss = self.ce_weight * ce + self.kd_weight * kd
        parts = {"ce": ce, "kd": kd, "had": had, "sl": sl, "sd": sd}
        with torch.no_grad():
            full_plan = self._scatter_pairs(plan.detach(), t_pos, s_pos, valid, z_t.shape[1], z_s.shape[1])
            full_cost = self._scatter_pairs(cost.detach(), t_pos, s_pos, valid, z_t.shape[1], z_s.shape[1])
            reference_alignment = batch.target_alignment() & mask_t[:, None, :]
            scores = alignment_scores(full_plan.transpose(1, 2), reference_alignment, mask_s)
            pair = torch.full(mask_s.shape, -1, dtype=torch.long, device=mask_s.device)
            pair[rows.expand_as(s_pos)[valid], s_pos[valid]] = t_pos[valid]
            terms = {
                "loss": loss.detach(),
                **{name: value.detach() for name, value in parts.items()},
                "sinkhorn_iterations": torch.tensor(float(transport.iterations), device=z_s.device),
                "sinkhorn_marginal_error": torch.tensor(transport.marginal_error, device=z_s.device),
                "student_acc": masked_mean(z_s.argmax(-1) == targets, mask_s),
                **{f"align_{name}": value for name, value in scores.items()},
            }
            diagnostics = {
                "transport_plan": full_plan,
                "cost_matrix": full_cost,
                "transport_cost": seq_cost.detach(),
                "teacher_topk_ids": ids_t,
                "student_topk_ids": ids_s,
                "token_had": self._to_student(token_had.detach(), s_pos, valid, mask_s.shape),
                "token_sl": self._to_student(token_sl.detach(), s_pos, valid, mask_s.shape),
                "token_ce": token_ce.detach(),
                "pair_index": pair,
                "student_mask": mask_s,
                "teacher_mask": mask_t,
                "student_target_ids": targets,
                "student_logits": z_s.detach(),
                "teacher_logits": z_t,
            }
        return KDOutput(loss, terms, diagnostics, parts)

    @staticmethod
    def _scatter_pairs(values, t_pos, s_pos, valid, t_t: int, t_s: int) -> torch.Tensor:
        """``[B, N, N]`` values on paired positions -> ``[B, T_t, T_s]`` (0 elsewhere)."""
        b, n = valid.shape
        both = valid[:, :, None] & valid[:, None, :]
        index = (
            torch.arange(b, device=valid.device)[:, None, None].expand(b, n, n)[both],
            t_pos[:, :, None].expand(b, n, n)[both],
            s_pos[:, None, :].expand(b, n, n)[both],
        )
        return values.new_zeros(b, t_t, t_s).index_put(index, values[both])

    @staticmethod
    def _to_student(values, s_pos, valid, shape) -> torch.Tensor:
        """``[B, N]`` per-pair values -> ``[B, T_s]`` at the student positions (0 elsewhere)."""
        rows = torch.arange(shape[0], device=valid.device)[:, None].expand_as(s_pos)
        return values.new_zeros(shape).index_put((rows[valid], s_pos[valid]), values[valid])
