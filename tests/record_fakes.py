"""Synthetic KDBatch / KDOutput look-alikes for the recorder tests (no dependency on kdviz.methods)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdviz.methods.diagnostics import Alignment, Logits, RankPairs, TokenEvents, TokenValues, Transport
from kdviz.record import RecordBatch

B, T_S, T_T, V_S, V_T, PROMPT = 3, 7, 6, 11, 13, 2


@dataclass
class FakeOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    diagnostics: dict[str, object]


def _labels(ids: torch.Tensor) -> torch.Tensor:
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    return labels


def make_batch(ids=("a", "b", "c"), seed: int = 0) -> RecordBatch:
    g = torch.Generator().manual_seed(seed)
    s_ids = torch.randint(0, V_S, (B, T_S), generator=g)
    t_ids = torch.randint(0, V_T, (B, T_T), generator=g)
    return RecordBatch(
        student_input_ids=s_ids,
        student_labels=_labels(s_ids),
        teacher_input_ids=t_ids,
        teacher_labels=_labels(t_ids),
        alignment=torch.rand(B, T_S, T_T, generator=g) > 0.7,
        texts=[f"text of example {i}" for i in ids],
        student_tokens=[[f"s{i}_{k}" for k in range(T_S)] for i in ids],
        teacher_tokens=[[f"t{i}_{k}" for k in range(T_T)] for i in ids],
        example_ids=list(ids),
    )


def make_output(step: int = 0, nan_term: bool = False) -> FakeOutput:
    g = torch.Generator().manual_seed(step)
    kd = torch.tensor(float("nan") if nan_term else 1.0 / (step + 1))
    scores = torch.randn(B, T_S, T_T, generator=g)
    token_kd = torch.rand(B, T_S, generator=g)
    if nan_term:
        token_kd[1, 3] = float("nan")
    plan = torch.zeros(B, T_S, T_T)
    plan[:, PROMPT - 1 : PROMPT + 3, PROMPT - 1 : PROMPT + 4] = torch.rand(B, 4, 5, generator=g)  # 4 x 5 paired
    return FakeOutput(
        loss=kd + 0.5,
        terms={"kd": kd, "ce": torch.tensor(0.5), "t2s_acc": torch.tensor(0.25)},
        diagnostics={
            "student_logits": Logits(torch.randn(B, T_S, V_S, generator=g), "student", "student"),
            "teacher_logits": Logits(torch.randn(B, T_T, V_T, generator=g), "teacher", "teacher"),
            "t2s_logits": Logits(torch.randn(B, T_S, V_S, generator=g), "teacher", "student"),
            "t2s_weight": Alignment(scores.softmax(-1), "soft"),
            "s2t_weight": Alignment(scores.softmax(1), "soft", over="student"),
            "transport": Transport(plan, plan * 2 + torch.rand(B, T_S, T_T, generator=g), plan.sum((1, 2))),
            "topk_ids": RankPairs(
                student_ids=torch.randint(0, V_S, (B, 5), generator=g),
                teacher_ids=torch.randint(0, V_T, (B, 5), generator=g),
            ),
            "token_kd": TokenValues(token_kd, "student"),
            "weight_fallback": TokenEvents(torch.zeros(B, T_S), "student", "akl_fallbacks"),
            "sinkhorn_iterations": torch.tensor(20.0),
        },
    )
