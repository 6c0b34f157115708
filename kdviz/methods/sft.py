"""Supervised fine-tuning on the gold responses: the floor every KD method is compared with."""

from __future__ import annotations

from torch import nn

from kdviz.methods._common import attach_models, check_devices, kd_output, masked_mean
from kdviz.methods.base import KDBatch, KDOutput
from kdviz.methods.diagnostics import Logits, TokenValues
from kdviz.ops import IGNORE, cross_entropy


class SFT(nn.Module):
    """``loss = CE(z_s, y)``, the token mean over the response; no teacher is run.

    ``SFT(student=None, teacher=None)`` (a teacher is accepted and ignored, so that every method is built
    alike). ``method(batch, student_outputs=None)``. Terms: ``loss``, ``ce``, ``student_acc``.
    Diagnostics (:mod:`kdviz.methods.diagnostics`): ``token_ce`` (``TokenValues`` ``[B, T]``),
    ``student_mask``, ``student_input_ids``, ``student_target_ids``, ``student_logits`` (``Logits``).
    """

    def __init__(self, student: nn.Module | None = None, teacher: nn.Module | None = None) -> None:
        super().__init__()
        attach_models(self, student, teacher)

    def forward(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput:
        if student_outputs is None:
            if self.student is None:
                raise ValueError("pass student_outputs=..., or build SFT with a student model")
            check_devices(batch, student=self.student)
            student_outputs = self.student(
                input_ids=batch.student_input_ids, attention_mask=batch.student_attention_mask
            )
        z_s = student_outputs.logits
        targets = batch.student_targets
        mask = targets != IGNORE
        ce, token_ce = cross_entropy(z_s, targets)
        diagnostics = {
            "token_ce": TokenValues(token_ce.detach(), "student"),
            "student_mask": mask,
            "student_input_ids": batch.student_input_ids,
            "student_target_ids": targets,
            "student_logits": Logits(z_s.detach(), "student", "student"),
        }
        metrics = {"student_acc": masked_mean(z_s.detach().argmax(-1) == targets, mask)}
        return kd_output(ce, {"ce": ce}, metrics, diagnostics)
