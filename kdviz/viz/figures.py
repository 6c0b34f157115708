"""Plotly figures of a recorded run: pure functions from the run store's tidy data to ``go.Figure``.

As in plotly express, each function takes the data it plots as its first argument: the tidy DataFrame a
:class:`~kdviz.record.Run` returns (``run.scalars``, ``run.head_tail()``, ``run.tokens()``,
``run.table("vocab_map")``) or a matrix (a :class:`~kdviz.record.Matrix` from ``run.matrix(...)``, or a
wide DataFrame: student tokens as the index, teacher tokens as the columns), with the expected columns in
its docstring; a DataFrame built by hand works as well as a recorded one. A :class:`Run` is accepted too:
the function then reads the table itself. Each call returns a new figure; nothing is displayed and nothing
is cached, so a figure works the same in a script, a test, a notebook, a widget and a static report.

Token strings are shown as text, never interpreted: every label goes through :func:`token_label`, which
HTML-escapes it (plotly renders labels as a small subset of HTML) and makes whitespace visible.

Display limit: a matrix is sent to the browser whole up to :data:`MAX_AXIS` rows and columns
(``300 x 300 = 90,000`` cells); a larger one is binned into at most ``MAX_AXIS`` blocks per axis (block
mean for the weights, "any" for the ground truth) and the title says so.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kdviz.align.overlap import KINDS, overlap_matrix, regions
from kdviz.record.reader import Matrix, Run
from kdviz.record.store import (
    ALIGNMENT_MATRICES,
    ALIGNMENT_SCALARS,
    SCHEMAS,
    TOP_K,
    TRANSPORT_COST,
    TRANSPORT_PLAN,
    VOCAB_MAP,
)

MAX_AXIS = 300
TOKENS_PER_LINE = 16
TOKEN_CELL_CHARS = 5  # what a cell holds in the 12 px font: 16 per line at a notebook's width, 8 in half of it
KIND_COLOURS = {
    "one-to-one": "#9ecae1",
    "one-to-many": "#fdae6b",
    "many-to-one": "#a1d99b",
    "many-to-many": "#bcbddc",
    "unmatched": "#d9d9d9",
}
SIDE_COLOURS = {"teacher": "#1f77b4", "student": "#d62728"}


# labels ---------------------------------------------------------------------------------------------
def token_label(token: object, width: int | None = None) -> str:
    """``token`` as safe display text: HTML-escaped, newlines and tabs visible, empty as ``∅``; at most
    ``width`` characters when given (a longer one is cut, its last shown character an ellipsis)."""
    text = str(token).replace("\n", "↵").replace("\t", "⇥")
    if not text:
        return "∅"
    if width is not None and len(text) > width:
        text = text[: max(width - 1, 1)] + "…"
    return html.escape(text, quote=False)


def position_labels(tokens: Sequence[str], positions: Sequence[int] | None = None) -> list[str]:
    """Unique axis labels ``"<position> <token>"`` (plotly merges equal category labels)."""
    positions = range(len(tokens)) if positions is None else positions
    return [f"{p} {token_label(t)}" for p, t in zip(positions, tokens, strict=True)]


def run_label(run: Run) -> str:
    """A short, escaped name for a run: its method name (when recorded) and directory name."""
    method = run.meta.get("method")
    name = method.get("name") if isinstance(method, Mapping) else method
    return token_label(f"{name} · {run.path.name}" if name else run.path.name)


def _as_runs(runs: Run | Mapping[str, Run] | Sequence[Run]) -> dict[str, Run]:
    """Escaped label -> run (or DataFrame) of one run, a mapping label -> run, or a sequence of runs (labelled
    by :func:`run_label`, numbered when repeated; a DataFrame in a sequence as ``run <index>``)."""
    if isinstance(runs, Run):
        return {run_label(runs): runs}
    if isinstance(runs, Mapping):
        return {token_label(k): v for k, v in runs.items()}
    out: dict[str, Run] = {}
    for k, run in enumerate(runs):
        label = run_label(run) if isinstance(run, Run) else f"run {k}"
        out[label if label not in out else f"{label} ({len(out)})"] = run
    return out


# data: a tidy DataFrame, or the Run that holds it ---------------------------------------------------------
SCALAR_COLUMNS = ("step", "name", "value")
TOKEN_COLUMNS = ("step", "sample", "position", "token")


def _require(table: pd.DataFrame, columns: Sequence[str], figure: str) -> None:
    """Raise a ValueError naming the ``columns`` that ``table`` (the data given to ``figure``) lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{figure}(data): the DataFrame has no column {', '.join(map(repr, missing))}; it needs "
            f"{list(columns)}, has {list(table.columns)}"
        )


def _frame(
    data: pd.DataFrame | Run, read: Callable[[Run], pd.DataFrame], columns: Sequence[str], figure: str
) -> pd.DataFrame:
    """The table ``figure`` plots: ``data`` itself (a DataFrame holding ``columns``), or ``read(data)`` for a Run."""
    if isinstance(data, Run):
        return read(data)
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"{figure}(data): expected a pandas DataFrame or a kdviz Run, got {type(data).__name__}")
    _require(data, columns, figure)
    return data


def _scalars_by_run(data, color: str | None, figure: str) -> dict[str, pd.DataFrame]:
    """Escaped run label -> scalars table: of each run in ``data`` (a scalars DataFrame, a Run, a mapping
    label -> either, or a sequence of either), a DataFrame split by its column ``color`` when given."""
    if isinstance(data, pd.DataFrame):
        table = _frame(data, lambda run: run.scalars, (*SCALAR_COLUMNS, *([color] if color else [])), figure)
        if color is None:
            return {"": table}
        return {token_label(label): rows for label, rows in table.groupby(color, sort=False)}
    return {
        label: _frame(item, lambda run: run.scalars, SCALAR_COLUMNS, figure) for label, item in _as_runs(data).items()
    }


def _matrix(
    data: Matrix | Run | pd.DataFrame, name: str | None, step: int | None, sample: int, figure: str, default: str
) -> Matrix:
    """The matrix ``figure`` draws: ``data`` itself (a Matrix), matrix ``name`` (default: ``default``) of a Run
    at ``step`` (default: the latest) and ``sample``, or a wide DataFrame (student tokens as the index, teacher
    tokens as the columns, numbers as the cells; no ground truth) titled ``name``."""
    if isinstance(data, Matrix):
        if name is not None or step is not None or sample != 0:
            raise ValueError(
                f"{figure}(data): name, step and sample pick a matrix of a Run; data is already the matrix "
                f"{data.name!r} of step {data.step}, sample {data.sample}"
            )
        return data
    name = default if name is None else name
    if isinstance(data, Run):
        return data.matrix(name, step, sample)
    if not isinstance(data, pd.DataFrame):
        raise TypeError(
            f"{figure}(data): expected a Matrix, a kdviz Run or a wide pandas DataFrame, got {type(data).__name__}"
        )
    try:
        values = data.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{figure}(data): a matrix DataFrame holds numbers (student tokens as the index, teacher tokens as "
            f"the columns); its columns hold {sorted(set(map(str, data.dtypes)))}"
        ) from None
    return Matrix(
        values,
        [str(t) for t in data.index],
        [str(t) for t in data.columns],
        None,
        name=name,
        step=0 if step is None else int(step),
        sample=sample,
    )


def message_figure(text: str, title: str = "") -> go.Figure:
    """An empty figure that explains, in its middle, why there is nothing to show."""
    fig = go.Figure()
    fig.add_annotation(text=token_label(text), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=220)
    return fig


# loss terms over steps ----------------------------------------------------------------------------------
def line_mode(points: int) -> str:
    """Markers on short series (a one-step run is a single point, invisible as a line), as plotly does for
    its own default scatter mode below 20 points."""
    return "lines+markers" if points < 20 else "lines"


def smooth(values: Sequence[float] | np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard): ``m_t = w m_{t-1} + (1-w) x_t``, divided by
    ``1 - w^t`` so the first points are not pulled towards 0. Non-finite values are skipped (kept as NaN)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight!r}")
    x = np.asarray(values, dtype=np.float64)
    out = np.full_like(x, np.nan)
    mean, count = 0.0, 0
    for i, v in enumerate(x):
        if not math.isfinite(v):
            continue
        count += 1
        mean = weight * mean + (1.0 - weight) * v
        out[i] = mean / (1.0 - weight**count)
    return out


X_AXES = {"step": "step", "tokens": "tokens seen", "wall_time": "wall time (s)"}
DEFAULT_TERMS = ("loss", "kd", "ce")


def _x_values(scalars: pd.DataFrame, steps: pd.Series, x: str) -> np.ndarray:
    if x == "step":
        return steps.to_numpy()
    if x == "tokens":
        seen = scalars[scalars["name"] == "tokens_seen"].set_index("step")["value"]
        return steps.map(seen).to_numpy()
    start = scalars["wall_time"].min()
    times = scalars.groupby("step")["wall_time"].first()
    return (steps.map(times) - start).to_numpy()


def loss_terms(
    data: pd.DataFrame | Run | Mapping[str, pd.DataFrame | Run] | Sequence[pd.DataFrame | Run],
    terms: Sequence[str] | None = None,
    *,
    x: str = "step",
    color: str | None = None,
    smoothing: float = 0.9,
    log_y: bool = False,
    clip_outliers: bool = False,
) -> go.Figure:
    """Loss terms over training: a faint raw trace and its debiased EMA (:func:`smooth`) per run and term.

    ``data``: a scalars DataFrame (``run.scalars``: columns ``step``, ``name``, ``value``, and ``wall_time``
    for ``x="wall_time"``; the ``tokens_seen`` scalar for ``x="tokens"``), a Run, or several of them
    (overlaid): a mapping label -> DataFrame or Run, or a sequence. ``color``: a column of the DataFrame
    naming each row's run (several runs in one long table), one colour per value. ``terms``: scalar names
    (default: ``loss``, ``kd``, ``ce`` where present, else every non-diagnostic scalar). ``x``: ``"step"``,
    ``"tokens"`` (tokens seen) or ``"wall_time"``. ``log_y``: log scale (also a button on the figure).
    ``clip_outliers``: fit the y range to the 1st-99th percentile of the raw values.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}, got {x!r}")
    runs = _scalars_by_run(data, color, "loss_terms")
    if x == "wall_time" and any("wall_time" not in scalars.columns for scalars in runs.values()):
        raise ValueError("loss_terms(x='wall_time') needs a wall_time column in data")
    fig = go.Figure()
    palette = plotly_default_colors()
    shown: list[np.ndarray] = []
    k = 0
    for label, scalars in runs.items():
        names = list(terms) if terms else [t for t in DEFAULT_TERMS if t in set(scalars["name"])]
        if not names:
            names = sorted(n for n in set(scalars["name"]) if "/" not in n and n not in ("lr", "tokens_seen"))
        for name in names:
            rows = scalars[scalars["name"] == name]
            if rows.empty:
                continue
            colour = palette[k % len(palette)]
            k += 1
            xs, ys = _x_values(scalars, rows["step"], x), rows["value"].to_numpy()
            shown.append(ys)
            legend = f"{label}: {token_label(name)}" if label else token_label(name)
            fig.add_trace(
                go.Scattergl(
                    x=xs,
                    y=ys,
                    mode=line_mode(len(ys)),
                    line={"color": colour, "width": 1},
                    opacity=0.25,
                    name=f"{legend} (raw)",
                    legendgroup=legend,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            fig.add_trace(
                go.Scattergl(
                    x=xs,
                    y=smooth(ys, smoothing),
                    mode=line_mode(len(ys)),
                    line={"color": colour, "width": 2},
                    name=legend,
                    legendgroup=legend,
                    hovertemplate=f"{legend}<br>{X_AXES[x]} %{{x}}<br>smoothed %{{y:.4g}}<extra></extra>",
                )
            )
    if not fig.data:
        return message_figure("no loss terms recorded yet", "loss terms")
    fig.update_layout(
        title=f"loss terms (EMA {smoothing:g}, raw faint)",
        xaxis_title=X_AXES[x],
        yaxis_title="value",
        yaxis_type="log" if log_y else "linear",
        height=360,
        margin={"t": 60, "b": 40},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "x": 1.0,
                "y": 1.15,
                "xanchor": "right",
                "buttons": [
                    {"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
                    {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]},
                ],
            }
        ],
    )
    if clip_outliers:
        values = np.concatenate(shown)
        values = values[np.isfinite(values)]
        if values.size:
            low, high = np.percentile(values, [1, 99])
            pad = 0.05 * (high - low or abs(high) or 1.0)
            if log_y:
                low = max(low, np.min(values[values > 0])) if (values > 0).any() else low
                fig.update_yaxes(range=[math.log10(max(low, 1e-12)), math.log10(max(high, 1e-12)) + 0.05])
            else:
                fig.update_yaxes(range=[low - pad, high + pad])
    return fig


def plotly_default_colors() -> list[str]:
    """Plotly's default qualitative colour sequence."""
    return ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF"]


# head / tail ------------------------------------------------------------------------------------------
def _space(table: pd.DataFrame, space: str | None) -> str | None:
    spaces = list(dict.fromkeys(table["space"])) if "space" in table.columns else []
    if space is not None:
        if space not in spaces:
            raise KeyError(f"no head/tail statistics in space {space!r}; recorded spaces: {spaces}")
        return space
    for preferred in ("shared", "t2s", "s2t"):
        if preferred in spaces:
            return preferred
    return spaces[0] if spaces else None


HEAD_TAIL_COLUMNS = ("step", "space", "statistic", "mean")
W_HEAD_BANDS = ("q05", "q25", "q50", "q75", "q95")


def head_tail_steps(data: pd.DataFrame | Run, space: str | None = None) -> go.Figure:
    """Head/tail statistics over steps (docs/methods.md#akl), mean over each step's trained tokens.

    ``data``: the head_tail table (``run.head_tail()``: one row per ``step``, ``space``, ``statistic``
    with its ``mean``; the ``w_head`` rows also need the quantile columns ``q05, q25, q50, q75, q95``), or
    a Run. Rows: teacher vs student mass on the teacher's head and tail (``p_head``, ``q_head``,
    ``p_tail``, ``q_tail``); the gaps ``g_head``, ``g_tail`` (unsigned) and the signed head gap ``d_head``
    (the signed tail gap is ``-d_head``); AKL's head weight ``w_head`` as bands (5-95 % and 25-75 % of
    tokens) around its median. ``space``: ``shared`` / ``t2s`` / ``s2t`` (default: the first recorded).
    """
    table = _frame(data, lambda run: run.head_tail(), HEAD_TAIL_COLUMNS, "head_tail_steps")
    space = _space(table, space)
    if space is None:
        notes = data.meta.get("notes", {}) if isinstance(data, Run) else {}
        return message_figure(notes.get("head_tail", "no head/tail statistics recorded"), "head / tail")
    table = table[table["space"] == space]
    wide = table.pivot_table(index="step", columns="statistic", values="mean")
    steps = wide.index.to_numpy()
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.07,
        subplot_titles=(
            "probability mass on the teacher's head / tail",
            "gaps |p - q| (signed: d)",
            "AKL head weight w_head (bands: 5-95 %, 25-75 % of tokens)",
        ),
    )
    masses = (
        ("p_head", "teacher head p(H)", "teacher", "solid"),
        ("q_head", "student on head q(H)", "student", "solid"),
        ("p_tail", "teacher tail p(T)", "teacher", "dot"),
        ("q_tail", "student on tail q(T)", "student", "dot"),
    )
    for stat, name, side, dash in masses:
        if stat in wide:
            fig.add_trace(
                go.Scatter(x=steps, y=wide[stat], name=name, line={"color": SIDE_COLOURS[side], "dash": dash}),
                row=1,
                col=1,
            )
    gaps = (
        ("g_head", "g_head", "#2ca02c", "solid"),
        ("g_tail", "g_tail", "#9467bd", "solid"),
        ("d_head", "d_head (signed)", "#2ca02c", "dash"),
    )
    for stat, name, colour, dash in gaps:
        if stat in wide:
            fig.add_trace(
                go.Scatter(x=steps, y=wide[stat], name=name, line={"color": colour, "dash": dash}), row=2, col=1
            )
    if "d_head" in wide:
        fig.add_trace(
            go.Scatter(
                x=steps, y=-wide["d_head"], name="d_tail = -d_head (signed)", line={"color": "#9467bd", "dash": "dash"}
            ),
            row=2,
            col=1,
        )
    w = table[table["statistic"] == "w_head"].sort_values("step")
    if not w.empty:
        _require(w, W_HEAD_BANDS, "head_tail_steps")
        for low, high, alpha in (("q05", "q95", 0.15), ("q25", "q75", 0.3)):
            fig.add_trace(
                go.Scatter(x=w["step"], y=w[high], line={"width": 0}, showlegend=False, hoverinfo="skip"), row=3, col=1
            )
            fig.add_trace(
                go.Scatter(
                    x=w["step"],
                    y=w[low],
                    fill="tonexty",
                    line={"width": 0},
                    fillcolor=f"rgba(255,127,14,{alpha})",
                    name=f"w_head {low}-{high}",
                ),
                row=3,
                col=1,
            )
        fig.add_trace(
            go.Scatter(x=w["step"], y=w["q50"], name="w_head median", line={"color": "#ff7f0e"}), row=3, col=1
        )
    fig.update_yaxes(title_text="mass", row=1, col=1)
    fig.update_yaxes(title_text="gap", row=2, col=1)
    fig.update_yaxes(title_text="w_head", range=[0, 1], row=3, col=1)
    fig.update_xaxes(title_text="step", row=3, col=1)
    fig.update_layout(
        title=f"head / tail over steps (space {token_label(space)})", height=620, margin={"t": 70, "b": 40}
    )
    return fig


def sample_rows(tokens: pd.DataFrame, step: int, sample: int) -> pd.DataFrame:
    rows = tokens[(tokens["step"] == step) & (tokens["sample"] == sample)]
    return rows.sort_values("position")


def head_tail_tokens(data: pd.DataFrame | Run, step: int, sample: int = 0) -> go.Figure:
    """Head/tail statistics per token of one sampled sequence at ``step``: head masses of both models,
    the head and tail gaps (stacked) and ``w_head``; x labels are the predicted tokens.

    ``data``: per-token rows (``run.head_tail(per_token=True)`` or ``run.tokens()``: columns ``step``,
    ``sample``, ``position``, ``token`` and the statistics ``p_head``, ``q_head``, ``g_head``, ``g_tail``,
    ``w_head``), or a Run."""
    table = _frame(data, lambda run: run.head_tail(per_token=True), TOKEN_COLUMNS, "head_tail_tokens")
    rows = sample_rows(table, step, sample)
    if rows.empty or not {"p_head", "q_head", "g_head", "g_tail", "w_head"} <= set(rows.columns):
        return message_figure(
            f"no per-token head/tail statistics for sample {sample} at step {step}", "head / tail per token"
        )
    labels = position_labels(rows["token"].tolist(), rows["position"].tolist())
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=("head mass: teacher p(H) vs student q(H)", "gaps (stacked)", "w_head"),
    )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=rows["p_head"],
            mode="lines+markers",
            name="p(H) teacher",
            line={"color": SIDE_COLOURS["teacher"]},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=rows["q_head"],
            mode="lines+markers",
            name="q(H) student",
            line={"color": SIDE_COLOURS["student"]},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(go.Bar(x=labels, y=rows["g_head"], name="g_head", marker_color="#2ca02c"), row=2, col=1)
    fig.add_trace(go.Bar(x=labels, y=rows["g_tail"], name="g_tail", marker_color="#9467bd"), row=2, col=1)
    fig.add_trace(
        go.Scatter(x=labels, y=rows["w_head"], mode="lines+markers", name="w_head", line={"color": "#ff7f0e"}),
        row=3,
        col=1,
    )
    fig.update_layout(
        barmode="stack",
        height=560,
        title=f"head / tail per token · step {step} · sample {sample}",
        margin={"t": 70, "b": 40},
    )
    fig.update_yaxes(range=[0, 1], row=3, col=1)
    fig.update_xaxes(title_text="predicted token", tickangle=-60, row=3, col=1)
    return fig


# matrices -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixView:
    """What a heatmap of a :class:`Matrix` shows: possibly binned values, axis labels, ground-truth cells."""

    z: np.ndarray
    x: list[str]
    y: list[str]
    ref_x: list[str]
    ref_y: list[str]
    binned: bool
    shape: tuple[int, int]


def finite_or_none(z: np.ndarray) -> np.ndarray | list:
    """``z`` unchanged when all finite, else nested lists with None for the gaps: a widget sends 2-d arrays
    as JSON lists, and JSON has no NaN."""
    if np.isfinite(z).all():
        return z
    return [[float(v) if math.isfinite(v) else None for v in row] for row in z.tolist()]


def _bins(n: int, limit: int) -> np.ndarray:
    """Start index of each of ``min(n, limit)`` nearly equal blocks of ``range(n)``."""
    return np.linspace(0, n, min(n, limit) + 1).astype(int)


def _block_reduce(a: np.ndarray, rows: np.ndarray, cols: np.ndarray, how: str) -> np.ndarray:
    """Reduce ``a`` over the blocks given by the boundaries ``rows`` x ``cols`` (``mean`` or ``any``)."""
    r = (
        np.add.reduceat(a.astype(np.float64), rows[:-1], axis=0)
        if how == "mean"
        else np.maximum.reduceat(a, rows[:-1], 0)
    )
    r = np.add.reduceat(r, cols[:-1], axis=1) if how == "mean" else np.maximum.reduceat(r, cols[:-1], axis=1)
    if how == "mean":
        r = r / np.outer(np.diff(rows), np.diff(cols))
    return r


def _binned_labels(labels: list[str], bounds: np.ndarray) -> list[str]:
    return [
        f"{labels[a]} … {labels[b - 1]}" if b - a > 1 else labels[a]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def matrix_view(matrix: Matrix, limit: int = MAX_AXIS) -> MatrixView:
    """The display form of ``matrix``: labels ``"<position> <token>"`` and, when an axis is longer than
    ``limit``, block means (ground truth: any) over at most ``limit`` blocks per axis."""
    values = np.asarray(matrix.values, dtype=np.float32)
    r, c = values.shape
    x = position_labels(matrix.col_tokens, matrix.info.get("cols") or None)
    y = position_labels(matrix.row_tokens, matrix.info.get("rows") or None)
    reference = None if matrix.reference is None else np.asarray(matrix.reference).astype(bool)
    binned = r > limit or c > limit
    if binned:
        rows, cols = _bins(r, limit), _bins(c, limit)
        values = _block_reduce(values, rows, cols, "mean").astype(np.float32)
        x, y = _binned_labels(x, cols), _binned_labels(y, rows)
        reference = None if reference is None else _block_reduce(reference, rows, cols, "any").astype(bool)
    ref_y, ref_x = ([], []) if reference is None else np.nonzero(reference)
    return MatrixView(values, x, y, [x[j] for j in ref_x], [y[i] for i in ref_y], binned, (r, c))


def _scores_text(info: Mapping) -> str:
    parts = []
    for key in ("argmax_overlap", "overlap_mass"):
        value = info.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{key.replace('_', ' ')} {value:.2f}")
    return " · ".join(parts)


def matrix_title(matrix: Matrix, view: MatrixView | None = None) -> str:
    """Title of a matrix heatmap: its name, step, sample and example, scores, and whether it was binned."""
    bits = [f"{token_label(matrix.name)} · step {matrix.step} · sample {matrix.sample}"]
    if matrix.info.get("example_id"):
        bits.append(f"example {token_label(matrix.info['example_id'])}")
    scores = _scores_text(matrix.info)
    if scores:
        bits.append(scores)
    if view is not None and view.binned:
        bits.append(f"binned from {view.shape[0]}x{view.shape[1]}")
    return " · ".join(bits)


AXIS_NAMES = {"student": "student token (predicted)", "teacher": "teacher token (predicted)"}


def _full_ranges(view: MatrixView) -> tuple[list[float], list[float]]:
    """Axis ranges (x, reversed y) that show every cell of ``view`` and nothing else; without them the
    ground-truth markers pad the autorange and a step's axes can keep another step's extent."""
    rows, cols = len(view.y), len(view.x)
    return [-0.5, cols - 0.5], [rows - 0.5, -0.5]


def _heatmap_trace(view: MatrixView, row_name: str, col_name: str, colorscale: str, **kwargs) -> go.Heatmap:
    """A heatmap whose colours run from 0 to the largest value. Plotly ignores ``zmin`` without ``zmax`` (it
    keeps scaling to the data), and a data-scaled near-uniform plan (masses 0.1 +- 1e-7) shows float noise
    at full contrast."""
    finite = view.z[np.isfinite(view.z)]
    top = float(finite.max()) if finite.size else 0.0
    return go.Heatmap(
        z=finite_or_none(view.z),
        x=view.x,
        y=view.y,
        colorscale=colorscale,
        zmin=0,
        zmax=top if top > 0 else None,
        hovertemplate=f"{row_name} %{{y}}<br>{col_name} %{{x}}<br>weight %{{z:.4f}}<extra></extra>",
        **kwargs,
    )


def _reference_trace(view: MatrixView) -> go.Scatter:
    return go.Scatter(
        x=view.ref_x,
        y=view.ref_y,
        mode="markers",
        name="character overlap (ground truth)",
        marker={"symbol": "square-open", "size": 9, "color": "#00e5ff", "line": {"width": 1.5}},
        hoverinfo="skip",
    )


def _first_alignment(data: object) -> str:
    """The first alignment matrix a Run recorded (CMA's ``t2s_weight`` before ``s2t_weight``)."""
    recorded = data.matrix_names() if isinstance(data, Run) else []
    return next((n for n in ALIGNMENT_MATRICES if n in recorded), ALIGNMENT_MATRICES[0])


def alignment_heatmap(
    data: Matrix | Run | pd.DataFrame,
    name: str | None = None,
    step: int | None = None,
    sample: int = 0,
    *,
    limit: int = MAX_AXIS,
    colorscale: str = "Viridis",
) -> go.Figure:
    """An alignment matrix (CMA's ``t2s_weight``, ``s2t_weight``) as a heatmap: student tokens as rows,
    teacher tokens as columns, as every matrix is stored.

    ``data``: a :class:`Matrix` (``run.matrix(name, step, sample)``), a Run (then matrix ``name``, default
    the first alignment recorded, at ``step``, default the latest, of ``sample``), or a wide DataFrame
    (student tokens as the index, teacher tokens as the columns, weights as the cells; titled ``name``).

    Rows and columns are labelled ``"<position> <predicted token>"``; hover shows both tokens with their
    positions and the weight; the character-overlap ground truth is outlined with open squares; the
    alignment scores are in the title, which also says when the columns are the distributions (each
    teacher token's weights over the student tokens, ``info["over"] == "student"``: CMA's ``s2t_weight``).
    Axes longer than ``limit`` are binned (:func:`matrix_view`).
    """
    matrix = _matrix(data, name, step, sample, "alignment_heatmap", _first_alignment(data))
    view = matrix_view(matrix, limit)
    fig = go.Figure(_heatmap_trace(view, "student", "teacher", colorscale, colorbar={"title": "weight"}))
    fig.add_trace(_reference_trace(view))
    x_range, y_range = _full_ranges(view)
    title = matrix_title(matrix, view)
    if matrix.info.get("over") == "student":
        title += " · columns sum to 1"
    fig.update_layout(
        title=title,
        xaxis={"title": AXIS_NAMES["teacher"], "type": "category", "tickangle": -60, "range": x_range},
        yaxis={"title": AXIS_NAMES["student"], "type": "category", "range": y_range},
        height=max(420, min(900, 14 * len(view.y) + 200)),
        showlegend=True,  # plotly hides a legend of one entry: the outlines' meaning must always be shown
        legend={"orientation": "h", "y": -0.25},
        margin={"t": 60},
    )
    return fig


def alignment_row(
    data: Matrix | Run | pd.DataFrame,
    row: int,
    top: tuple[Sequence[tuple[str, float]], Sequence[tuple[str, float]]] | None = None,
    *,
    name: str | None = None,
    step: int | None = None,
    sample: int = 0,
) -> go.Figure:
    """One row of an alignment matrix: where student token ``row`` (an index into the matrix's rows) puts
    its weight over the teacher tokens (for a matrix whose columns are the distributions, CMA's
    ``s2t_weight``: the weight each teacher token gives it), the ground-truth overlapping tokens in colour,
    and beside it the recorded top-k next tokens of both sides at that position (``top``: ``(teacher,
    student)`` lists of ``(token, probability)``, e.g. from :func:`recorded_top`).

    ``data``: as for :func:`alignment_heatmap` (a Matrix, a Run with ``name``, ``step``, ``sample``, or a
    wide DataFrame); from a Run, ``top`` defaults to the top-k the run recorded at that student position."""
    matrix = _matrix(data, name, step, sample, "alignment_row", _first_alignment(data))
    values = np.asarray(matrix.values, dtype=np.float64)
    if not 0 <= row < values.shape[0]:
        raise ValueError(f"row must be in [0, {values.shape[0]}) for this {values.shape[0]}-row matrix, got {row}")
    positions = matrix.info.get("rows") or None
    x = position_labels(matrix.col_tokens, matrix.info.get("cols") or None)
    y = position_labels(matrix.row_tokens, positions)
    if top is None and isinstance(data, Run):  # rows are student positions, where the top-k is recorded
        position = positions[row] if positions else row
        top = recorded_top(sample_rows(data.tokens(), matrix.step, matrix.sample)).get(int(position))
    overlap = np.zeros(values.shape[1], dtype=bool) if matrix.reference is None else np.asarray(matrix.reference)[row]
    weights = values[row]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.68, 0.32], specs=[[{"type": "xy"}, {"type": "table"}]])
    fig.add_trace(
        go.Bar(
            x=x,
            y=finite_or_none(weights),
            marker_color=np.where(overlap, "#00a5bd", "#b0b0b0"),
            name="weight (coloured: character overlap)",
            hovertemplate="teacher %{x}<br>weight %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    teacher, student = top if top is not None else ([], [])
    ranks = max(len(teacher), len(student))
    cells = [
        list(range(1, ranks + 1)),
        [token_label(t) for t, _ in teacher] + [""] * (ranks - len(teacher)),
        [f"{p:.3f}" for _, p in teacher] + [""] * (ranks - len(teacher)),
        [token_label(t) for t, _ in student] + [""] * (ranks - len(student)),
        [f"{p:.3f}" for _, p in student] + [""] * (ranks - len(student)),
    ]
    fig.add_trace(
        go.Table(
            header={"values": ["rank", "teacher", "p", "student", "q"]},
            cells={"values": cells},
            columnwidth=[0.6, 1.6, 0.9, 1.6, 0.9],
        ),
        row=1,
        col=2,
    )
    mass = float(np.nansum(weights[overlap])) if overlap.any() else float("nan")
    best = int(np.nanargmax(weights)) if np.isfinite(weights).any() else None
    bits = [f"{token_label(matrix.name)} row {y[row]} · step {matrix.step} · sample {matrix.sample}"]
    if best is not None:
        bits.append(f"argmax {x[best]}" + (" (overlaps)" if overlap[best] else " (no overlap)"))
    if math.isfinite(mass):
        bits.append(f"weight on overlapping tokens {mass:.2f}")
    if top is None:
        bits.append("no top-k recorded at this position")
    top_weight = float(np.nanmax(weights)) if best is not None else 1.0
    fig.update_layout(
        title=" · ".join(bits),
        height=380,
        showlegend=False,
        xaxis={"title": "teacher token (predicted)", "type": "category", "tickangle": -60},
        yaxis={"title": "weight", "range": [0, max(top_weight, 1e-9) * 1.05]},
        margin={"t": 60},
    )
    return fig


def _submatrix(matrix: Matrix, rows: np.ndarray, cols: np.ndarray) -> Matrix:
    """``matrix`` restricted to the boolean ``rows`` and ``cols`` (labels, reference and positions too)."""
    info = dict(matrix.info)
    for key, keep in (("rows", rows), ("cols", cols)):
        if info.get(key):
            info[key] = [p for p, k in zip(info[key], keep, strict=True) if k]
    reference = None if matrix.reference is None else np.asarray(matrix.reference)[rows][:, cols]
    return replace(
        matrix,
        values=np.asarray(matrix.values)[rows][:, cols],
        row_tokens=[t for t, k in zip(matrix.row_tokens, rows, strict=True) if k],
        col_tokens=[t for t, k in zip(matrix.col_tokens, cols, strict=True) if k],
        reference=reference,
        info=info,
    )


def transported_positions(plan: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the plan's rows and columns that carry mass (all of them for an all-zero plan)."""
    values = np.nan_to_num(np.asarray(plan.values, dtype=np.float64))
    rows, cols = values.sum(1) > 0, values.sum(0) > 0
    if not rows.any() or not cols.any():
        return np.ones_like(rows), np.ones_like(cols)
    return rows, cols


def transport_figure(
    data: Matrix | Run | pd.DataFrame,
    cost: Matrix | pd.DataFrame | None = None,
    *,
    step: int | None = None,
    sample: int = 0,
    limit: int = MAX_AXIS,
) -> go.Figure:
    """A transport plan ``P [T_s, T_t]`` (student rows, teacher columns, as every matrix is stored) with
    both token sequences, the ground-truth overlap outlined, and the cost matrix ``C`` beside it when given.

    ``data``: the plan as a :class:`Matrix` (``run.matrix("transport_plan", step, sample)``), a Run (then
    its plan at ``step``, default the latest, of ``sample``, and its cost matrix there when recorded), or a
    wide DataFrame (student tokens as the index, teacher tokens as the columns, masses as the cells).
    ``cost``: a Matrix or wide DataFrame of the same shape.

    Only the transported positions are drawn: MultiLevelOT pairs the two answers by index over the shorter
    one, so the longer side's last positions carry no mass; they are left out and counted in the title
    (drawn, they looked like a solver that broke its uniform marginals).
    """
    plan = _matrix(data, None, step, sample, "transport_figure", TRANSPORT_PLAN)
    if cost is None and isinstance(data, Run) and TRANSPORT_COST in data.matrix_names():
        cost = data.matrix(TRANSPORT_COST, plan.step, plan.sample)
    elif cost is not None:
        cost = _matrix(cost, None, None, 0, "transport_figure", TRANSPORT_COST)
    if cost is not None and cost.values.shape != plan.values.shape:
        shapes = f"expected the plan's shape {plan.values.shape}, got {cost.values.shape}"
        raise ValueError(f"transport_figure(cost): {shapes}")
    rows, cols = transported_positions(plan)
    dropped = {"student": int((~rows).sum()), "teacher": int((~cols).sum())}
    if not rows.all() or not cols.all():
        cost = None if cost is None else _submatrix(cost, rows, cols)
        plan = _submatrix(plan, rows, cols)
    views = [matrix_view(plan, limit)] + ([matrix_view(cost, limit)] if cost is not None else [])
    scores = _scores_text(plan.info)
    fig = make_subplots(
        rows=1,
        cols=len(views),
        horizontal_spacing=0.14,
        shared_yaxes=True,  # the same student positions: the cost panel needs no labels where P's colour bar sits
        subplot_titles=[f"plan P · {scores}" if scores else "plan P"] + (["cost C"] if cost is not None else []),
    )
    fig.add_trace(
        _heatmap_trace(
            views[0],
            "student",
            "teacher",
            "Blues",
            # 3 significant digits: long ticks (0.0999995) would run into the cost panel
            colorbar={"title": "P", "x": 0.455 if cost is not None else 1.02, "tickformat": ".3~g"},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(_reference_trace(views[0]), row=1, col=1)
    if cost is not None:
        trace = _heatmap_trace(views[1], "student", "teacher", "Reds", colorbar={"title": "C", "tickformat": ".3~g"})
        trace.hovertemplate = trace.hovertemplate.replace("weight", "cost")
        fig.add_trace(trace, row=1, col=2)
    for col, view in enumerate(views, start=1):
        x_range, y_range = _full_ranges(view)
        fig.update_xaxes(title_text="teacher token", type="category", tickangle=-60, range=x_range, row=1, col=col)
        fig.update_yaxes(
            title_text="student token" if col == 1 else None, type="category", range=y_range, row=1, col=col
        )
    title = matrix_title(plan, views[0]).replace(token_label(plan.name), "transport plan", 1)
    untransported = [f"{n} {side}" for side, n in dropped.items() if n]
    if untransported:
        title += f"<br>not transported (beyond the paired span): {' and '.join(untransported)} positions"
    fig.update_layout(
        title=title,
        margin={"t": 120 if untransported else 100},  # room for the title's second line above the panels' titles
        height=max(420, min(900, 14 * len(views[0].y) + 200)),
        showlegend=True,
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


def vocab_map_table(
    data: pd.DataFrame | Run,
    step: int | None = None,
    sample: int = 0,
    *,
    teacher_tokens: Sequence[str] | Mapping[int, str] | None = None,
    student_tokens: Sequence[str] | Mapping[int, str] | None = None,
) -> go.Figure:
    """The recorded top-k teacher <-> student id map at ``step`` (default: the latest; else the last
    recorded at or before it) as a table of token strings: from ``teacher_tokens`` / ``student_tokens``
    when given (``tokenizer.convert_ids_to_tokens`` results or an id -> string mapping), else the strings
    the recorder stored (``Recorder(tokenizers=...)``), else the ids.

    ``data``: the vocab_map table (``run.table("vocab_map")``: columns ``step``, ``sample``, ``rank``,
    ``teacher_id``, ``student_id``, optionally ``teacher_token``, ``student_token``), or a Run."""
    table = _frame(data, lambda run: run.table(VOCAB_MAP), SCHEMAS[VOCAB_MAP][0], "vocab_map_table")
    if table.empty:
        return message_figure(
            "no top-k vocabulary map recorded (only optimal-transport methods record one)", "vocabulary map"
        )
    steps = sorted(table["step"].unique())
    step = steps[-1] if step is None else max((s for s in steps if s <= step), default=steps[0])
    rows = table[(table["step"] == step) & (table["sample"] == sample)].sort_values("rank")

    # non-breaking spaces: in a FigureWidget (the dashboard) table strings with plain spaces rendered blank
    # in JupyterLab + Chromium (the static figure was fine); seen in the browser test's screenshot
    def names(side: str, vocab) -> list[str]:
        ids = [int(i) for i in rows[f"{side}_id"]]
        if vocab is None and f"{side}_token" in rows.columns:
            out = [f"{token_label(t)} ({i})" for t, i in zip(rows[f"{side}_token"], ids, strict=True)]
        else:
            out = []
            for i in ids:
                try:
                    out.append(str(i) if vocab is None else f"{token_label(vocab[i])} ({i})")
                except (IndexError, KeyError):
                    out.append(str(i))
        return [text.replace(" ", "\u00a0") for text in out]

    cells = [rows["rank"].tolist(), names("teacher", teacher_tokens), names("student", student_tokens)]
    fig = go.Figure(
        go.Table(header={"values": ["rank", "teacher\u00a0token", "student\u00a0token"]}, cells={"values": cells})
    )
    fig.update_layout(
        title=f"top-k vocabulary map · step {int(step)} · sample {sample}", height=min(700, 120 + 24 * len(rows))
    )
    return fig


# tokens ------------------------------------------------------------------------------------------------
def top_tokens(logits, id_to_token, k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-``k`` next tokens with probabilities per position of ``logits [T, V]`` (a tensor or array);
    ``id_to_token`` maps a list of ids to strings (e.g. ``tokenizer.convert_ids_to_tokens``)."""
    import torch

    probs = torch.as_tensor(logits).float().softmax(-1)
    values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [list(zip(id_to_token(i.tolist()), v.tolist(), strict=True)) for i, v in zip(ids, values, strict=True)]


def _top_text(entries: Sequence[tuple[str, float]]) -> str:
    return "<br>".join(f"  {token_label(t)} {p:.3f}" for t, p in entries)


def recorded_top(rows: pd.DataFrame) -> dict[int, tuple[list, list]]:
    """``position -> (teacher top-k, student top-k)`` from the recorded ``*_top5`` JSON columns."""
    columns = [f"{side}_top{TOP_K}" for side in ("teacher", "student")]
    if not any(c in rows.columns for c in columns):
        return {}
    out = {}
    for _, row in rows.iterrows():
        pairs = []
        for c in columns:
            cell = row.get(c)
            pairs.append([(str(t), float(p)) for t, p in json.loads(cell)] if isinstance(cell, str) else [])
        out[int(row["position"])] = tuple(pairs)
    return out


# per-token quantities a view can colour by, in order of preference (MultiLevelOT records HAD and SL, not token_kd)
TOKEN_VALUES = {
    "token_kd": "KD loss",
    "token_had": "HAD",
    "token_sl": "SL",
    "token_ce": "CE loss",
    "fkl": "FKL",
    "rkl": "RKL",
    "rkl_share": "RKL share",
}
# matrices recorded by the alignment probe: CMA's two attentions, ULD's pairing, MinED's DTW path
ALIGNMENT_NAMES = ALIGNMENT_MATRICES


def token_losses(
    data: pd.DataFrame | Run,
    step: int,
    sample: int = 0,
    *,
    value: str = "token_kd",
    top: Mapping[int, tuple[Sequence[tuple[str, float]], Sequence[tuple[str, float]]]] | None = None,
    per_line: int = TOKENS_PER_LINE,
    zmax: float | None = None,
    label_chars: int = TOKEN_CELL_CHARS,
) -> go.Figure:
    """The response of one sampled sequence as tokens coloured by a per-token quantity.

    ``zmax``: the top of the colour scale (default: this sequence's largest value); give several figures
    the same ``zmax`` to compare their colours (:func:`kdviz.viz.compare` does).

    ``value``: a column of the tokens table (``token_kd``, ``token_ce``, ``fkl``, ``rkl``, ...) or
    ``"rkl_share"`` (``rkl / (fkl + rkl)``: red where the student over-covers, blue where it under-covers).
    ``top``: optional ``position -> (teacher top-k, student top-k)`` lists of ``(token, probability)``
    (see :func:`top_tokens`), shown on hover; by default the recorded ``teacher_top5`` / ``student_top5``
    columns are used. Tokens wrap every ``per_line``; a cell shows at most ``label_chars`` characters of its token
    (a longer one, e.g. ``<|endoftext|>``, ends in ``…``; the hover shows it whole).

    ``data``: the tokens table (``run.tokens()``: columns ``step``, ``sample``, ``position``, ``token``,
    the per-token quantities, optionally ``input_token``, ``example_id``, ``teacher_top5``,
    ``student_top5``), or a Run.
    """
    rows = sample_rows(_frame(data, lambda run: run.tokens(), TOKEN_COLUMNS, "token_losses"), step, sample)
    if top is None:
        top = recorded_top(rows)
    if value == "rkl_share" and {"fkl", "rkl"} <= set(rows.columns):
        rows = rows.assign(rkl_share=rows["rkl"] / (rows["fkl"] + rows["rkl"]).where(lambda s: s > 0))
    if rows.empty or value not in rows.columns:
        have = [
            c for c in rows.columns if c not in ("step", "sample", "example_id", "position", "token", "input_token")
        ]
        return message_figure(
            f"no per-token {value!r} for sample {sample} at step {step} (recorded: {have})", "per-token loss"
        )
    n = len(rows)
    lines = max(1, math.ceil(n / per_line))
    z = np.full((lines, per_line), np.nan)
    text = np.full((lines, per_line), "", dtype=object)
    hover = np.full((lines, per_line), "", dtype=object)
    for k, row in enumerate(rows.itertuples(index=False)):
        i, j = divmod(k, per_line)
        v = getattr(row, value)
        z[i, j] = v
        text[i, j] = token_label(row.token, width=label_chars)
        tip = f"position {row.position}<br>predicts {token_label(row.token)}"
        if hasattr(row, "input_token"):
            tip += f" (after {token_label(row.input_token)})"
        tip += f"<br>{TOKEN_VALUES.get(value, token_label(value))} {v:.4f}"
        if top and int(row.position) in top:
            for side, entries in zip(("teacher", "student"), top[int(row.position)], strict=True):
                if entries:
                    tip += f"<br>{side} top-{len(entries)}:<br>{_top_text(entries)}"
        hover[i, j] = tip
    share = value == "rkl_share"
    fig = go.Figure(
        go.Heatmap(
            z=finite_or_none(z),
            text=text,
            customdata=hover,
            texttemplate="%{text}",
            textfont={"size": 12},
            colorscale="RdBu_r" if share else "YlOrRd",
            zmid=0.5 if share else None,
            zmin=None if share else 0.0,
            zmax=None if share else zmax,
            hovertemplate="%{customdata}<extra></extra>",
            xgap=2,
            ygap=2,
            colorbar={"title": TOKEN_VALUES.get(value, token_label(value))},
        )
    )
    title = f"{TOKEN_VALUES.get(value, token_label(value))} per token · step {step} · sample {sample}"
    top_margin = 50
    if "example_id" in rows.columns:  # on a second line: a panel half a notebook wide would crop it
        title += f"<br>example {token_label(rows['example_id'].iloc[0])}"
        top_margin = 70
    fig.update_layout(
        title=title,
        xaxis={"visible": False},
        yaxis={"visible": False, "autorange": "reversed"},
        height=top_margin + 70 + 36 * lines,
        margin={"t": top_margin, "b": 10},
    )
    return fig


TOKENIZER_COLUMNS = ("tokenizer", "token", "start", "end")


def tokenizer_comparison(tokens: pd.DataFrame, text: str, *, window: int = 48) -> go.Figure:
    """One text as two tokenisations aligned by characters (x axis: character index), each token a box
    coloured by the kind of region it belongs to (one-to-one, one-to-many = the second tokenizer splits,
    many-to-one = it merges, many-to-many, unmatched); the characters themselves on a third row.

    ``tokens`` is tidy, one row a token in order (:func:`kdviz.align.token_table`): ``tokenizer`` (two names,
    the first drawn on top), ``token``, ``start``, ``end`` (character offsets into ``text``). The view opens
    on the first ``window`` characters (about 14 px each at a notebook's width, so token strings stay
    readable); the range slider under the axis pans and zooms to any span of the text."""
    _require(tokens, TOKENIZER_COLUMNS, "tokenizer_comparison")
    names = list(pd.unique(tokens["tokenizer"]))
    if len(names) != 2:
        raise ValueError(f"tokenizer_comparison(tokens): expected the tokens of two tokenizers, got {names}")
    sides = [tokens[tokens["tokenizer"] == name] for name in names]
    (offsets_a, tokens_a), (offsets_b, tokens_b) = (
        (list(zip(side["start"].astype(int), side["end"].astype(int), strict=True)), list(side["token"]))
        for side in sides
    )
    overlap = overlap_matrix(offsets_a, offsets_b, text)
    kind_a, kind_b = ["unmatched"] * len(tokens_a), ["unmatched"] * len(tokens_b)
    for region in regions(offsets_a, offsets_b, text, overlap):
        for i in region.rows:
            kind_a[i] = region.kind
        for j in region.cols:
            kind_b[j] = region.kind
    fig = go.Figure()
    legend_done: set[str] = set()
    for side, offsets, tokens, kinds in (
        (names[0], offsets_a, tokens_a, kind_a),
        (names[1], offsets_b, tokens_b, kind_b),
    ):
        for kind in KINDS:
            idx = [k for k, (s, e) in enumerate(offsets) if kinds[k] == kind and e > s]
            if not idx:
                continue
            fig.add_trace(
                go.Bar(
                    y=[token_label(side)] * len(idx),
                    x=[offsets[k][1] - offsets[k][0] for k in idx],
                    base=[offsets[k][0] for k in idx],
                    orientation="h",
                    name=kind,
                    legendgroup=kind,
                    showlegend=kind not in legend_done,
                    marker={"color": KIND_COLOURS[kind], "line": {"color": "#333", "width": 1}},
                    text=[token_label(tokens[k]) for k in idx],
                    textposition="inside",
                    insidetextanchor="middle",
                    customdata=[[k, offsets[k][0], offsets[k][1], kind] for k in idx],
                    hovertemplate=f"{token_label(side)} token %{{customdata[0]}}: %{{text}}<br>"
                    "characters %{customdata[1]}-%{customdata[2]}<br>%{customdata[3]}<extra></extra>",
                )
            )
            legend_done.add(kind)
    chars = [token_label(ch) if not ch.isspace() else "·" for ch in text]
    fig.add_trace(
        go.Scatter(
            x=[k + 0.5 for k in range(len(text))],
            y=["text"] * len(text),
            mode="text",
            text=chars,
            showlegend=False,
            hovertemplate="character %{x:.0f}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        barmode="overlay",
        title=f"tokenizer comparison · {len(tokens_a)} {token_label(names[0])} vs "
        f"{len(tokens_b)} {token_label(names[1])} tokens"
        + (
            f"<br><sup>first {window} of {len(text)} characters: drag the slider under the axis</sup>"
            if len(text) > window
            else ""
        ),
        xaxis={
            "title": "character",
            "range": [0, max(min(len(text), window), 1)],
            "rangeslider": {"visible": len(text) > window, "range": [0, max(len(text), 1)], "thickness": 0.12},
        },
        yaxis={
            "title": "",
            "categoryorder": "array",
            "categoryarray": ["text", token_label(names[1]), token_label(names[0])],
            "fixedrange": True,
        },
        height=380,
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        margin={"t": 90},
    )
    return fig


# numerics and results ----------------------------------------------------------------------------------
NUMERIC_PREFIXES = ("grad_norm/", "numerics/", "lr")


def numerics(data: pd.DataFrame | Run) -> go.Figure:
    """Gradient norms, learning rates and numerical events (non-finite terms, NaN counts, empty masks,
    AKL 0/0 fallbacks) over steps.

    ``data``: a scalars DataFrame (``run.scalars``: columns ``step``, ``name``, ``value``; the names drawn
    are ``grad_norm/<group>``, ``lr`` and ``numerics/<event>``), or a Run."""
    scalars = _frame(data, lambda run: run.scalars, SCALAR_COLUMNS, "numerics")
    names = sorted(n for n in set(scalars["name"]) if n.startswith(NUMERIC_PREFIXES))
    if not names:
        return message_figure("no gradient norms, learning rates or numerics recorded", "numerics")
    groups = (("gradient norm", "grad_norm/"), ("learning rate", "lr"), ("numerical events (counts)", "numerics/"))
    present = [(t, p) for t, p in groups if any(n.startswith(p) for n in names)]
    fig = make_subplots(
        rows=len(present), cols=1, shared_xaxes=True, subplot_titles=[t for t, _ in present], vertical_spacing=0.08
    )
    for row, (_, prefix) in enumerate(present, start=1):
        for name in (n for n in names if n.startswith(prefix)):
            sel = scalars[scalars["name"] == name]
            fig.add_trace(
                go.Scattergl(x=sel["step"], y=sel["value"], mode=line_mode(len(sel)), name=token_label(name)),
                row=row,
                col=1,
            )
    fig.update_xaxes(title_text="step", row=len(present), col=1)
    fig.update_layout(title="numerics", height=180 + 170 * len(present), margin={"t": 70})
    return fig


RESULT_ALIGNMENT = f"{ALIGNMENT_SCALARS}t2s_weight/"  # CMA's alignment scores, shown as "align <score>"
RESULT_TERMS = (
    "loss",
    "kd",
    "ce",
    "student_acc",
    "top1_agreement",
    "t2s_acc",
    "s2t_acc",
    f"{RESULT_ALIGNMENT}argmax_overlap",
    f"{RESULT_ALIGNMENT}overlap_mass",
)


def results_table(
    data: pd.DataFrame | Run | Mapping[str, pd.DataFrame | Run] | Sequence[pd.DataFrame | Run],
    last: int = 10,
    *,
    by: str | None = None,
) -> pd.DataFrame:
    """One row per run: method, steps, tokens seen and the mean of each main term over its last ``last``
    logged steps (labels escaped for display).

    ``data``: as for :func:`loss_terms`: a scalars DataFrame (columns ``step``, ``name``, ``value``), a
    Run, or a mapping label -> either, or a sequence; ``by``: a column of the DataFrame naming each
    row's run (one result row per value)."""
    rows = []
    for label, scalars in _scalars_by_run(data, by, "results_table").items():
        row: dict[str, object] = {"run": label}
        steps = sorted(scalars["step"].unique())
        row["steps"] = int(steps[-1]) + 1 if steps else 0
        seen = scalars.loc[scalars["name"] == "tokens_seen", "value"]
        row["tokens seen"] = int(seen.iloc[-1]) if len(seen) else None
        tail = scalars[scalars["step"].isin(steps[-last:])]
        means = tail.groupby("name")["value"].mean()
        for term in RESULT_TERMS:
            if term in means:
                row[term.replace(RESULT_ALIGNMENT, "align ")] = round(float(means[term]), 4)
        rows.append(row)
    return pd.DataFrame(rows)
