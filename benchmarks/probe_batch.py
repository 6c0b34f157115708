"""The KDBatch fields the recorder's probes read, for the synthetic runs of the benchmarks (a full
:class:`kdviz.KDBatch` also needs attention masks and character offsets, which no probe reads)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ProbeBatch:
    student_input_ids: torch.Tensor
    student_labels: torch.Tensor
    teacher_input_ids: torch.Tensor
    teacher_labels: torch.Tensor
    alignment: torch.Tensor
    texts: list[str] = field(default_factory=list)
    student_tokens: list[list[str]] = field(default_factory=list)
    teacher_tokens: list[list[str]] = field(default_factory=list)
