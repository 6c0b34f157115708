"""The toy distributions of the AKL paper's experiment: a noisy half-Gaussian teacher over a few classes and
students that each get one part of it right, with every divergence and the head/tail statistics between them
(``kdviz toy``, the teaching notebook and :mod:`kdviz.viz.toy`'s figures)."""

from __future__ import annotations

import pandas as pd
import torch

from kdviz.divergences import DIVERGENCES, divergence
from kdviz.headtail import head_tail


def half_gaussian_teacher(vocab: int = 80, sigma: float = 16.0, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """The AKL paper's toy teacher: logits of a discretised half-Gaussian over ``vocab`` classes (mode at
    class 0, standard deviation ``sigma`` classes) with multiplicative noise of relative size ``noise``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.arange(vocab, dtype=torch.float64)
    density = torch.exp(-0.5 * (x / sigma) ** 2) * (1 + noise * torch.rand(vocab, generator=gen, dtype=torch.float64))
    return (density / density.sum()).log()


HEAD_TAIL_COLUMNS = ["head_size", "p_head", "q_head", "g_head", "g_tail", "d_head", "w_head"]


def toy_students(teacher: torch.Tensor, mu: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Student logits that each get one part of the teacher right (names say which)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = teacher.shape[-1]
    p = teacher.exp()
    in_head = torch.cumsum(p, 0) <= mu
    in_head[0] = True
    flat = torch.full_like(p, 1.0 / vocab)

    def mix(inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        """Take ``inside`` on the teacher's head and ``outside`` on its tail, renormalised."""
        q = torch.where(in_head, inside, outside)
        return (q / q.sum()).log()

    return {
        "uniform (free logits at init)": torch.rand(vocab, generator=gen, dtype=torch.float64),
        "head right, tail flat": mix(p, flat * p[~in_head].sum()),
        "tail right, head flat": mix(flat * 4, p),
        "too confident (teacher / 0.5)": teacher / 0.5,
        "too flat (teacher / 2)": teacher / 2.0,
        "peak shifted by 8 classes": teacher.roll(8),
        "equal to the teacher": teacher.clone(),
    }


def divergence_table(mu: float = 0.5) -> pd.DataFrame:
    """Every registered divergence and the head/tail statistics for each toy student vs the toy teacher."""
    teacher = half_gaussian_teacher()
    students = toy_students(teacher, mu)
    s = torch.stack(list(students.values()))
    t = teacher.expand_as(s)
    table = pd.DataFrame(
        {name: divergence(name, s, t, reduction="none").numpy() for name in DIVERGENCES}, index=list(students)
    )
    ht = head_tail(s, t, mu=mu)
    for column in HEAD_TAIL_COLUMNS:
        table[column] = getattr(ht, column).numpy()
    table.index.name = "student"
    return table
