"""Static HTML reports: one self-contained file per run or set of runs, viewable without network.

plotly.js is inlined once; every figure comes from :mod:`kdviz.viz.figures`; views that change with the
step (alignment, transport, per-token losses and head/tail) get a client-side step slider made of plotly
frames. All text from the run (token strings, method names, paths) is HTML-escaped, so a token such as
``<img src=x onerror=alert(1)>`` shows as text.

Size: each stepped view keeps at most ``max_steps`` recorded steps (evenly spaced, always the last),
each matrix binned to :data:`kdviz.viz.figures.MAX_AXIS` per axis, values rounded to 4 significant digits.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from kdviz.record.reader import Run
from kdviz.viz import figures as F

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.results { border-collapse: collapse; font-size: 0.9em; }
table.results td, table.results th { border: 1px solid #ddd; padding: 3px 8px; }
.note { color: #666; font-style: italic; }
"""


def pick_steps(steps: Sequence[int], limit: int) -> list[int]:
    """At most ``limit`` of ``steps``, evenly spaced, always including the first and the last."""
    steps = list(steps)
    if len(steps) <= limit:
        return steps
    index = np.unique(np.linspace(0, len(steps) - 1, limit).round().astype(int))
    return [steps[i] for i in index]


def _round(fig: go.Figure) -> None:
    """Round float arrays in place to 4 significant digits (the report's size is mostly matrices)."""
    for trace in fig.data:
        for key in ("z", "y", "x"):
            value = getattr(trace, key, None)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                trace[key] = np.asarray([float(f"{v:.4g}") for v in value.ravel()]).reshape(value.shape)


def stepped_figure(build: Callable[[int], go.Figure], steps: Sequence[int]) -> go.Figure | None:
    """One figure with a client-side step slider: a frame per step of ``build(step)``. Steps whose figure
    has a different trace layout from the last step's are left out. None when ``steps`` is empty."""
    if not steps:
        return None
    figures = {}
    for step in steps:
        fig = build(step)
        _round(fig)
        figures[step] = fig
    base = figures[steps[-1]]
    kinds = [t.type for t in base.data]
    kept = [s for s in steps if [t.type for t in figures[s].data] == kinds]
    base.frames = [
        go.Frame(name=str(s), data=list(figures[s].data), layout={"title": figures[s].layout.title}) for s in kept
    ]
    animate = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}
    base.update_layout(
        sliders=[
            {
                "active": len(kept) - 1,
                "currentvalue": {"prefix": "step "},
                "pad": {"t": 60},
                "steps": [{"label": str(s), "method": "animate", "args": [[str(s)], animate]} for s in kept],
            }
        ]
    )
    base.update_layout(height=(base.layout.height or 450) + 80)
    return base


def _figure_html(fig: go.Figure) -> str:
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"responsive": True})


def _run_sections(run: Run, label: str, max_steps: int) -> list[str]:
    out = [f"<h2>{label}</h2>", f"<p class='note'>{html.escape(str(run.path))}</p>"]
    notes = run.meta.get("notes", {})
    if notes:
        items = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in notes.items())
        out.append(f"<details><summary>recorder notes</summary><ul>{items}</ul></details>")
    out.append(_figure_html(F.head_tail_steps(run)))
    tokens = run.tokens()
    token_steps = sorted(int(s) for s in tokens["step"].unique()) if not tokens.empty else []
    views: list[tuple[str, Callable[[int], go.Figure], list[int]]] = []
    if "t2s_weight" in run.matrix_names():
        views.append(
            ("alignment", lambda s: F.alignment_heatmap(run.matrix("t2s_weight", s, 0)), run.matrix_steps("t2s_weight"))
        )
    if "transport_plan" in run.matrix_names():
        cost = "transport_cost" in run.matrix_names()
        views.append(
            (
                "transport",
                lambda s: F.transport_figure(
                    run.matrix("transport_plan", s, 0), run.matrix("transport_cost", s, 0) if cost else None
                ),
                run.matrix_steps("transport_plan"),
            )
        )
    if token_steps:
        views.append(("tokens", lambda s: F.token_losses(run, s, 0), token_steps))
        if "g_head" in tokens.columns:
            views.append(("head/tail per token", lambda s: F.head_tail_tokens(run, s, 0), token_steps))
    for _, build, steps in views:
        fig = stepped_figure(build, pick_steps(steps, max_steps))
        if fig is not None:
            out.append(_figure_html(fig))
    if not run.table("vocab_map").empty:
        out.append(_figure_html(F.vocab_map_table(run)))
    for probe, present in (
        ("alignment", "t2s_weight" in run.matrix_names()),
        ("transport", "transport_plan" in run.matrix_names()),
        ("token_loss", bool(token_steps)),
    ):
        if not present:
            out.append(f"<p class='note'>{html.escape(probe)}: {html.escape(notes.get(probe, 'not recorded'))}</p>")
    out.append(_figure_html(F.numerics(run)))
    return out


def report(
    runs: Run | Mapping[str, Run] | Sequence[Run],
    path: str | os.PathLike,
    *,
    title: str = "kdviz report",
    max_steps: int = 10,
) -> Path:
    """Write a self-contained HTML report of one or several runs to ``path`` and return the path.

    Contents: the results table, the loss terms of all runs overlaid, then per run the head/tail
    statistics over steps, the alignment heatmap, transport plan and per-token views of sample 0 with a
    client-side step slider (at most ``max_steps`` steps each), the last top-k vocabulary map (ids), and
    the numerics.
    """
    named = F._as_runs(runs)
    if not named:
        raise ValueError("report() needs at least one run")
    raw = {html.unescape(label): run for label, run in named.items()}  # the figures escape labels themselves
    results = F.results_table(raw).to_html(index=False, escape=False, classes="results", border=0, na_rep="")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by kdviz</p>",
        "<h2>results</h2>",
        results,
        _figure_html(F.loss_terms(raw)),
    ]
    for label, run in named.items():
        parts.extend(_run_sections(run, label, max_steps))
    document = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
