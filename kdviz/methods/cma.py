"""DSKD with cross-model attention (CMA, docs/methods.md#cma; arXiv 2406.17328): dual-space KD across two
tokenizers.

For student position ``i`` (input ``x_i``, next token ``y_i``) and teacher position ``j`` (``x'_j, y'_j``),
with ``E_s, E_t`` the detached input embeddings and ``N(z) = z / std(z)`` (one scalar std)::

    Q = P_query([E_s(x); E_s(y)])                   [B, T_s, 2 d_t]   learned 2 d_s -> 2 d_t
    K = N([E_t(x'); E_t(y')])                       [B, T_t, 2 d_t]
    A = Q K^T / sqrt(2 d_t)                         float32, -1e5 outside (student resp.) x (teacher resp.)
    t2s_weight = softmax(A, dim=teacher)            [B, T_s, T_t]     the alignment users look at
    s2t_weight = softmax(A^T, dim=student)          [B, T_t, T_s]     another normalisation of A
    V_t = t2s(N(h_t) + N(E_t(y')))                  [B, T_t, d_s]
    V_s = s2t(h_s)                                  [B, T_s, d_t]
    t2s_logits = (t2s_weight @ V_t) @ sg(W_s).T     s2t_logits = (s2t_weight @ V_s) @ sg(W_t).T

then the dual-space losses of :mod:`kdviz.methods.dskd`, with ``t2s_kd`` restricted to the positions where
``argmax(t2s_logits) == y`` (the accuracy filter) and divided by the number of student response tokens.
Both attentions are returned as diagnostics with student rows and teacher columns (``s2t_weight``
transposed, its columns the distributions).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdviz.methods._common import check_ids, embed, embedding_table, model_device, project
from kdviz.methods.base import KDBatch
from kdviz.methods.diagnostics import Alignment
from kdviz.methods.dskd import DSKD

KEY_NORMS = ("valid", "global")
VALUE_TARGETS = ("gold", "teacher_argmax")


def scalar_std_normalise(z: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``z / std``: one scalar std over the valid positions (``mode="valid"``) or the whole padded tensor
    (``"global"``, the published code, whose scale depends on padding). A degenerate std (fewer than two
    entries, or 0) leaves ``z`` unscaled."""
    values = z[mask] if mode == "valid" else z
    if values.numel() < 2:
        return z
    std = values.std()
    return z / std if bool(std > 0) else z


class CMA(DSKD):
    """DSKD with cross-model attention, for a student and a teacher with different tokenizers.

    ``CMA(student, teacher, *, divergence="fkl", divergence_params=None, teacher_space_divergence="fkl",
    ce_weight=0.5, kd_weight=0.5, tau=2.0, tau_squared=False, s2t_normaliser="teacher", key_norm="valid",
    value_target="gold", acc_filter=True, mask_value=-1e5)``

    Switches beyond :class:`DSKD`'s:

    - ``key_norm``: ``"valid"`` takes each ``N``'s std over the teacher's response positions;
      ``"global"`` over the whole padded tensor, as the published code does. It applies to all three
      normalisations (the key, ``h_t`` and ``E_t(y')``).
    - ``value_target``: ``"gold"`` builds the teacher values from the gold next token ``y'``;
      ``"teacher_argmax"`` from the teacher's own prediction (the authors' later version), so the
      projected teacher never sees the label.
    - ``acc_filter``: distil ``t2s_kd`` only where the projected teacher predicts the label.
    - ``mask_value``: the score of masked pairs (a large negative number, not ``-inf``, so that a row
      with nothing to attend to stays finite).

    Parameters (``method.parameters()``): ``query`` (``nn.Linear(2 e_s, 2 d_t)``), ``t2s``
    (``nn.Linear(d_t, d_s)``) and ``s2t`` (``nn.Linear(d_s, d_t)``), with ``e_s`` the student's embedding
    width and ``d_*`` the widths the LM heads consume. Models are read through ``get_input_embeddings()``,
    ``get_output_embeddings()`` and ``output_hidden_states=True``; the method runs them unless their
    outputs are passed to ``method(batch, student_outputs=..., teacher_outputs=...)``.

    Terms, in addition to DSKD's (where ``kept_fraction`` is the share of response tokens passing the
    accuracy filter): none; the recorder scores the attentions against the character-overlap ground truth
    (:func:`kdviz.align.alignment_scores`: ``alignment/t2s_weight/argmax_overlap``, ``.../overlap_mass``,
    ``.../row_entropy``, ``.../scored_rows``, the same for ``s2t_weight``). Diagnostics, in addition
    (:mod:`kdviz.methods.diagnostics`): ``t2s_weight`` and ``s2t_weight``, both
    :class:`~kdviz.methods.diagnostics.Alignment` ``[B, T_s, T_t]`` (student rows, teacher columns;
    ``t2s_weight`` rows and ``s2t_weight`` columns are distributions; entries outside the response are
    meaningless: drop them with ``student_mask`` / ``teacher_mask``; row ``i`` is labelled by
    ``student_target_ids[:, i]``), and ``t2s_reference`` ``[B, T_s, T_t]`` (the ground truth between
    predicted tokens, response columns only).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        divergence: str = "fkl",
        divergence_params: dict | None = None,
        teacher_space_divergence: str = "fkl",
        ce_weight: float = 0.5,
        kd_weight: float = 0.5,
        tau: float = 2.0,
        tau_squared: bool = False,
        s2t_normaliser: str = "teacher",
        key_norm: str = "valid",
        value_target: str = "gold",
        acc_filter: bool = True,
        mask_value: float = -1e5,
    ) -> None:
        super().__init__(
            student,
            teacher,
            divergence=divergence,
            divergence_params=divergence_params,
            teacher_space_divergence=teacher_space_divergence,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            tau=tau,
            tau_squared=tau_squared,
            s2t_normaliser=s2t_normaliser,
        )
        if key_norm not in KEY_NORMS:
            raise ValueError(f"key_norm must be one of {KEY_NORMS}, got {key_norm!r}")
        if value_target not in VALUE_TARGETS:
            raise ValueError(f"value_target must be one of {VALUE_TARGETS}, got {value_target!r}")
        if not (isinstance(mask_value, (int, float)) and math.isfinite(mask_value) and mask_value < 0):
            raise ValueError(f"mask_value must be a finite negative number (e.g. -1e5), got {mask_value!r}")
        self.key_norm, self.value_target = key_norm, value_target
        self.acc_filter, self.mask_value = bool(acc_filter), float(mask_value)
        e_s = embedding_table(student, "student").weight.shape[1]
        e_t = embedding_table(teacher, "teacher").weight.shape[1]
        if e_t != self.d_t:
            raise ValueError(
                f"the teacher's embeddings ({e_t}) and last hidden state ({self.d_t}) differ in width; CMA adds "
                "them (V_t = t2s(N(h_t) + N(E_t(y')))), so it needs a teacher whose widths agree"
            )
        self.query = nn.Linear(2 * e_s, 2 * self.d_t, device=model_device(student))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, key_norm={self.key_norm!r}, value_target={self.value_target!r}, "
            f"acc_filter={self.acc_filter}"
        )

    def attention_scores(self, batch: KDBatch) -> torch.Tensor:
        """The masked scores ``A`` ``[B, T_s, T_t]`` (float32) of the current projectors."""
        mask_s, mask_t = batch.student_mask, batch.teacher_mask
        self._check_ids(batch)
        x_s = torch.where(mask_s, batch.student_input_ids, 0)
        y_s = torch.where(mask_s, batch.student_targets, 0)
        x_t = torch.where(mask_t, batch.teacher_input_ids, 0)
        y_t = torch.where(mask_t, batch.teacher_targets, 0)
        pair_s = torch.cat([embed(self.student, x_s, "student"), embed(self.student, y_s, "student")], -1)
        query = project(self.query, pair_s)
        key = torch.cat([embed(self.teacher, x_t, "teacher"), embed(self.teacher, y_t, "teacher")], -1)
        key = scalar_std_normalise(key, mask_t, self.key_norm)
        scores = query @ key.transpose(-1, -2) / math.sqrt(2 * self.d_t)
        pair = mask_s[:, :, None] & mask_t[:, None, :]
        return scores.masked_fill(~pair, self.mask_value)

    def _check_ids(self, batch: KDBatch) -> None:
        """Every embedded id (inputs and targets of both response spans) within its embedding table."""
        for side, model in (("student", self.student), ("teacher", self.teacher)):
            size = embedding_table(model, side).weight.shape[0]
            mask = getattr(batch, f"{side}_mask")
            for kind in ("input_ids", "targets"):
                check_ids(f"{side}_{kind}", getattr(batch, f"{side}_{kind}"), mask, size, f"the {side}'s embeddings")

    def project_spaces(self, batch: KDBatch, s_out, t_out) -> tuple[torch.Tensor, torch.Tensor, dict]:
        mask_t = batch.teacher_mask
        h_s, h_t = s_out.hidden_states[-1], t_out.hidden_states[-1].detach().float()
        t_logits = t_out.logits.detach()
        scores = self.attention_scores(batch)
        t2s_weight = scores.softmax(-1)
        s2t_weight = scores.transpose(-1, -2).softmax(-1)
        value_ids = batch.teacher_targets if self.value_target == "gold" else t_logits.argmax(-1)
        value_ids = torch.where(mask_t, value_ids, 0)
        value_t = project(
            self.t2s,
            scalar_std_normalise(h_t, mask_t, self.key_norm)
            + scalar_std_normalise(embed(self.teacher, value_ids, "teacher"), mask_t, self.key_norm),
        )
        value_s = project(self.s2t, h_s)
        diagnostics = {
            "t2s_weight": Alignment(t2s_weight.detach(), "soft", "target", over="teacher"),
            "s2t_weight": Alignment(s2t_weight.detach().transpose(1, 2), "soft", "target", over="student"),
            "t2s_reference": batch.target_alignment() & mask_t[:, None, :],
        }
        return t2s_weight @ value_t, s2t_weight @ value_s, diagnostics
