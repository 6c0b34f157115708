"""MultiLevelOT: token-level and sequence-level optimal transport between two vocabularies
(docs/methods.md#multilevelot; Cui et al., arXiv 2412.14528).

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

``mode="reference"`` reproduces the published code (Multi-Level-OT, ``models/distillation_model.py``)
step by step instead:

1. each side's *answer span* is its own trained positions (``skip_student_eos=True``, the published
   training loop's setting, drops the last one of the student, which predicts EOS); both sides are laid
   out from their first answer position and zero-padded to ``L``, the longest span of either side in the
   batch;
2. logits are divided by their per-position standard deviation over the vocabulary + 1e-4 (over the
   finite entries: the published code gives NaN on ``-inf`` logits, kdviz keeps them as probability 0),
   then softmaxed (at ``tau``);
3. one ranking per side for the whole batch: vocabulary columns ordered by their probability summed over
   every answer position of that side (its own full span), truncated to the top ``k`` (``t^k``, ``s^k``;
   zero rows past a span);
4. ``HAD``: per sequence, the mean over its first ``min(n_s, n_t)`` positions of ``sum_i |t^k_i - s^k_i|``,
   then the mean over sequences;
5. ``SL = -sum_i softmax(s^k)_i log softmax(t^k)_i`` (roles swapped, a second softmax over the ``k``
   values) averaged over all ``B x L`` rows, padded ones included (a zero row contributes ``log k``);
6. ``SD``: per sequence, ``0.001 <P, C>`` on the padded ``L x L`` problem, ``C`` the L1 cost between the
   rows of ``softmax(t^k / 2)`` and ``softmax(s^k / 2)``, ``P`` 10 rounds of row-then-column
   normalisation of ``exp(-C / reg)`` (gradients through the iterations), *summed* over sequences;
7. ``kd = HAD + beta SL + gamma SD`` with a distillation factor ``kd_weight = 1.5``.

A sequence whose answer is empty on either side has no term in reference mode (the published code gives
NaN for the whole batch); ``sd`` and the plans are recorded on the ``L x L`` problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdviz.align.positions import index_pairs
from kdviz.align.transport import Transport as SinkhornResult
from kdviz.align.transport import sinkhorn_plans
from kdviz.methods._common import attach_models, check_weights, kd_output, masked_mean, run_models
from kdviz.methods.base import KDBatch, KDOutput
from kdviz.methods.diagnostics import Logits, RankPairs, TokenValues, Transport
from kdviz.ops import column_mass, cross_entropy, log_softmax_at, positive_number, row_logsumexp

REFERENCE_STD_EPS = 1e-4
REFERENCE_SD_SCALE = 1e-3
REFERENCE_SD_TAU = 2.0


def std_normalise(logits: torch.Tensor) -> torch.Tensor:
    """The published code's ``z / (std_v(z) + 1e-4)`` per position (unbiased std over the vocabulary's
    finite entries; ``-inf`` stays ``-inf``)."""
    if logits.numel() == 0:
        return logits
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return logits / (logits.std(-1, keepdim=True) + REFERENCE_STD_EPS)
    count = finite.sum(-1, keepdim=True)
    zero = torch.where(finite, logits, 0.0)
    mean = zero.sum(-1, keepdim=True) / count.clamp(min=1)
    var = torch.where(finite, (logits - mean) ** 2, 0.0).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
    return logits / (var.sqrt() + REFERENCE_STD_EPS)


def answer_positions(mask: torch.Tensor, width: int, drop_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos [B, width], valid [B, width])``: each row's trained positions in order (0 past the end),
    optionally without the last one."""
    pos, _, valid = index_pairs(mask, mask)
    if drop_last:
        valid = valid & (torch.arange(valid.shape[1], device=valid.device) < valid.sum(-1, keepdim=True) - 1)
    pad = width - pos.shape[1]
    pos = torch.nn.functional.pad(pos, (0, pad))[:, :width]
    valid = torch.nn.functional.pad(valid, (0, pad))[:, :width]
    return torch.where(valid, pos, 0), valid


def ranked_log_probs(
    logits: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, k: int, taus: tuple[float, ...], reference: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sequence-level ranking and truncation of one side: ``(ids [B, k], [log p_tau [B, N, k] per tau])``.

    ``logits`` ``[B, T, V]``, positions ``pos`` ``[B, N]`` (``valid`` marks the real ones). The ``k`` columns
    with the largest ``sum_t p(t)`` at ``taus[0]`` over the valid positions, descending (``reference``: summed
    over the whole batch, one ranking for every sequence, on std-normalised logits), and the log-softmax
    at each tau at those columns. Computed in chunks of rows (:mod:`kdviz.ops.reductions`): no
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


@dataclass(frozen=True)
class Levels:
    """What one mode computes on ``N`` paired slots per sequence: the three parts (attached scalars),
    ``kd = had + beta sl + gamma sd_weight sd``, and what is recorded.

    ``token_had``, ``token_sl`` ``[B, N]``; ``plan``, ``cost`` ``[B, N, N]`` (student slots as rows, teacher
    slots as columns); ``seq_cost`` ``[B]``; each side's slots ``*_pos`` ``[B, N]`` (positions) with
    ``valid_*`` (which slots are real); the sequence-level rankings ``ids_*`` ``[B, k]``.
    """

    had: torch.Tensor
    sl: torch.Tensor
    sd: torch.Tensor
    sd_weight: float
    token_had: torch.Tensor
    token_sl: torch.Tensor
    plan: torch.Tensor
    cost: torch.Tensor
    seq_cost: torch.Tensor
    transport: SinkhornResult
    ids_s: torch.Tensor
    ids_t: torch.Tensor
    s_pos: torch.Tensor
    t_pos: torch.Tensor
    valid_s: torch.Tensor
    valid_t: torch.Tensor


class PaperLevels:
    """The paper's HAD, SL, SD: index-paired positions, per-sequence rankings, token means pooled over the
    batch, the plan scaled to unit marginals, the envelope gradient."""

    kd_weight, n_iter, skip_student_eos = 0.15, 20, False

    def __call__(self, method: MultiLevelOT, z_s, z_t, mask_s, mask_t) -> Levels:
        taus = (method.tau, method.tau_sd)
        s_pos, t_pos, valid = index_pairs(mask_s, mask_t)
        ids_s, (logq_k, logy_s) = ranked_log_probs(z_s, s_pos, valid, method.top_k, taus, False)
        ids_t, (logp_k, logx_t) = ranked_log_probs(z_t, t_pos, valid, method.top_k, taus, False)
        dtype = torch.promote_types(logq_k.dtype, logp_k.dtype)
        logq_k, logp_k, logy_s, logx_t = (x.to(dtype) for x in (logq_k, logp_k, logy_s, logx_t))
        s_k, t_k = logq_k.exp(), logp_k.exp()
        token_had = (t_k - s_k).abs().sum(-1)
        token_sl = -(t_k * logq_k).sum(-1)
        cost = torch.cdist(logx_t.exp(), logy_s.exp(), p=1)  # teacher rows, as the solver iterates
        transport = sinkhorn_plans(
            cost, valid, valid, reg=method.reg, n_iter=method.n_iter, tol=method.sinkhorn_tol, mass="probability",
            grad="envelope",
        )
        n = valid.sum(-1).to(cost.dtype)
        count = n.sum().clamp(min=1)
        seq_cost = transport.value * n
        return Levels(
            had=(token_had * valid).sum() / count, sl=(token_sl * valid).sum() / count, sd=seq_cost.sum() / count,
            sd_weight=1.0, token_had=token_had, token_sl=token_sl,
            plan=(transport.plan * n[:, None, None]).transpose(1, 2), cost=cost.transpose(1, 2), seq_cost=seq_cost,
            transport=transport, ids_s=ids_s, ids_t=ids_t, s_pos=s_pos, t_pos=t_pos, valid_s=valid, valid_t=valid,
        )


class ReferenceLevels:
    """The published code's HAD, SL, SD (module docstring, steps 1-7)."""

    kd_weight, n_iter, skip_student_eos = 1.5, 10, True

    def __call__(self, method: MultiLevelOT, z_s, z_t, mask_s, mask_t) -> Levels:
        live = mask_s.any(-1) & mask_t.any(-1)  # the published code has no value for an empty answer
        mask_s, mask_t = mask_s & live[:, None], mask_t & live[:, None]
        width = int(max(mask_s.sum(-1).max(), mask_t.sum(-1).max())) if live.any() else 0
        s_pos, valid_s = answer_positions(mask_s, width)
        t_pos, valid_t = answer_positions(mask_t, width)
        ids_s, (logq_k,) = ranked_log_probs(z_s, s_pos, valid_s, method.top_k, (method.tau,), True)
        ids_t, (logp_k,) = ranked_log_probs(z_t, t_pos, valid_t, method.top_k, (method.tau,), True)
        dtype = torch.promote_types(logq_k.dtype, logp_k.dtype)
        s_k = torch.where(valid_s[..., None], logq_k.to(dtype).exp(), 0.0)[live]
        t_k = torch.where(valid_t[..., None], logp_k.to(dtype).exp(), 0.0)[live]
        both = (valid_s & valid_t)[live]
        token_had = (t_k - s_k).abs().sum(-1)
        per_seq = (token_had * both).sum(-1) / both.sum(-1).clamp(min=1)
        token_sl = -(torch.softmax(s_k, -1) * torch.log_softmax(t_k, -1)).sum(-1)
        x_t = torch.softmax(t_k / REFERENCE_SD_TAU, -1)
        y_s = torch.softmax(s_k / REFERENCE_SD_TAU, -1)
        cost = torch.cdist(x_t, y_s, p=1)  # teacher rows, as the published code iterates
        everywhere = torch.ones(cost.shape[:2], dtype=torch.bool, device=cost.device)
        transport = sinkhorn_plans(
            cost, everywhere, everywhere, reg=method.reg, n_iter=method.n_iter, tol=method.sinkhorn_tol,
            mass="unit", grad="autodiff",
        )
        zero = z_s.new_zeros((), dtype=dtype) + 0 * z_s.sum().to(dtype)  # keeps the graph for an empty batch
        has_any = bool(live.any())
        return Levels(
            had=per_seq.mean() if has_any else zero, sl=token_sl.mean() if has_any else zero,
            sd=transport.value.sum() if has_any else zero, sd_weight=REFERENCE_SD_SCALE,
            token_had=_expand(token_had, live), token_sl=_expand(token_sl, live),
            plan=_expand(transport.plan, live).transpose(1, 2), cost=_expand(cost, live).transpose(1, 2),
            seq_cost=_expand(transport.value, live).reshape(len(live)), transport=transport,
            ids_s=ids_s, ids_t=ids_t, s_pos=s_pos, t_pos=t_pos, valid_s=valid_s, valid_t=valid_t,
        )


MODES = {"paper": PaperLevels(), "reference": ReferenceLevels()}


def _expand(values: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Values of the live sequences back into the batch (zeros for the others)."""
    out = values.new_zeros(len(live), *values.shape[1:]) if values.dim() else values.new_zeros(len(live))
    out[live] = values
    return out


def _scatter_pairs(values, s_pos, t_pos, valid_s, valid_t, t_s: int, t_t: int) -> torch.Tensor:
    """``[B, N, N]`` values between student slots (rows) and teacher slots (columns) -> ``[B, T_s, T_t]``
    at their positions (0 elsewhere)."""
    b, n = valid_s.shape
    both = valid_s[:, :, None] & valid_t[:, None, :]
    index = (
        torch.arange(b, device=valid_s.device)[:, None, None].expand(b, n, n)[both],
        s_pos[:, :, None].expand(b, n, n)[both],
        t_pos[:, None, :].expand(b, n, n)[both],
    )
    return values.new_zeros(b, t_s, t_t).index_put(index, values[both])


def _to_student(values, s_pos, valid, shape) -> torch.Tensor:
    """``[B, N]`` per-pair values -> ``[B, T_s]`` at the student positions (0 elsewhere)."""
    rows = torch.arange(shape[0], device=valid.device)[:, None].expand_as(s_pos)
    return values.new_zeros(shape).index_put((rows[valid], s_pos[valid]), values[valid])


class MultiLevelOT(nn.Module):
    """Multi-level optimal-transport KD (HAD + SL + SD) between any two vocabularies.

    ``MultiLevelOT(student=None, teacher=None, *, mode="paper", top_k=50, ce_weight=1.0, kd_weight=None,
    beta=0.1, gamma=0.1, tau=1.0, tau_sd=2.0, reg=0.1, n_iter=None, sinkhorn_tol=0.0, skip_student_eos=None)``

    - ``mode``: ``"paper"`` (:class:`PaperLevels`) or ``"reference"`` (:class:`ReferenceLevels`, the
      published code; see the module docstring).
    - ``skip_student_eos``: leave the student's last response position (the one predicting EOS) out of
      the distillation terms, as the published training loop does; None gives True in reference mode,
      False in paper mode.
    - ``kd_weight``: ``alpha``; None gives 0.15 (paper) or 1.5 (reference). ``n_iter``: None gives 20
      (paper) or 10 (reference). ``sinkhorn_tol``: stop Sinkhorn early below this marginal error
      (0: always run ``n_iter`` rounds).
    - ``top_k`` may not exceed either vocabulary.

    The method has no parameters; it runs the models it holds unless given their outputs.

    Terms: ``loss``, ``ce``, ``kd``, ``had``, ``sl``, ``sd`` (also in ``parts``), ``sinkhorn_iterations``,
    ``sinkhorn_marginal_error`` (largest relative deviation of a plan's row or column sum from 1),
    ``student_acc``. Diagnostics (:mod:`kdviz.methods.diagnostics`): ``transport``, a
    :class:`~kdviz.methods.diagnostics.Transport` with ``plan`` and ``cost`` ``[B, T_s, T_t]`` (student
    rows, teacher columns, unit marginals on the paired positions, 0 elsewhere) and ``sequence_cost``
    ``[B]`` (``<P, C>`` per sequence); the recorder scores the plan's rows against the character-overlap
    ground truth (``alignment/transport_plan/argmax_overlap``, ...). ``topk_ids``, a
    :class:`~kdviz.methods.diagnostics.RankPairs` ``[B, k]`` (rank ``i`` of one side faces rank ``i`` of
    the other: a soft vocabulary map); ``token_had`` and ``token_sl`` ``[B, T_s]``, ``token_ce``,
    ``pair_index`` ``[B, T_s]``, the masks, ``student_target_ids`` and both logits.
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
        skip_student_eos: bool | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
        self.levels = MODES[mode]
        kd_weight = self.levels.kd_weight if kd_weight is None else kd_weight
        n_iter = self.levels.n_iter if n_iter is None else n_iter
        ce_weight, kd_weight, tau = check_weights(ce_weight, kd_weight, tau)
        for name, value in (("beta", beta), ("gamma", gamma), ("sinkhorn_tol", sinkhorn_tol)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        tau_sd, reg = positive_number("tau_sd", tau_sd), positive_number("reg", reg)
        for name, value in (("top_k", top_k), ("n_iter", n_iter)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.mode, self.top_k, self.n_iter, self.sinkhorn_tol = mode, top_k, n_iter, sinkhorn_tol
        self.ce_weight, self.kd_weight, self.beta, self.gamma = ce_weight, kd_weight, beta, gamma
        self.tau, self.tau_sd, self.reg = tau, tau_sd, reg
        self.skip_student_eos = self.levels.skip_student_eos if skip_student_eos is None else bool(skip_student_eos)
        attach_models(self, student, teacher)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, top_k={self.top_k}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"beta={self.beta}, gamma={self.gamma}, tau={self.tau}, tau_sd={self.tau_sd}, reg={self.reg}, "
            f"n_iter={self.n_iter}, skip_student_eos={self.skip_student_eos}"
        )

    def forward(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput:
        s_out, t_out = run_models(self, batch, student_outputs, teacher_outputs, hidden=False)
        z_s, z_t = s_out.logits, t_out.logits.detach()
        v_s, v_t = z_s.shape[-1], z_t.shape[-1]
        if self.top_k > min(v_s, v_t):
            raise ValueError(
                f"top_k={self.top_k} is larger than a vocabulary (V_s={v_s}, V_t={v_t}); lower top_k"
            )
        targets, mask_s, mask_t = batch.student_targets, batch.student_mask, batch.teacher_mask
        kd_mask_s = mask_s
        if self.skip_student_eos:
            last = mask_s.long().cumsum(-1) == mask_s.sum(-1, keepdim=True)
            kd_mask_s = mask_s & ~last
        lv = self.levels(self, z_s, z_t, kd_mask_s, mask_t)
        kd = lv.had + self.beta * lv.sl + self.gamma * lv.sd_weight * lv.sd
        ce, token_ce = cross_entropy(z_s, targets)
        loss = self.ce_weight * ce + self.kd_weight * kd
        with torch.no_grad():
            paired = lv.valid_s & lv.valid_t
            pair = torch.full(mask_s.shape, -1, dtype=torch.long, device=mask_s.device)
            rows = torch.arange(len(lv.s_pos), device=lv.s_pos.device)[:, None].expand_as(lv.s_pos)
            pair[rows[paired], lv.s_pos[paired]] = lv.t_pos[paired]
            metrics = {
                "sinkhorn_iterations": torch.tensor(float(lv.transport.iterations), device=z_s.device),
                "sinkhorn_marginal_error": torch.tensor(lv.transport.marginal_error, device=z_s.device),
                "student_acc": masked_mean(z_s.argmax(-1) == targets, mask_s),
            }
            slots = (lv.s_pos, lv.t_pos, lv.valid_s, lv.valid_t, z_s.shape[1], z_t.shape[1])
            diagnostics = {
                "transport": Transport(
                    _scatter_pairs(lv.plan.detach(), *slots), _scatter_pairs(lv.cost.detach(), *slots),
                    lv.seq_cost.detach(),
                ),
                "topk_ids": RankPairs(student_ids=lv.ids_s, teacher_ids=lv.ids_t),
                "token_had": TokenValues(_to_student(lv.token_had.detach(), lv.s_pos, paired, mask_s.shape), "student"),
                "token_sl": TokenValues(_to_student(lv.token_sl.detach(), lv.s_pos, paired, mask_s.shape), "student"),
                "token_ce": TokenValues(token_ce.detach(), "student"),
                "pair_index": pair,
                "student_mask": mask_s,
                "teacher_mask": mask_t,
                "student_target_ids": targets,
                "student_logits": Logits(z_s.detach(), "student", "student"),
                "teacher_logits": Logits(z_t, "teacher", "teacher"),
            }
        parts = {"ce": ce, "kd": kd, "had": lv.had, "sl": lv.sl, "sd": lv.sd}
        return kd_output(loss, parts, metrics, diagnostics)
