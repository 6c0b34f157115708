"""Dual-space knowledge distillation (DSKD, docs/methods.md#dskd; Zhang et al., arXiv 2406.17328), same
tokenizer.

With ``h_s, h_t`` the last hidden states (what the LM heads consume), ``W_s, W_t`` the LM heads and
learned projectors ``t2s: d_t -> d_s``, ``s2t: d_s -> d_t``::

    t2s_logits = t2s(h_t) @ sg(W_s).T              # the teacher, projected into the student's space
    t2s_ce     = CE(t2s_logits, y)                 # trains t2s only
    t2s_kd     = D(teacher=sg(t2s_logits), student=z_s)
    s2t_logits = s2t(h_s) @ sg(W_t).T              # the student, projected into the teacher's space
    s2t_kd     = FKL(p_teacher || softmax(s2t_logits))
    KD   = t2s_kd + t2s_ce + s2t_kd
    loss = ce_weight * CE(z_s, y) + kd_weight * KD

``sg`` is stop-gradient. KD terms use temperature ``tau`` on both sides; the CE terms do not. Each term is
a token mean: ``t2s_*`` over the student's response tokens, ``s2t_kd`` over the teacher's (or, with
``s2t_normaliser="student"``, the teacher-token sum over the student's count, as the published code does).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from kdviz.divergences import divergence
from kdviz.methods._common import (
    attach_models,
    check_devices,
    check_divergence,
    check_weights,
    frozen_head_logits,
    head_dim,
    kd_output,
    masked_mean,
    model_device,
    project,
    run_models,
)
from kdviz.methods.base import IGNORE, KDBatch, KDOutput
from kdviz.methods.diagnostics import Logits, TokenValues
from kdviz.ops import cross_entropy

S2T_NORMALISERS = ("teacher", "student")


class DSKD(nn.Module):
    """Dual-space KD between a student and a teacher that share a tokenizer.

    ``DSKD(student, teacher, *, divergence="fkl", divergence_params=None, teacher_space_divergence="fkl",
    ce_weight=0.5, kd_weight=0.5, tau=2.0, tau_squared=False, s2t_normaliser="teacher")``

    - ``divergence``: ``D`` of the student-space term, any name of :data:`kdviz.DIVERGENCES`, with
      ``divergence_params`` (also given to ``teacher_space_divergence`` when it names the same divergence).
    - ``teacher_space_divergence``: the teacher-space term; forward KL in the paper whatever ``D`` is.
    - ``ce_weight``, ``kd_weight``, ``tau``: the paper's 0.5, 0.5, 2.0. ``tau_squared`` multiplies the KD
      terms by ``tau**2``.
    - ``s2t_normaliser``: ``"teacher"`` (default) makes ``s2t_kd`` the mean over the teacher's response
      tokens; ``"student"`` divides its sum by the student's token count, as the published code divides
      every summed term by one per-batch count (a factor ``N_t / N_s`` between the two; 1 with one
      tokenizer). For the DSKD repository's ``adaptive_kl``, pass ``divergence_params={"tail_mass": a}``.

    Both models are any Hugging Face causal LM; they are read through ``output_hidden_states=True``
    (``hidden_states[-1]``) and ``get_output_embeddings()``. The teacher is frozen. ``method.parameters()``
    are the projectors ``t2s`` (``nn.Linear(d_t, d_s)``) and ``s2t`` (``nn.Linear(d_s, d_t)``), created on
    the student's device in float32; give them their own optimizer group (the paper uses lr 1e-3)::

        opt = torch.optim.AdamW([{"params": student.parameters()},
                                 {"params": method.parameters(), "lr": 1e-3}], lr=...)

    ``method(batch, student_outputs=None, teacher_outputs=None)`` runs the student and the teacher itself
    unless their outputs (with ``hidden_states``) are passed.

    Terms: ``loss``, ``ce``, ``kd``, ``t2s_ce``, ``t2s_kd``, ``s2t_kd`` (also in ``out.parts``, attached
    to the graph), ``t2s_acc`` (argmax of ``t2s_logits`` equals the label), ``s2t_acc`` (argmax of
    ``s2t_logits`` equals the teacher's argmax), ``s2t_gold_acc`` (argmax of ``s2t_logits`` equals the
    teacher's label: the published code's ``s2t_acc``), ``student_acc`` (the student's token accuracy,
    the published code's ``accuracy``), ``max_t2s_prob`` (mean max probability of
    ``softmax(t2s_logits)``), ``kept_fraction`` (share of response tokens in ``t2s_kd``: 1 without CMA's
    accuracy filter). Diagnostics (:mod:`kdviz.methods.diagnostics`): ``token_kd``
    (:class:`~kdviz.methods.diagnostics.TokenValues` ``[B, T_s]``, per-token ``t2s_kd``), ``token_s2t_kd``
    (teacher side, ``[B, T_t]``), ``token_ce``, the masks (``student_mask``, ``teacher_mask``, ``t2s_kept``),
    token ids (``*_input_ids``, ``*_target_ids``) and :class:`~kdviz.methods.diagnostics.Logits`
    (``student_logits``, ``teacher_logits``, ``t2s_logits`` ``[B, T_s, V_s]``: the teacher in the student
    space, ``s2t_logits`` ``[B, T_t, V_t]``: the student in the teacher space).
    """

    acc_filter = False

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
    ) -> None:
        super().__init__()
        for role, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, nn.Module):
                raise TypeError(f"{role} must be a Hugging Face causal LM (an nn.Module), got {type(model).__name__}")
        ce_weight, kd_weight, tau = check_weights(ce_weight, kd_weight, tau)
        if s2t_normaliser not in S2T_NORMALISERS:
            raise ValueError(f"s2t_normaliser must be one of {S2T_NORMALISERS}, got {s2t_normaliser!r}")
        self.s2t_normaliser = s2t_normaliser
        self.divergence = check_divergence(divergence)
        self.teacher_space_divergence = check_divergence(teacher_space_divergence, "teacher_space_divergence")
        self.divergence_params = dict(divergence_params or {})
        self.ce_weight, self.kd_weight, self.tau, self.tau_squared = ce_weight, kd_weight, tau, tau_squared
        self.d_s, self.d_t = head_dim(student, "student"), head_dim(teacher, "teacher")
        device = model_device(student)
        self.t2s = nn.Linear(self.d_t, self.d_s, device=device)
        self.s2t = nn.Linear(self.d_s, self.d_t, device=device)
        attach_models(self, student, teacher)
        self._heads_checked = False

    def extra_repr(self) -> str:
        return (
            f"divergence={self.divergence!r}, teacher_space_divergence={self.teacher_space_divergence!r}, "
            f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, tau={self.tau}, "
            f"s2t_normaliser={self.s2t_normaliser!r}"
        )

    # -- the two projections; CMA replaces this ------------------------------------------------------
    def project_spaces(self, batch: KDBatch, s_out, t_out) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(t2s_hidden [B,T_s,d_s], s2t_hidden [B,T_t,d_t], diagnostics)``: position by position."""
        if not batch.shares_tokenization():
            raise ValueError(
                "DSKD pairs student and teacher positions one to one, but the two tokenizations differ; "
                "use kdviz.methods.CMA (DSKD with cross-model attention) for different tokenizers"
            )
        h_s, h_t = s_out.hidden_states[-1], t_out.hidden_states[-1].detach()
        return project(self.t2s, h_t), project(self.s2t, h_s), {}

    def forward(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput:
        check_devices(batch, method=self)
        s_out, t_out = run_models(self, batch, student_outputs, teacher_outputs, hidden=True)
        self._check_heads(s_out, t_out)
        t2s_hidden, s2t_hidden, extra_diagnostics = self.project_spaces(batch, s_out, t_out)
        t2s_logits = frozen_head_logits(t2s_hidden, self.student, "student")
        s2t_logits = frozen_head_logits(s2t_hidden, self.teacher, "teacher")
        out = self._losses(batch, s_out.logits, t_out.logits.detach(), t2s_logits, s2t_logits)
        out.diagnostics.update(extra_diagnostics)
        return out

    def _losses(
        self,
        batch: KDBatch,
        z_s: torch.Tensor,
        z_t: torch.Tensor,
        t2s_logits: torch.Tensor,
        s2t_logits: torch.Tensor,
    ) -> KDOutput:
        s_tgt, t_tgt = batch.student_targets, batch.teacher_targets
        mask_s, mask_t = s_tgt != IGNORE, t_tgt != IGNORE
        ce, token_ce = cross_entropy(z_s, s_tgt)
        t2s_ce, _ = cross_entropy(t2s_logits, s_tgt)
        t2s_correct = t2s_logits.detach().argmax(-1) == s_tgt
        kept = mask_s & t2s_correct if self.acc_filter else mask_s
        token_kd = self._divergence(self.divergence, z_s, t2s_logits.detach(), kept)
        t2s_kd = token_kd.sum() / mask_s.sum().clamp(min=1)
        token_s2t = self._divergence(self.teacher_space_divergence, s2t_logits, z_t, mask_t)
        s2t_count = mask_t.sum() if self.s2t_normaliser == "teacher" else mask_s.sum()
        s2t_kd = token_s2t.sum() / s2t_count.clamp(min=1)
        kd = t2s_kd + t2s_ce + s2t_kd
        loss = self.ce_weight * ce + self.kd_weight * kd
        parts = {"ce": ce, "kd": kd, "t2s_ce": t2s_ce, "t2s_kd": t2s_kd, "s2t_kd": s2t_kd}
        with torch.no_grad():
            metrics = {
                "t2s_acc": masked_mean(t2s_correct, mask_s),
                "s2t_acc": masked_mean(s2t_logits.argmax(-1) == z_t.argmax(-1), mask_t),
                "s2t_gold_acc": masked_mean(s2t_logits.argmax(-1) == t_tgt, mask_t),
                "student_acc": masked_mean(z_s.detach().argmax(-1) == s_tgt, mask_s),
                "max_t2s_prob": masked_mean(t2s_logits.softmax(-1).amax(-1), mask_s),
                "kept_fraction": masked_mean(kept, mask_s),
            }
        diagnostics = {
            "token_kd": TokenValues(token_kd.detach(), "student"),
            "token_s2t_kd": TokenValues(token_s2t.detach(), "teacher"),
            "token_ce": TokenValues(token_ce.detach(), "student"),
            "student_mask": mask_s,
            "teacher_mask": mask_t,
            "student_input_ids": batch.student_input_ids,
            "teacher_input_ids": batch.teacher_input_ids,
            "student_target_ids": s_tgt,
            "teacher_target_ids": t_tgt,
            "student_logits": Logits(z_s.detach(), "student", "student"),
            "teacher_logits": Logits(z_t, "teacher", "teacher"),
            "t2s_logits": Logits(t2s_logits.detach(), "teacher", "student"),
            "s2t_logits": Logits(s2t_logits.detach(), "student", "teacher"),
            "t2s_kept": kept,
        }
        return kd_output(loss, parts, metrics, diagnostics)

    def _divergence(self, name: str, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor):
        params = self.divergence_params if name == self.divergence else {}
        return divergence(
            name, student, teacher, mask, tau=self.tau, reduction="none", tau_squared=self.tau_squared, **params
        )

    def _check_heads(self, s_out, t_out) -> None:
        """Once: warn if ``hidden_states[-1] @ W.T`` does not reproduce a model's logits.

        The dual-space projections assume the last hidden state is what the LM head consumes; models that
        rescale or soft-cap their logits break that assumption.
        """
        if self._heads_checked:
            return
        self._heads_checked = True
        for role, out, model in (("student", s_out, self.student), ("teacher", t_out, self.teacher)):
            with torch.no_grad():
                h = out.hidden_states[-1][:, :1]
                ref = out.logits[:, :1].float()
                got = frozen_head_logits(h, model, role)
                if not torch.allclose(got, ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max().clamp(min=1))):
                    warnings.warn(
                        f"the {role}'s logits are not hidden_states[-1] @ get_output_embeddings().weight.T "
                        "(logit scaling or soft-capping?); projected logits will be on a different scale",
                        stacklevel=3,
                    )
