"""Toy distributions for teaching the KL family: a shaped teacher over a small vocabulary, a free-logit
student trained under any registered divergence, and their figures (used by ``playground()`` and by the
teaching notebook that reproduces the AKL paper's toy experiment, docs/methods.md#akl)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from kdviz.demo.toy import half_gaussian_teacher  # noqa: F401 (the teacher of the figures and notebooks)
from kdviz.divergences import DIVERGENCES, divergence
from kdviz.headtail import head_mask, head_tail
from kdviz.viz.figures import SIDE_COLOURS

PARAMETRISED = {"akl": "mu"}  # divergences that take the head threshold


def teacher_logits(
    vocab: int = 20,
    peak: int = 0,
    spread: float = 3.0,
    second_mode: int | None = None,
    second_weight: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Teacher logits ``[vocab]`` (float64): a Gaussian bump at ``peak`` of width ``spread`` classes, plus
    ``second_weight`` of a second bump at ``second_mode``, softened or sharpened by ``temperature``."""
    x = torch.arange(vocab, dtype=torch.float64)
    density = torch.exp(-0.5 * ((x - peak) / spread) ** 2)
    if second_mode is not None and second_weight > 0:
        density = (1 - second_weight) * density / density.sum() + second_weight * _bump(x, second_mode, spread)
    return (density / density.sum()).clamp_min(1e-12).log() / temperature


def _bump(x: torch.Tensor, centre: int, spread: float) -> torch.Tensor:
    b = torch.exp(-0.5 * ((x - centre) / spread) ** 2)
    return b / b.sum()


def _params(name: str, mu: float) -> dict:
    return {PARAMETRISED[name]: mu} if name in PARAMETRISED else {}


def divergence_values(student: torch.Tensor, teacher: torch.Tensor, mu: float = 0.5) -> dict[str, float]:
    """Every registered divergence of ``student`` from ``teacher`` (1-d logits), ``mu`` for AKL."""
    s, t = student[None].double(), teacher[None].double()
    return {name: float(divergence(name, s, t, reduction="sum", **_params(name, mu))) for name in DIVERGENCES}


def divergence_gradient(student: torch.Tensor, teacher: torch.Tensor, name: str, mu: float = 0.5) -> np.ndarray:
    """``d D(p, q) / d z_s`` per class for divergence ``name`` (1-d student logits ``z_s``)."""
    s = student.detach().double().clone().requires_grad_(True)
    value = divergence(name, s[None], teacher[None].double(), reduction="sum", **_params(name, mu))
    (grad,) = torch.autograd.grad(value, s)
    return grad.numpy()


def train_free_logits(
    teacher: torch.Tensor,
    name: str,
    steps: int,
    *,
    lr: float = 0.2,
    mu: float = 0.5,
    init: torch.Tensor | None = None,
    seed: int = 0,
    snapshots: Sequence[int] | None = None,
) -> dict[int, torch.Tensor]:
    """Train free student logits (initialised uniformly in [0, 1], or ``init``) towards ``teacher`` under
    divergence ``name`` with Adam at ``lr``; returns the student logits after each step in ``snapshots``
    (default: every step) -- step 0 is the initial student."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {list(DIVERGENCES)}")
    if init is None:
        init = torch.rand(teacher.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = init.detach().double().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    wanted = set(range(steps + 1)) if snapshots is None else set(snapshots)
    out = {0: z.detach().clone()} if 0 in wanted else {}
    for step in range(1, steps + 1):
        loss = divergence(name, z[None], teacher[None].double(), reduction="sum", **_params(name, mu))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in wanted:
            out[step] = z.detach().clone()
    return out


def head_tail_gaps(student: torch.Tensor, teacher: torch.Tensor, mu: float = 0.5) -> tuple[float, float]:
    """``(g_head, g_tail)``: the student's total absolute error on the teacher's head and on its tail."""
    stats = head_tail(student[None].double(), teacher[None].double(), mu=mu)
    return float(stats.g_head[0]), float(stats.g_tail[0])


def distribution_figure(
    teacher: torch.Tensor,
    student: torch.Tensor,
    *,
    mu: float = 0.5,
    gradients: Sequence[str] = ("fkl", "rkl", "akl"),
) -> go.Figure:
    """Teacher ``p`` and student ``q`` over the classes (teacher bars dark on its head, light on its tail)
    and, below, the gradient of each divergence in ``gradients`` with respect to every student logit."""
    p = teacher.double().softmax(-1).numpy()
    q = student.double().softmax(-1).numpy()
    head = head_mask(torch.as_tensor(p)[None], mu)[0].numpy()
    g_head, g_tail = head_tail_gaps(student, teacher, mu)
    classes = np.arange(len(p))
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=(
            f"p (teacher) and q (student) · head = {int(head.sum())} classes (mu {mu:g}) · "
            f"g_head {g_head:.3f} · g_tail {g_tail:.3f}",
            "gradient dD/dz_s per class (the student moves against it)",
        ),
    )
    colours = np.where(head, SIDE_COLOURS["teacher"], "#aec7e8")
    fig.add_trace(go.Bar(x=classes, y=p, name="p teacher (dark: head)", marker_color=colours), row=1, col=1)
    fig.add_trace(
        go.Scatter(x=classes, y=q, name="q student", mode="lines+markers", line={"color": SIDE_COLOURS["student"]}),
        row=1,
        col=1,
    )
    for name in gradients:
        fig.add_trace(
            go.Scatter(x=classes, y=divergence_gradient(student, teacher, name, mu), name=f"grad {name}", mode="lines"),
            row=2,
            col=1,
        )
    fig.update_xaxes(title_text="class", row=2, col=1)
    fig.update_yaxes(title_text="probability", row=1, col=1)
    fig.update_yaxes(title_text="gradient", row=2, col=1)
    fig.update_layout(height=560, margin={"t": 60}, legend={"orientation": "h", "y": -0.15})
    return fig


def remaining_gaps(
    run: dict[int, torch.Tensor], teacher: torch.Tensor, step: int, mu: float = 0.5
) -> tuple[float, float]:
    """The head and tail gaps at ``step`` as fractions of their values at step 0 (how much is left to close)."""
    start, now = head_tail_gaps(run[0], teacher, mu), head_tail_gaps(run[step], teacher, mu)
    return now[0] / start[0], now[1] / start[1]


def toy_experiment_figure(
    teacher: torch.Tensor,
    runs: dict[str, dict[int, torch.Tensor]],
    *,
    mu: float = 0.5,
    compare_at: int = 10,
    log_y: bool = True,
) -> go.Figure:
    """The AKL toy experiment: one row per training divergence (``runs[name][step]`` student logits, step 0
    included), one column per snapshot step after 0, teacher bars (dark: head) and the student line over
    every class, with each snapshot's head and tail gaps in its title.

    The figure's title states what the runs show at ``compare_at``: the share of each gap still open, per
    divergence, computed from the runs themselves. ``log_y`` (default) shows the far tail, where FKL and RKL
    differ most; the head looks the same on a linear axis.
    """
    names = list(runs)
    steps = [s for s in sorted(next(iter(runs.values()))) if s > 0]
    titles = []
    for name in names:
        for step in steps:
            g_head, g_tail = head_tail_gaps(runs[name][step], teacher, mu)
            titles.append(f"{name.upper()} step {step}<br>g_head {g_head:.3f} · g_tail {g_tail:.3f}")
    fig = make_subplots(
        rows=len(names),
        cols=len(steps),
        shared_yaxes=True,
        shared_xaxes=True,
        subplot_titles=titles,
        vertical_spacing=0.12,
        horizontal_spacing=0.02,
    )
    p = teacher.double().softmax(-1).numpy()
    head = head_mask(teacher.double().softmax(-1)[None], mu)[0].numpy()
    classes = np.arange(len(p))
    for r, name in enumerate(names, start=1):
        for c, step in enumerate(steps, start=1):
            first = r == 1 and c == 1
            fig.add_trace(
                go.Bar(
                    x=classes,
                    y=p,
                    marker_color=np.where(head, SIDE_COLOURS["teacher"], "#aec7e8"),
                    name="teacher p (dark: head)",
                    showlegend=first,
                ),
                row=r,
                col=c,
            )
            q = runs[name][step].double().softmax(-1).numpy()
            fig.add_trace(
                go.Scatter(
                    x=classes,
                    y=q,
                    mode="lines",
                    line={"color": SIDE_COLOURS["student"]},
                    name="student q",
                    showlegend=first,
                ),
                row=r,
                col=c,
            )
        fig.update_yaxes(title_text=f"{name.upper()}: probability", row=r, col=1)
    for c in range(1, len(steps) + 1):
        fig.update_xaxes(title_text="class", row=len(names), col=c)
    if log_y:
        fig.update_yaxes(type="log")
    left = [
        f"{name.upper()} head {h:.0%} · tail {t:.0%}"
        for name in names
        if compare_at in runs[name] and 0 in runs[name]
        for h, t in [remaining_gaps(runs[name], teacher, compare_at, mu)]
    ]
    title = "the AKL paper's toy experiment"
    if left:
        title += f"<br><sup>gap still open at step {compare_at} (of step 0): {' | '.join(left)}</sup>"
    fig.update_layout(
        height=260 * len(names) + 140,
        title=title,
        margin={"t": 120},
        legend={"orientation": "h", "y": -0.12},
    )
    fig.update_annotations(font_size=11)
    return fig
