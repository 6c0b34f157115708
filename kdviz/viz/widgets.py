"""Jupyter widgets over recorded runs: :func:`dashboard`, :func:`compare`, :func:`playground` and
:func:`inspect_tokenizers`.

Widgets compose the pure figure functions of :mod:`kdviz.viz.figures`: each view is a :class:`FigureView`
(an ``Output`` widget drawn by JupyterLab's plotly renderer) that is given a fresh figure when the shared
step slider or sample selector moves. A failure while updating is printed to the
widget's error area instead of being raised in a callback nobody sees; a view whose data the run does not
hold explains why (from the recorder's notes) instead of failing.
"""

from __future__ import annotations

import asyncio
import bisect
import html
import json
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
import torch

from kdviz.align.tokens import token_table
from kdviz.divergences import DIVERGENCES
from kdviz.record.reader import Run
from kdviz.record.store import EVENTS, TOKENS, TRANSPORT_PLAN, VOCAB_MAP
from kdviz.viz import figures, toy

WHY = {
    "alignment": "No alignment matrices in this run. Only cross-tokenizer methods produce them: CMA's "
    "attentions t2s_weight / s2t_weight, ULD's position pairing and MinED's DTW path (dtw_path); record one "
    "with the 'alignment' probe enabled.",
    "transport": "No transport plans in this run. Only MultiLevelOT produces transport_plan / transport_cost; "
    "record it with the 'transport' probe enabled.",
    "token_loss": "No per-token rows in this run: record with samples >= 1 and the 'token_loss' probe.",
    "head_tail": "No head/tail statistics in this run: the 'head_tail' probe needs both models' logits over one "
    "vocabulary (the shared one, or DSKD / CMA's projected spaces); ULD, MinED and MultiLevelOT compare "
    "distributions over two different vocabularies.",
}


# plumbing ---------------------------------------------------------------------------------------------
PLOTLY_MIME = "application/vnd.plotly.v1+json"


class FigureView(widgets.Output):
    """A plotly figure in an ``Output`` widget, drawn by JupyterLab's plotly renderer (the
    ``jupyterlab-plotly`` extension that ships with plotly).

    Why not ``go.FigureWidget``: each FigureWidget is an anywidget that sends the ~5 MB plotly.js bundle
    over the kernel's websocket and renders only after a round trip through a (possibly busy) kernel; a
    dashboard of six of them sent ~36 MB and often stayed blank. Here the browser loads plotly.js once,
    from the extension's static files, and each figure travels as its JSON in an output message, which the
    front end renders without asking the kernel anything. :meth:`show` replaces the figure; ``data`` and
    ``layout`` read the figure shown.
    """

    def __init__(self, fig: go.Figure | None = None, **kwargs):
        super().__init__(**kwargs)
        self.figure = go.Figure()
        self.show(fig if fig is not None else go.Figure())

    def show(self, fig: go.Figure) -> None:
        """Show ``fig`` in place of the current figure (one message to the browser; safe from any thread)."""
        self.figure = fig
        title = fig.layout.title.text or "plotly figure"
        bundle = {PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": f"<{title}>"}
        self.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)

    @property
    def data(self):
        return self.figure.data

    @property
    def layout(self):
        return self.figure.layout


def _at(steps: Sequence[int], step: int | None) -> int | None:
    """The last of ``steps`` at or before ``step`` (the first one when ``step`` is earlier)."""
    if not steps:
        return None
    if step is None:
        return steps[-1]
    k = bisect.bisect_right(steps, step)
    return steps[max(k - 1, 0)]


def explain(text: str) -> widgets.HTML:
    """A short notice in place of a view whose data is absent."""
    return widgets.HTML(
        f"<div style='padding:1em;color:#555'><b>Nothing to show here.</b> {figures.token_label(text)}</div>"
    )


def table_html(df: pd.DataFrame, escape: bool = True) -> widgets.HTML:
    """A DataFrame as an HTML widget; ``escape=False`` for tables whose text is already escaped
    (:func:`kdviz.viz.figures.results_table`)."""
    return widgets.HTML(df.to_html(index=False, escape=escape, na_rep="", border=0))


class Panel:
    """One view: ``build(step, sample) -> Figure`` and the :class:`FigureView` that shows it.

    ``steps``: the steps at which the view's data exists (``None``: not stepped). ``tab``: the index of
    the tab holding it (None: always visible); hidden panels are brought up to date when shown.
    """

    def __init__(
        self,
        build: Callable[[int | None, int], go.Figure],
        steps: Callable[[], list[int]] | None,
        step: int | None,
        sample: int,
        tab: int | None,
    ):
        self.build, self.steps, self.tab = build, steps, tab
        self.shown: tuple[int | None, int] | None = self._key(step, sample)
        self.widget = FigureView(build(self.shown[0], sample))

    def _key(self, step: int | None, sample: int) -> tuple[int | None, int]:
        return (_at(self.steps(), step) if self.steps is not None else None), sample

    def update(self, step: int | None, sample: int, force: bool = False) -> None:
        key = self._key(step, sample)
        if force or self.shown != key:
            self.widget.show(self.build(*key))
            self.shown = key


class StepControls(widgets.HBox):
    """The shared step slider (with a play button) and sample selector."""

    def __init__(self, steps: list[int], samples: list[int], interval_ms: int = 600):
        self.slider = widgets.SelectionSlider(
            options=steps or [0],
            value=(steps or [0])[-1],
            description="step",
            continuous_update=False,
            layout=widgets.Layout(width="60%"),
        )
        last = max(len(steps) - 1, 0)
        # the link copies the play value into the slider index when the views render: start both at the end
        self.play = widgets.Play(value=last, min=0, max=last, interval=interval_ms, description="play")
        widgets.jslink((self.play, "value"), (self.slider, "index"))
        self.sample = widgets.Dropdown(
            options=samples or [0],
            value=(samples or [0])[0],
            description="sample",
            layout=widgets.Layout(width="160px"),
        )
        super().__init__([self.play, self.slider, self.sample])

    def set_steps(self, steps: list[int]) -> None:
        """Replace the slider's steps, keeping the current one (or following the newest when it was last)."""
        if not steps or list(self.slider.options) == steps:
            return
        current, was_last = self.slider.value, self.slider.index == len(self.slider.options) - 1
        self.play.max = len(steps) - 1
        self.slider.options = steps
        self.slider.value = steps[-1] if was_last or current not in steps else current
        self.play.value = self.slider.index


class _Views(widgets.VBox):
    """Panels in tabs driven by one :class:`StepControls`; only the visible tab's panels are redrawn when
    the step or sample changes (the others when their tab is selected); errors go to an Output area."""

    def _setup(self, controls: StepControls) -> None:
        self.controls = controls
        self.errors = widgets.Output(layout=widgets.Layout(max_height="160px", overflow="auto"))
        self.panels: list[Panel] = []
        self.tabs = widgets.Tab()
        self._tab_names: list[str] = []
        controls.slider.observe(lambda _: self.update(), names="value")
        controls.sample.observe(lambda _: self.update(), names="value")
        self.tabs.observe(lambda _: self.update(), names="selected_index")

    @property
    def step(self) -> int:
        return self.controls.slider.value

    @property
    def sample(self) -> int:
        return self.controls.sample.value

    @property
    def tab_titles(self) -> list[str]:
        return list(self._tab_names)

    def add_tab(self, title: str, content: widgets.Widget) -> None:
        self._tab_names.append(title)
        self.tabs.children = [*self.tabs.children, content]
        self.tabs.set_title(len(self._tab_names) - 1, title)

    def panel(self, build, steps=None) -> Panel:
        """A new panel in the tab being built (the next :meth:`add_tab`). A figure that fails to build is
        replaced by a notice, and the error printed to the error area."""

        def safe(step: int | None, sample: int) -> go.Figure:
            try:
                return build(step, sample)
            except Exception:
                self.errors.append_stderr(traceback.format_exc())
                return figures.message_figure("this view failed to draw; the error is printed below")

        panel = Panel(safe, steps, self.step, self.sample, len(self._tab_names))
        self.panels.append(panel)
        return panel

    def update(self, force: bool = False, panels: Sequence[Panel] | None = None) -> None:
        """Bring the visible panels (or ``panels``) to the current step and sample."""
        if panels is None:
            visible = self.tabs.selected_index
            panels = [p for p in self.panels if p.tab is None or p.tab == visible]
        for panel in panels:
            try:
                panel.update(self.step, self.sample, force)
            except Exception:
                self.errors.append_stderr(traceback.format_exc())


def _recorded_steps(run: Run) -> list[int]:
    steps: set[int] = set()
    for name in run.matrix_names():
        steps.update(run.matrix_steps(name))
    tokens = run.tokens()
    if not tokens.empty:
        steps.update(int(s) for s in tokens["step"].unique())
    ht = run.head_tail()
    if not ht.empty:
        steps.update(int(s) for s in ht["step"].unique())
    return sorted(steps)


def _table_steps(run: Run, stream: str) -> list[int]:
    table = run.table(stream)
    return sorted(int(s) for s in table["step"].unique()) if not table.empty else []


def _token_steps(run: Run) -> list[int]:
    return _table_steps(run, TOKENS)


def _samples(run: Run) -> list[int]:
    tokens = run.tokens()
    if not tokens.empty:
        return sorted(int(s) for s in tokens["sample"].unique())
    return list(range(max(1, len(run.meta.get("sample_ids") or [0]))))


def _note(run: Run, probe: str) -> str:
    note = run.meta.get("notes", {}).get(probe)
    return WHY[probe] + (f" The recorder noted: {note}." if note else "")


# dashboard -----------------------------------------------------------------------------------------------
class Dashboard(_Views):
    """The widget returned by :func:`dashboard`."""

    def __init__(self, run: Run, live: bool = False, interval: float = 2.0):
        super().__init__()
        self.run = run
        self._setup(StepControls(_recorded_steps(run), _samples(run)))
        self._build_tabs()
        self.header = widgets.HTML()
        self._header()
        self.children = [self.header, self.controls, self.tabs, self.errors]
        self._stop = threading.Event()
        self._task: object | None = None
        if live:
            self.start(interval)

    # tabs ---------------------------------------------------------------------------------------------
    def _build_tabs(self) -> None:
        run = self.run
        # Overview
        self.x_axis = widgets.Dropdown(options=list(figures.X_AXES), value="step", description="x axis")
        self.log_y = widgets.Checkbox(value=False, description="log scale")
        self.clip = widgets.Checkbox(value=False, description="clip outliers")
        self.smoothing = widgets.FloatSlider(
            value=0.9, min=0.0, max=0.99, step=0.01, description="EMA", continuous_update=False
        )
        loss = self.panel(
            lambda s, k: figures.loss_terms(
                run,
                x=self.x_axis.value,
                smoothing=self.smoothing.value,
                log_y=self.log_y.value,
                clip_outliers=self.clip.value,
            )
        )
        for w in (self.x_axis, self.log_y, self.clip, self.smoothing):
            w.observe(lambda _, p=loss: self.update(force=True, panels=[p]), names="value")
        self.results = table_html(figures.results_table(run), escape=False)
        self.add_tab(
            "Overview",
            widgets.VBox(
                [widgets.HBox([self.x_axis, self.smoothing, self.log_y, self.clip]), loss.widget, self.results]
            ),
        )
        # Head/Tail
        if not run.head_tail().empty:
            ht_steps = self.panel(lambda s, k: figures.head_tail_steps(run))
            ht_tokens = self.panel(
                lambda s, k: (
                    figures.head_tail_tokens(run, s, k)
                    if s is not None
                    else figures.message_figure("no per-token statistics")
                ),
                lambda: _token_steps(run),
            )
            self.add_tab("Head/Tail", widgets.VBox([ht_steps.widget, ht_tokens.widget]))
        else:
            self.add_tab("Head/Tail", explain(_note(run, "head_tail")))
        # Alignment
        names = [n for n in figures.ALIGNMENT_NAMES if n in run.matrix_names()]
        if names:
            self.alignment_name = widgets.Dropdown(options=names, value=names[0], description="matrix")
            heat = self.panel(
                lambda s, k: figures.alignment_heatmap(run.matrix(self.alignment_name.value, s, k)),
                lambda: run.matrix_steps(self.alignment_name.value),
            )
            self.alignment_row = widgets.Dropdown(description="token", layout=widgets.Layout(width="320px"))
            self._syncing_rows = False
            row = self.panel(
                lambda s, k: self._alignment_row(run, s, k), lambda: run.matrix_steps(self.alignment_name.value)
            )
            self.alignment_name.observe(lambda _: self.update(force=True, panels=[heat, row]), names="value")
            self.alignment_row.observe(
                lambda _: None if self._syncing_rows else self.update(force=True, panels=[row]), names="value"
            )
            self.heatmap, self.row_view = heat.widget, row.widget
            controls = widgets.HBox([self.alignment_name, self.alignment_row])
            self.add_tab("Alignment", widgets.VBox([controls, heat.widget, row.widget]))
        else:
            self.add_tab("Alignment", explain(_note(run, "alignment")))
        # Transport
        if TRANSPORT_PLAN in run.matrix_names():
            plan = self.panel(
                lambda s, k: figures.transport_figure(run, step=s, sample=k), lambda: run.matrix_steps(TRANSPORT_PLAN)
            )
            vocab = self.panel(lambda s, k: figures.vocab_map_table(run, s, k), lambda: _table_steps(run, VOCAB_MAP))
            self.add_tab("Transport", widgets.VBox([plan.widget, vocab.widget]))
        else:
            self.add_tab("Transport", explain(_note(run, "transport")))
        # Tokens
        if not run.tokens().empty:
            recorded = set(run.tokens().columns)
            columns = [
                c for c in figures.TOKEN_VALUES if c in recorded or (c == "rkl_share" and {"fkl", "rkl"} <= recorded)
            ]
            self.token_value = widgets.Dropdown(options=columns, value=columns[0], description="colour by")
            tokens = self.panel(
                lambda s, k: figures.token_losses(run, s, k, value=self.token_value.value),
                lambda: _token_steps(run),
            )
            self.token_value.observe(lambda _: self.update(force=True, panels=[tokens]), names="value")
            self.add_tab("Tokens", widgets.VBox([self.token_value, tokens.widget]))
        else:
            self.add_tab("Tokens", explain(_note(run, "token_loss")))
        # Numerics
        nums = self.panel(lambda s, k: figures.numerics(run))
        events = run.table(EVENTS)
        self.events = table_html(events) if not events.empty else widgets.HTML("<i>no numerical events</i>")
        self.add_tab("Numerics", widgets.VBox([nums.widget, self.events]))

    def _header(self) -> None:
        run, meta = self.run, self.run.meta
        steps = run.scalars["step"]
        last = int(steps.max()) if len(steps) else None
        self.header.value = (
            f"<b>{figures.run_label(run)}</b> · {figures.token_label(str(run.path))} · last step {last} · "
            f"recorded steps {len(self.controls.slider.options)} · "
            f"created {figures.token_label(meta.get('created', ''))}"
        )

    # live ---------------------------------------------------------------------------------------------
    def _alignment_row(self, run: Run, step: int | None, sample: int) -> go.Figure:
        """The chosen token's row of the shown alignment matrix, with both sides' recorded top-k there. The
        token menu follows the matrix of the current step and sample (keeping the chosen row when it exists)."""
        if step is None:
            return figures.message_figure("no alignment matrix recorded", "alignment row")
        matrix = run.matrix(self.alignment_name.value, step, sample)
        positions = list(matrix.info.get("rows") or range(len(matrix.row_tokens)))
        options = list(zip(figures.position_labels(matrix.row_tokens, positions), range(len(positions)), strict=True))
        if list(self.alignment_row.options) != options:
            kept = self.alignment_row.value if isinstance(self.alignment_row.value, int) else 0
            self._syncing_rows = True
            try:
                self.alignment_row.options = options
                self.alignment_row.value = kept if kept < len(options) else 0
            finally:
                self._syncing_rows = False
        if not options:
            return figures.message_figure("this matrix has no rows", "alignment row")
        return figures.alignment_row(
            run, self.alignment_row.value, name=self.alignment_name.value, step=step, sample=sample
        )

    def poll(self) -> bool:
        """Read what the run appended since the last poll and redraw; True when something was new."""
        before = len(self.run.scalars)
        self.run.refresh()
        if len(self.run.scalars) == before:
            return False
        for panel in self.panels:
            panel.shown = None  # hidden tabs redraw when shown
        self.controls.set_steps(_recorded_steps(self.run))
        self._header()
        self.update()
        return True

    def start(self, interval: float = 2.0) -> None:
        """Poll the run every ``interval`` seconds (on the kernel's event loop, else a thread)."""
        self._stop.clear()

        async def loop() -> None:
            while not self._stop.is_set():
                await asyncio.sleep(interval)
                self._safe_poll()

        def thread() -> None:
            while not self._stop.wait(interval):
                self._safe_poll()

        try:
            self._task = asyncio.get_running_loop().create_task(loop())
        except RuntimeError:
            self._task = threading.Thread(target=thread, daemon=True)
            self._task.start()

    def stop(self) -> None:
        """Stop live polling."""
        self._stop.set()

    def _safe_poll(self) -> None:
        try:
            self.poll()
        except Exception:
            self.errors.append_stderr(traceback.format_exc())


def dashboard(run: Run, live: bool = False, interval: float = 2.0) -> Dashboard:
    """The run dashboard: tabs Overview, Head/Tail, Alignment, Transport, Tokens, Numerics sharing one step
    slider (with a play button) and one sample selector. ``live=True`` polls the run every ``interval``
    seconds for what a still-running training appended (stop with ``.stop()``)."""
    if not isinstance(run, Run):
        raise TypeError(f"dashboard() takes a run opened with kdviz.open_run(path), got {type(run).__name__}")
    return Dashboard(run, live=live, interval=interval)


# compare -------------------------------------------------------------------------------------------------
class Comparison(_Views):
    """The widget returned by :func:`compare`."""

    def __init__(self, runs: Mapping[str, Run]):
        super().__init__()
        self.runs = runs
        steps = sorted({s for run in runs.values() for s in _recorded_steps(run)})
        samples = sorted({s for run in runs.values() for s in _samples(run)})
        self._setup(StepControls(steps, samples))
        raw = {html.unescape(label): run for label, run in runs.items()}  # the figures escape labels themselves
        self.shown_runs = widgets.SelectMultiple(
            options=list(raw), value=list(raw), description="runs", rows=min(len(raw), 6)
        )
        self._run_boxes: list[tuple[str, widgets.Widget]] = []
        loss = self.panel(lambda s, k: figures.loss_terms({label: raw[label] for label in self.shown_runs.value}))
        self.results = table_html(figures.results_table(raw), escape=False)
        self.add_tab("Overview", widgets.VBox([self.results, loss.widget]))
        self.add_tab("Head/Tail", self._side_by_side(lambda run: lambda s, k: figures.head_tail_steps(run), None))
        self.add_tab("Alignment", self._side_by_side(self._alignment, lambda run: run.matrix_steps("t2s_weight")))
        self.add_tab("Tokens", self._side_by_side(self._tokens, _token_steps))
        self.shown_runs.observe(lambda _: self._show_runs(loss), names="value")
        self.children = [widgets.HBox([self.controls, self.shown_runs]), self.tabs, self.errors]

    def _show_runs(self, loss: Panel) -> None:
        """Hide the deselected runs' panels and redraw the overlaid loss terms with the selected ones."""
        for label, box in self._run_boxes:
            box.layout.display = None if label in self.shown_runs.value else "none"
        self.update(force=True, panels=[loss])

    def _tokens(self, run: Run):
        # one colour scale for every run: the same colour is the same loss in each panel
        maxima = [r.tokens()["token_kd"].max() for r in self.runs.values() if "token_kd" in r.tokens().columns]
        zmax = float(max(maxima)) if maxima else None

        def build(step, sample):
            if step is None:
                return figures.message_figure(_note(run, "token_loss"), figures.run_label(run))
            # half the notebook's width: half as many tokens per line keep the cells as wide as the dashboard's
            return figures.token_losses(run, step, sample, zmax=zmax, per_line=figures.TOKENS_PER_LINE // 2)

        return build

    @staticmethod
    def _alignment(run: Run):
        def build(step, sample):
            if step is None:
                return figures.message_figure(_note(run, "alignment"), figures.run_label(run))
            return figures.alignment_heatmap(run.matrix("t2s_weight", step, sample))

        return build

    def _side_by_side(self, build_for, steps_for) -> widgets.GridBox:
        """One panel per run, two per row (each about half the notebook's width, never a sliver)."""
        boxes = []
        for label, run in self.runs.items():
            panel = self.panel(build_for(run), (lambda r=run: steps_for(r)) if steps_for else None)
            box = widgets.VBox([widgets.HTML(f"<b>{label}</b>"), panel.widget], layout=widgets.Layout(min_width="0"))
            self._run_boxes.append((html.unescape(label), box))
            boxes.append(box)
        columns = "repeat(2, minmax(0, 1fr))" if len(boxes) > 1 else "minmax(0, 1fr)"
        return widgets.GridBox(boxes, layout=widgets.Layout(grid_template_columns=columns, grid_gap="8px"))


def compare(runs: Mapping[str, Run] | Sequence[Run]) -> Comparison:
    """Several runs (e.g. different methods on the same data) side by side: overlaid loss terms and a
    results table, then head/tail, alignment and per-token views per run under one step slider."""
    named = figures._as_runs(runs)
    if not named:
        raise ValueError("compare() needs at least one run")
    return Comparison(named)


# playground ----------------------------------------------------------------------------------------------
class Playground(widgets.VBox):
    """The widget returned by :func:`playground`."""

    def __init__(self, vocab: int = 24):
        super().__init__()
        slider = dict(continuous_update=False, style={"description_width": "110px"})
        self.peak = widgets.IntSlider(value=2, min=0, max=vocab - 1, description="teacher peak", **slider)
        self.spread = widgets.FloatSlider(value=2.5, min=0.3, max=10, step=0.1, description="spread", **slider)
        self.second = widgets.IntSlider(value=14, min=0, max=vocab - 1, description="second mode", **slider)
        self.second_weight = widgets.FloatSlider(
            value=0.3, min=0, max=0.9, step=0.05, description="second weight", **slider
        )
        self.temperature = widgets.FloatSlider(value=1.0, min=0.2, max=4, step=0.1, description="temperature", **slider)
        self.mu = widgets.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, description="mu (head mass)", **slider)
        self.divergence = widgets.Dropdown(options=list(DIVERGENCES), value="fkl", description="train with")
        self.steps = widgets.BoundedIntText(value=60, min=1, max=2000, description="steps")
        self.lr = widgets.FloatLogSlider(value=0.2, base=10, min=-3, max=0, description="Adam lr", **slider)
        self.train_button = widgets.Button(description="train student", button_style="primary")
        self.reset_button = widgets.Button(description="reset student")
        self.values = widgets.HTML()
        self.errors = widgets.Output()
        self.vocab = vocab
        self.student = torch.rand(vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.figure = FigureView()
        for w in (self.peak, self.spread, self.second, self.second_weight, self.temperature, self.mu, self.divergence):
            w.observe(lambda _: self.redraw(), names="value")
        self.train_button.on_click(lambda _: self.train())
        self.reset_button.on_click(lambda _: self.reset())
        shape = widgets.VBox([self.peak, self.spread, self.second, self.second_weight, self.temperature, self.mu])
        train = widgets.VBox(
            [self.divergence, self.steps, self.lr, widgets.HBox([self.train_button, self.reset_button])]
        )
        self.children = [widgets.HBox([shape, train, self.values]), self.figure, self.errors]
        self.redraw()

    def teacher(self) -> torch.Tensor:
        """Teacher logits from the sliders."""
        return toy.teacher_logits(
            self.vocab,
            self.peak.value,
            self.spread.value,
            self.second.value,
            self.second_weight.value,
            self.temperature.value,
        )

    def redraw(self) -> None:
        try:
            teacher = self.teacher()
            self.figure.show(
                toy.distribution_figure(teacher, self.student, mu=self.mu.value, gradients=self._gradients())
            )
            values = toy.divergence_values(self.student, teacher, self.mu.value)
            rows = "".join(f"<tr><td>{figures.token_label(k)}</td><td>{v:.4f}</td></tr>" for k, v in values.items())
            self.values.value = f"<table><tr><th>divergence</th><th>D(p, q)</th></tr>{rows}</table>"
        except Exception:
            self.errors.append_stderr(traceback.format_exc())

    def _gradients(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("fkl", "rkl", "akl", self.divergence.value)))

    def train(self, frames: int = 20) -> None:
        """Train the free-logit student for ``steps`` steps under the chosen divergence, animating ~``frames``
        snapshots."""
        every = max(1, self.steps.value // frames)
        snaps = list(range(every, self.steps.value + 1, every))
        run = toy.train_free_logits(
            self.teacher(),
            self.divergence.value,
            self.steps.value,
            lr=self.lr.value,
            mu=self.mu.value,
            init=self.student,
            snapshots=snaps,
        )
        for step in snaps:
            self.student = run[step]
            self.redraw()
            time.sleep(0.05)

    def reset(self) -> None:
        """A fresh student: free logits uniform in [0, 1]."""
        self.student = torch.rand(self.vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.redraw()


def playground(vocab: int = 24) -> Playground:
    """Teaching widget for the KL family: shape a teacher over ``vocab`` classes (peak, spread, second
    mode, temperature) and the head threshold ``mu``; see p and q, the head/tail split, every divergence's
    value and gradient per class; train a free-logit student under a chosen divergence and watch it move."""
    return Playground(vocab)


# tokenizers ----------------------------------------------------------------------------------------------
class TokenizerInspector(widgets.VBox):
    """The widget returned by :func:`inspect_tokenizers`."""

    def __init__(self, tokenizer_a, tokenizer_b, text: str, names: tuple[str, str]):
        super().__init__()
        self.tokenizers, self.names = (tokenizer_a, tokenizer_b), names
        self.text = widgets.Textarea(
            value=text, description="text", continuous_update=False, layout=widgets.Layout(width="90%", height="70px")
        )
        self.figure = FigureView()
        self.errors = widgets.Output()
        self.text.observe(lambda _: self.redraw(), names="value")
        self.children = [self.text, self.figure, self.errors]
        self.redraw()

    def build(self, text: str) -> go.Figure:
        tokens = token_table(text, dict(zip(self.names, self.tokenizers, strict=True)))
        return figures.tokenizer_comparison(tokens, text)

    def redraw(self) -> None:
        try:
            self.figure.show(self.build(self.text.value))
        except Exception:
            self.errors.append_stderr(traceback.format_exc())


def inspect_tokenizers(
    tokenizer_a, tokenizer_b, text: str, names: tuple[str, str] = ("student", "teacher")
) -> TokenizerInspector:
    """Both tokenisations of ``text`` aligned by characters, one-to-one / split / merge regions coloured;
    edit the text to explore."""
    return TokenizerInspector(tokenizer_a, tokenizer_b, text, names)
