"""Static HTML reports: one self-contained file per run or set of runs, viewable without network.

plotly.js is inlined once; every figure comes from :mod:`kdviz.viz.figures`; views that change with the
step (alignment, transport, per-token losses and head/tail) get a client-side step slider that redraws the
whole figure of the chosen step (:func:`stepped_view`). All text from the run (token strings, method names,
paths) is HTML-escaped, so a token such as ``<img src=x onerror=alert(1)>`` shows as text.

Size: each stepped view keeps at most ``max_steps`` recorded steps (evenly spaced, always the last),
each matrix binned to :data:`kdviz.viz.figures.MAX_AXIS` per axis, values rounded to 4 significant digits.
"""

from __future__ import annotations

import html
import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from kdviz.record.reader import Run
from kdviz.record.store import TRANSPORT_PLAN, VOCAB_MAP
from kdviz.viz import figures

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


STEPPED_SCRIPT = """
function kdvizStepped(id) {
  const root = document.getElementById(id);
  const figures = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  const plot = root.querySelector(".kdviz-plot");
  const slider = root.querySelector("input[type='range']");
  const label = root.querySelector(".kdviz-step");
  function show(i) {
    label.textContent = "step " + figures[i].step;
    Plotly.react(plot, figures[i].figure.data, figures[i].figure.layout, {responsive: true});
  }
  slider.addEventListener("input", () => show(Number(slider.value)));
  show(figures.length - 1);
}
"""


def _script_json(value: str) -> str:
    """JSON text that is safe inside a ``<script>`` element (no ``</script>``, no HTML entities decoded)."""
    return value.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def stepped_view(build: Callable[[int], go.Figure], steps: Sequence[int], view_id: str, name: str) -> str | None:
    """A view with a step slider: one complete figure per step, drawn by ``Plotly.react`` when the slider
    moves, so each step shows its own axes (a 30x16 matrix is never cropped to an earlier step's 3x4).
    Opens on the last step; ``name`` (what the view shows) goes into its ``data-view`` attribute. None when
    ``steps`` is empty."""
    if not steps:
        return None
    figures = []
    for step in steps:
        fig = build(step)
        _round(fig)
        figures.append(f'{{"step":{int(step)},"figure":{fig.to_json()}}}')
    last = len(steps) - 1
    return (
        f"<div class='kdviz-stepped' id='{view_id}' data-view='{html.escape(name)}'>"
        f"<div class='kdviz-slider'><input type='range' min='0' max='{last}' value='{last}' step='1' "
        f"aria-label='step'> <span class='kdviz-step'></span></div>"
        "<div class='kdviz-plot'></div>"
        f"<script type='application/json'>{_script_json('[' + ','.join(figures) + ']')}</script>"
        f"<script>kdvizStepped('{view_id}')</script></div>"
    )


def _figure_html(fig: go.Figure) -> str:
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"responsive": True})


def _run_sections(run: Run, label: str, max_steps: int, view_ids: Iterator[int]) -> list[str]:
    out = [f"<h2>{label}</h2>", f"<p class='note'>{html.escape(str(run.path))}</p>"]
    notes = run.meta.get("notes", {})
    if notes:
        items = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in notes.items())
        out.append(f"<details><summary>recorder notes</summary><ul>{items}</ul></details>")
    out.append(_figure_html(figures.head_tail_steps(run)))
    names = run.matrix_names()
    views: list[tuple[str, Callable[[int], go.Figure], list[int]]] = []
    for name in figures.ALIGNMENT_NAMES:
        if name in names:
            heatmap = lambda s, name=name: figures.alignment_heatmap(run.matrix(name, s, 0))  # noqa: E731
            views.append((name, heatmap, run.matrix_steps(name)))
    if TRANSPORT_PLAN in names:
        views.append(
            (TRANSPORT_PLAN, lambda s: figures.transport_figure(run, step=s), run.matrix_steps(TRANSPORT_PLAN))
        )
    tokens = run.tokens()
    token_value = next((v for v in figures.TOKEN_VALUES if v in tokens.columns), None)
    if token_value is not None:
        steps = sorted(int(s) for s in tokens.loc[tokens[token_value].notna(), "step"].unique())
        views.append((token_value, lambda s: figures.token_losses(run, s, 0, value=token_value), steps))
    per_token = run.head_tail(per_token=True)
    if "g_head" in per_token.columns:
        steps = sorted(int(s) for s in per_token.loc[per_token["sample"] == 0, "step"].unique())
        views.append(("head_tail", lambda s: figures.head_tail_tokens(run, s, 0), steps))
    for name, build, steps in views:
        view = stepped_view(build, pick_steps(steps, max_steps), f"view-{next(view_ids)}", name)
        if view is not None:
            out.append(view)
    if not run.table(VOCAB_MAP).empty:
        out.append(_figure_html(figures.vocab_map_table(run)))
    for probe, present in (
        ("alignment", any(name in names for name in figures.ALIGNMENT_NAMES)),
        ("transport", TRANSPORT_PLAN in names),
        ("token_loss", token_value is not None),
    ):
        if not present:
            out.append(f"<p class='note'>{html.escape(probe)}: {html.escape(notes.get(probe, 'not recorded'))}</p>")
    out.append(_figure_html(figures.numerics(run)))
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
    named = figures._as_runs(runs)
    if not named:
        raise ValueError("report() needs at least one run")
    raw = {html.unescape(label): run for label, run in named.items()}  # the figures escape labels themselves
    results = figures.results_table(raw).to_html(index=False, escape=False, classes="results", border=0, na_rep="")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by kdviz</p>",
        "<h2>results</h2>",
        results,
        _figure_html(figures.loss_terms(raw)),
    ]
    view_ids = itertools.count()
    for label, run in named.items():
        parts.extend(_run_sections(run, label, max_steps, view_ids))
    document = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script><script>{STEPPED_SCRIPT}</script></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
