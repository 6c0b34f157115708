"""Vanilla (token-level, same-vocabulary) knowledge distillation.

``loss = ce_weight * CE(z_s, y) + kd_weight * D(p_teacher, q_student)`` with ``D`` any divergence of
:data:`kdviz.DIVERGENCES`, both sides at temperature ``tau``, token mean over the response.
"""

from __future__ import annotations

import torch
from torch import nn

from kdviz.divergences import divergence
from kdviz.methods._common import attach_models, check_divergence, check_weights, kd_output, masked_mean, run_models
from kdviz.methods.base import KDBatch, KDOutput
from kdviz.methods.diagnostics import Logits, TokenValues
from kdviz.ops import IGNORE, cross_entropy


class VanillaKD(nn.Module):
    """Same-tokenizer KD: the student matches the teacher's next-token distribution position by position.

    ``VanillaKD(student=None, teacher=None, *, divergence="fkl", divergence_params=None, ce_weight=0.5,
    kd_weight=0.5, tau=1.0, tau_squared=False, trim_vocab=None)``

    - ``divergence``: a name of :data:`kdviz.DIVERGENCES`; ``divergence_params`` its parameters
      (e.g. ``{"mu": 0.5}`` for ``"akl"``).
    - ``ce_weight``, ``kd_weight``: ``loss = ce_weight * CE + kd_weight * KD`` (0.5/0.5 as in the DSKD
      paper's baselines); ``tau`` divides both sides' logits (docs/methods.md#conventions, default 1);
      ``tau_squared=True`` multiplies KD by ``tau**2``.
    - ``trim_vocab``: ``True`` drops the padded LM-head rows when the two vocabularies differ only by
      padding (e.g. 151936 vs 152064).

    ``method(batch, student_outputs=None, teacher_outputs=None)`` runs the models it holds (the teacher
    frozen, in eval mode, without gradients) unless given their outputs; models are optional when
    outputs are always passed. The batch must have one tokenization for both (use :class:`CMA` otherwise).
    It has no parameters of its own.

    Terms: ``loss``, ``ce``, ``kd`` (also in ``parts``, attached), ``student_acc`` (argmax equals the
    label), ``top1_agreement`` (student and teacher argmax agree). Diagnostics
    (:mod:`kdviz.methods.diagnostics`): ``token_kd`` and ``token_ce`` (``TokenValues`` ``[B, T]``),
    ``student_mask``, ``student_input_ids``, ``student_target_ids``, ``student_logits`` and
    ``teacher_logits`` (``Logits``).
    """

    def __init__(
        self,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        *,
        divergence: str = "fkl",
        divergence_params: dict | None = None,
        ce_weight: float = 0.5,
        kd_weight: float = 0.5,
        tau: float = 1.0,
        tau_squared: bool = False,
        trim_vocab: bool | int | None = None,
    ) -> None:
        super().__init__()
        ce_weight, kd_weight, tau = check_weights(ce_weight, kd_weight, tau)
        self.divergence = check_divergence(divergence)
        self.divergence_params = dict(divergence_params or {})
        self.ce_weight, self.kd_weight, self.tau = ce_weight, kd_weight, tau
        self.tau_squared, self.trim_vocab = tau_squared, trim_vocab
        attach_models(self, student, teacher)

    def forward(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput:
        if not batch.shares_tokenization():
            raise ValueError(
                "VanillaKD compares the two models position by position, but the student and teacher "
                "tokenizations differ; use kdviz.methods.CMA (or another cross-tokenizer method)"
            )
        s_out, t_out = run_models(self, batch, student_outputs, teacher_outputs, hidden=False)
        z_s, z_t = s_out.logits, t_out.logits.detach()
        targets = batch.student_targets
        mask = targets != IGNORE
        ce, token_ce = cross_entropy(z_s, targets)
        token_kd = divergence(
            self.divergence,
            z_s,
            z_t,
            mask,
            tau=self.tau,
            reduction="none",
            tau_squared=self.tau_squared,
            trim_vocab=self.trim_vocab,
            **self.divergence_params,
        )
        kd = token_kd.sum() / mask.sum().clamp(min=1)
        loss = self.ce_weight * ce + self.kd_weight * kd
        with torch.no_grad():
            student_argmax = z_s.argmax(-1)
            metrics = {
                "student_acc": masked_mean(student_argmax == targets, mask),
                "top1_agreement": masked_mean(student_argmax == z_t.argmax(-1), mask),
            }
        diagnostics = {
            "token_kd": TokenValues(token_kd.detach(), "student"),
            "token_ce": TokenValues(token_ce.detach(), "student"),
            "student_mask": mask,
            "student_input_ids": batch.student_input_ids,
            "student_target_ids": targets,
            "student_logits": Logits(z_s.detach(), "student", "student"),
            "teacher_logits": Logits(z_t, "teacher", "teacher"),
        }
        return kd_output(loss, {"ce": ce, "kd": kd}, metrics, diagnostics)
