"""Figure functions on runs recorded from the tiny CMA / VanillaKD setups: traces, axes, labels, hover."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kdviz.align import encode_text, token_strings, token_table
from kdviz.record import Matrix, open_run
from kdviz.viz import figures, toy
from tests.kd_helpers import bpe_tokenizer, unigram_tokenizer
from tests.viz_runs import INJECTED, cma_run, fake_run, ot_run, vanilla_run


@pytest.fixture(scope="module")
def cma():
    return open_run(cma_run())


@pytest.fixture(scope="module")
def vanilla():
    return open_run(vanilla_run())


@pytest.fixture(scope="module")
def ot():
    return open_run(ot_run())


@pytest.fixture(scope="module")
def fake():
    return open_run(fake_run())


def test_token_label_escapes_and_shows_whitespace():
    assert figures.token_label(INJECTED[0]) == "&lt;img src=x onerror=alert(1)&gt;"
    assert figures.token_label("a\nb\t") == "a↵b⇥" and figures.token_label("") == "∅"
    assert figures.position_labels(["x", "x"], [3, 4]) == ["3 x", "4 x"]  # unique even for equal tokens


def test_smooth_is_debiased_and_skips_nan():
    np.testing.assert_allclose(figures.smooth([5.0, 5.0, 5.0], 0.9), [5.0, 5.0, 5.0])
    out = figures.smooth([1.0, float("nan"), 3.0], 0.5)
    assert np.isnan(out[1]) and out[0] == 1.0 and out[2] == pytest.approx((0.5 * 0.5 + 0.5 * 3) / 0.75)
    with pytest.raises(ValueError, match="smoothing"):
        figures.smooth([1.0], 1.0)


def test_loss_terms_raw_and_smoothed_runs_overlaid(cma, vanilla):
    fig = figures.loss_terms([cma, vanilla], log_y=True, clip_outliers=True)
    names = [t.name for t in fig.data]
    assert len(fig.data) == 12  # 2 runs x (loss, kd, ce) x (raw, smoothed)
    assert any(n.startswith("CMA") and n.endswith("loss") for n in names)
    assert any(n.startswith("VanillaKD-AKL") and n.endswith("kd (raw)") for n in names)
    raw = [t for t in fig.data if t.name.endswith("(raw)")]
    assert all(t.opacity == 0.25 for t in raw) and list(raw[0].x) == list(range(6))
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.title.text == "step"
    assert fig.layout.yaxis.range is not None
    assert {b.label for b in fig.layout.updatemenus[0].buttons} == {"linear", "log"}
    by_tokens = figures.loss_terms(cma, ["kd"], x="tokens")
    seen = cma.scalars.query("name == 'tokens_seen'")["value"].tolist()
    assert list(by_tokens.data[0].x) == seen and by_tokens.layout.xaxis.title.text == "tokens seen"
    wall = figures.loss_terms(cma, ["kd"], x="wall_time")
    assert wall.data[0].x[0] == pytest.approx(0.0, abs=1e-6) and wall.layout.xaxis.title.text == "wall time (s)"
    assert "hovertemplate" in wall.data[1].to_plotly_json()
    with pytest.raises(ValueError, match="x must be one of"):
        figures.loss_terms(cma, x="epoch")


def test_head_tail_over_steps(cma, vanilla):
    fig = figures.head_tail_steps(vanilla)
    names = {t.name for t in fig.data}
    assert {"teacher head p(H)", "student on head q(H)", "g_head", "g_tail", "d_head (signed)"} <= names
    assert {"w_head q05-q95", "w_head q25-q75", "w_head median"} <= names
    assert "shared" in fig.layout.title.text and fig.layout.xaxis3.title.text == "step"
    assert [fig.layout[f"yaxis{k}"].title.text for k in ("", 2, 3)] == ["mass", "gap", "w_head"]
    median = next(t for t in fig.data if t.name == "w_head median")
    assert list(median.x) == [0, 2, 4]
    assert "s2t" in figures.head_tail_steps(cma, space="s2t").layout.title.text
    with pytest.raises(KeyError, match="recorded spaces"):
        figures.head_tail_steps(cma, space="shared")


def test_head_tail_per_token(vanilla):
    fig = figures.head_tail_tokens(vanilla, step=2, sample=1)
    rows = vanilla.head_tail(per_token=True).query("step == 2 and sample == 1")
    labels = figures.position_labels(rows["token"].tolist(), rows["position"].tolist())
    assert list(fig.data[0].x) == labels and fig.layout.barmode == "stack"
    assert [t.name for t in fig.data] == ["p(H) teacher", "q(H) student", "g_head", "g_tail", "w_head"]
    np.testing.assert_allclose(fig.data[2].y, rows["g_head"])
    assert "no per-token" in figures.head_tail_tokens(vanilla, step=99).layout.annotations[0].text


def test_alignment_heatmap_labels_hover_reference_scores(cma):
    m = cma.matrix("t2s_weight", step=4, sample=1)
    fig = figures.alignment_heatmap(m)
    heat, ref = fig.data
    np.testing.assert_allclose(heat.z, m.values)
    assert list(heat.y) == figures.position_labels(m.row_tokens, m.info["rows"])  # predicted student tokens
    assert list(heat.x) == figures.position_labels(m.col_tokens, m.info["cols"])
    assert any("▁" in y for y in heat.y) and any("Ġ" in x for x in heat.x)
    assert "student %{y}" in heat.hovertemplate and "teacher %{x}" in heat.hovertemplate
    assert "weight %{z" in heat.hovertemplate
    assert len(ref.x) == int(m.reference.sum()) and ref.marker.symbol == "square-open"
    title = fig.layout.title.text
    assert "step 4" in title and "sample 1" in title and "argmax overlap" in title and "overlap mass" in title
    assert fig.layout.xaxis.title.text == "teacher token (predicted)"
    assert fig.layout.yaxis.title.text == "student token (predicted)"


def test_large_matrices_are_binned():
    rng = np.random.default_rng(0)
    values = rng.random((700, 650)).astype(np.float32)
    reference = np.zeros((700, 650), dtype=bool)
    reference[0, 0] = True
    m = Matrix(values, [f"s{i}" for i in range(700)], [f"t{j}" for j in range(650)], reference, "t2s_weight")
    view = figures.matrix_view(m)
    assert view.z.shape == (figures.MAX_AXIS, figures.MAX_AXIS) and view.binned
    assert view.z.mean() == pytest.approx(values.mean(), rel=1e-3)
    assert view.y[0] == "0 s0 … 1 s1" and view.ref_x == [view.x[0]]
    assert "binned from 700x650" in figures.alignment_heatmap(m).layout.title.text
    small = figures.matrix_view(Matrix(values[:5, :4], list("abcde"), list("wxyz"), None))
    assert small.z.shape == (5, 4) and not small.binned and small.ref_x == []


def test_transport_plan_shows_only_transported_positions_with_uniform_marginals(ot):
    """MultiLevelOT pairs the answers by index over the shorter one: the longer side's last positions carry
    no mass. Drawn, they looked like a solver breaking its uniform marginals; they are left out and counted."""
    plan = ot.matrix("transport_plan", 2, 0)  # student rows, teacher columns
    values = np.asarray(plan.values, dtype=np.float64)
    padded = Matrix(
        np.pad(values, ((0, 3), (0, 0))), [*plan.row_tokens, "a", "b", "c"], plan.col_tokens,
        None if plan.reference is None else np.pad(plan.reference, ((0, 3), (0, 0))), name="transport_plan",
        info={**plan.info, "rows": [*(plan.info.get("rows") or range(values.shape[0])), 97, 98, 99]},
    )
    for matrix in (plan, padded):
        fig = figures.transport_figure(matrix, matrix)
        drawn = np.asarray(fig.data[0].z, dtype=np.float64)
        assert drawn.shape == values[values.sum(1) > 0][:, values.sum(0) > 0].shape
        columns, rows = drawn.sum(0), drawn.sum(1)
        np.testing.assert_allclose(columns, columns.mean(), rtol=1e-3)  # uniform marginals, every column
        np.testing.assert_allclose(rows, rows.mean(), rtol=1e-3)
        assert fig.layout.yaxis2.title.text is None and "no ground truth" not in str(fig.layout.annotations)
    untransported = int((values.sum(1) == 0).sum()) + 3
    assert f"<br>not transported (beyond the paired span): {untransported} student positions" in fig.layout.title.text


def test_transport_plan_cost_and_vocab_map(ot):
    plan, cost = ot.matrix("transport_plan", 2, 0), ot.matrix("transport_cost", 2, 0)
    assert plan.values.shape == cost.values.shape and len(plan.row_tokens) == plan.values.shape[0]
    fig = figures.transport_figure(plan, cost)
    assert [t.type for t in fig.data] == ["heatmap", "scatter", "heatmap"]
    rows, cols = plan.values.sum(1) > 0, plan.values.sum(0) > 0  # the transported positions
    np.testing.assert_allclose(fig.data[0].z, plan.values[rows][:, cols], rtol=1e-6)
    np.testing.assert_allclose(fig.data[2].z, cost.values[rows][:, cols], rtol=1e-6)
    student_labels = figures.position_labels(plan.row_tokens, plan.info["rows"])  # student rows, teacher columns
    assert list(fig.data[0].y) == [label for label, keep in zip(student_labels, rows, strict=True) if keep]
    assert any("▁" in y for y in fig.data[0].y) and any("Ġ" in x for x in fig.data[0].x)
    assert "cost %{z" in fig.data[2].hovertemplate and fig.layout.xaxis2.title.text == "teacher token"
    assert fig.layout.yaxis.title.text == "student token" and "transport plan" in fig.layout.title.text
    assert fig.data[0].hovertemplate.startswith("student %{y}<br>teacher %{x}")
    assert len(fig.data[1].x) == int(plan.reference[rows][:, cols].sum())
    teacher_vocab = bpe_tokenizer().convert_ids_to_tokens(list(range(len(bpe_tokenizer()))))
    student_vocab = {i: t for t, i in unigram_tokenizer().get_vocab().items()}
    table = figures.vocab_map_table(ot, 2, 0, teacher_tokens=teacher_vocab, student_tokens=student_vocab)
    rows = ot.table("vocab_map").query("step == 2 and sample == 0")
    cells = table.data[0].cells.values
    assert len(rows) == 20 and list(cells[0]) == list(range(20))
    nbsp = "\u00a0"  # no plain spaces: they rendered blank in the dashboard's FigureWidget
    assert list(cells[1]) == [f"{figures.token_label(teacher_vocab[i])}{nbsp}({i})" for i in rows["teacher_id"]]
    assert list(cells[2]) == [f"{figures.token_label(student_vocab[i])}{nbsp}({i})" for i in rows["student_id"]]
    assert list(table.data[0].header.values) == ["rank", f"teacher{nbsp}token", f"student{nbsp}token"]


def test_vocab_map_absent_explains(cma):
    fig = figures.vocab_map_table(cma)
    assert not fig.data and "no top-k vocabulary map" in fig.layout.annotations[0].text


def test_token_losses_text_colour_and_top5_hover(vanilla):
    rows = vanilla.tokens().query("step == 4 and sample == 0").sort_values("position")
    logits = torch.randn(len(rows), 30)
    top = {
        int(p): (figures.top_tokens(logits[k : k + 1], lambda ids: [f"t{i}" for i in ids])[0], [("s", 0.5)])
        for k, p in enumerate(rows["position"])
    }
    fig = figures.token_losses(vanilla, 4, 0, top=top, per_line=8)
    heat = fig.data[0]
    flat_text = [t for line in heat.text for t in line if t]
    assert flat_text == [figures.token_label(t, width=figures.TOKEN_CELL_CHARS) for t in rows["token"]]
    flat_z = np.asarray(heat.z, dtype=float).ravel()[: len(rows)]
    np.testing.assert_allclose(flat_z, rows["token_kd"])
    hover = heat.customdata[0][0]
    assert "KD loss" in hover and "teacher top-5" in hover and "student top-1" in hover and "s 0.500" in hover
    assert heat.texttemplate == "%{text}" and "KD loss per token" in fig.layout.title.text
    share = figures.token_losses(vanilla, 4, 0, value="rkl_share")
    assert share.data[0].zmid == 0.5 and "RKL share" in share.layout.title.text
    missing = figures.token_losses(vanilla, 4, 0, value="nope")
    assert "no per-token 'nope'" in missing.layout.annotations[0].text.replace("&#x27;", "'")


def test_top_tokens_probabilities():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    ((first, p),) = figures.top_tokens(logits, lambda ids: [str(i) for i in ids], k=1)[0]
    assert first == "2" and p == pytest.approx(float(logits.softmax(-1)[0, 2]))


def test_tokenizer_comparison_regions():
    text = "The café owner waits at 12 o'clock."
    tokens = token_table(text, {"student": unigram_tokenizer(), "teacher": bpe_tokenizer()})
    assert list(tokens.columns) == ["tokenizer", "position", "token", "start", "end"]
    ids_a, off_a = encode_text(unigram_tokenizer(), text)
    tok_a = token_strings(unigram_tokenizer(), ids_a)
    student_rows = tokens[tokens["tokenizer"] == "student"]
    spans = list(zip(student_rows["start"], student_rows["end"], strict=True))
    assert list(student_rows["token"]) == tok_a and spans == off_a
    fig = figures.tokenizer_comparison(tokens, text)
    bars = [t for t in fig.data if t.type == "bar"]
    kinds = {t.name for t in bars}
    assert "one-to-one" in kinds and kinds <= set(figures.KIND_COLOURS)
    student = [x for t in bars if t.y[0] == "student" for x in t.text]
    assert sorted(student) == sorted(figures.token_label(t) for t, (s, e) in zip(tok_a, off_a, strict=True) if e > s)
    assert all(t.marker.color == figures.KIND_COLOURS[t.name] for t in bars)
    assert "characters %{customdata[1]}" in bars[0].hovertemplate and fig.layout.xaxis.title.text == "character"
    assert fig.data[-1].mode == "text" and len(fig.data[-1].text) == len(text)
    assert not fig.layout.xaxis.rangeslider.visible and tuple(fig.layout.xaxis.range) == (0, len(text))
    # a long text opens on a readable window (~14 px a character) with a range slider over the whole text
    long_text = text * 4
    long = figures.tokenizer_comparison(
        token_table(long_text, {"student": unigram_tokenizer(), "teacher": bpe_tokenizer()}), long_text, window=40
    )
    assert tuple(long.layout.xaxis.range) == (0, 40) and long.layout.xaxis.rangeslider.visible
    assert tuple(long.layout.xaxis.rangeslider.range) == (0, 4 * len(text))
    with pytest.raises(ValueError, match="no column 'end'"):
        figures.tokenizer_comparison(tokens.drop(columns="end"), text)
    with pytest.raises(ValueError, match="two tokenizers"):
        figures.tokenizer_comparison(student_rows, text)
    with pytest.raises(TypeError, match="tokenizers: expected a non-empty mapping"):
        token_table(text, [unigram_tokenizer()])


def test_numerics_and_results(cma, vanilla):
    fig = figures.numerics(cma)
    names = {t.name for t in fig.data}
    assert "grad_norm/group0" in names and "lr" in names and "numerics/empty_masks/student" in names
    table = figures.results_table({"a": cma, "b": vanilla})
    assert table["run"].tolist() == ["a", "b"] and table["steps"].tolist() == [6, 6]
    assert "align argmax_overlap" in table.columns and table["top1_agreement"].isna().tolist() == [True, False]


def test_injected_tokens_never_reach_figures_raw(fake):
    built = [
        figures.alignment_heatmap(fake.matrix("t2s_weight", 3, 0)),
        figures.token_losses(fake, 3, 0),
        figures.loss_terms(fake),
    ]
    for fig in built:
        text = fig.to_json()
        assert "<img" not in text and "<script" not in text and "&lt;" in text


def test_toy_free_logit_training_and_figures():
    teacher = toy.half_gaussian_teacher()
    assert teacher.shape == (80,) and float(teacher.exp().sum()) == pytest.approx(1.0)
    runs = {n: toy.train_free_logits(teacher, n, 10, snapshots=(0, 1, 10)) for n in ("fkl", "rkl", "akl")}
    for snaps in runs.values():
        assert toy.head_tail_gaps(snaps[10], teacher) < toy.head_tail_gaps(snaps[1], teacher)
    fig = toy.toy_experiment_figure(teacher, runs)
    assert len(fig.data) == 12 and "FKL step 1" in fig.layout.annotations[0].text
    assert all(len(t.x) == 80 for t in fig.data)  # the whole support, far tail included
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.title.text == "FKL: probability"
    assert fig.layout.xaxis5.title.text == "class"
    # the title states what the runs show, computed from them
    fkl_head, fkl_tail = toy.remaining_gaps(runs["fkl"], teacher, 10)
    title = fig.layout.title.text
    assert f"FKL head {fkl_head:.0%} · tail {fkl_tail:.0%}" in title and "AKL head" in title
    shaped = toy.teacher_logits(20, peak=3, spread=1.5, second_mode=12, second_weight=0.3)
    assert int(shaped.argmax()) == 3 and shaped[12] > shaped[8]
    values = toy.divergence_values(torch.zeros(20, dtype=torch.float64), shaped)
    assert set(values) == set(toy.DIVERGENCES) and all(v >= -1e-9 for v in values.values())
    grad = toy.divergence_gradient(torch.zeros(20, dtype=torch.float64), shaped, "fkl")
    np.testing.assert_allclose(grad, (1 / 20 - shaped.softmax(-1)).numpy(), atol=1e-9)  # (q - p) / tau
    dist = toy.distribution_figure(shaped, torch.zeros(20, dtype=torch.float64))
    assert [t.name for t in dist.data][:2] == ["p teacher (dark: head)", "q student"]
    assert "g_head" in dist.layout.annotations[0].text


def test_a_one_step_run_draws_its_points(tmp_path):
    """A run with one logged step: a line through one point is invisible, so its line charts carry markers."""
    from kdviz.record import Recorder
    from tests.record_fakes import make_batch, make_output

    with Recorder(tmp_path / "one", every=1, samples=1) as rec:
        rec.log(0, make_batch(), make_output(0), grad_norms={"student": 1.5})
    run = open_run(tmp_path / "one")
    for fig in (figures.loss_terms(run), figures.numerics(run)):
        shown = [t for t in fig.data if t.showlegend is not False]
        assert shown and all("markers" in t.mode for t in shown), [t.mode for t in fig.data]


# data: tidy DataFrames built by hand, or the Run that holds them ------------------------------------------
def drawn(fig):
    """What each trace of ``fig`` draws (its data arrays), without names, colours or hover text."""
    keys = ("x", "y", "z", "text", "base", "cells")
    return [{k: v for k, v in trace.items() if k in keys} for trace in fig.to_plotly_json()["data"]]


def test_loss_terms_from_a_long_dataframe_coloured_by_run(cma):
    scalars = pd.DataFrame({
        "run": ["a", "a", "a", "b", "b", "b"],
        "step": [0, 1, 2, 0, 1, 2],
        "name": ["loss"] * 6,
        "value": [3.0, 2.0, 1.0, 4.0, 4.0, 4.0],
    })
    fig = figures.loss_terms(scalars, color="run", smoothing=0.5)
    assert [t.name for t in fig.data] == ["a: loss (raw)", "a: loss", "b: loss (raw)", "b: loss"]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [3.0, 2.0, 1.0]
    np.testing.assert_allclose(fig.data[1].y, figures.smooth([3.0, 2.0, 1.0], 0.5))
    np.testing.assert_allclose(fig.data[3].y, [4.0, 4.0, 4.0])
    one = figures.loss_terms(scalars[scalars["run"] == "a"])  # one run, no colour column: legend is the term
    assert [t.name for t in one.data] == ["loss (raw)", "loss"]
    assert drawn(figures.loss_terms(cma)) == drawn(figures.loss_terms(cma.scalars))
    assert drawn(figures.loss_terms([cma, cma.scalars])) == drawn(figures.loss_terms({"x": cma.scalars, "y": cma}))
    with pytest.raises(ValueError, match="no column 'run'"):
        figures.loss_terms(scalars.drop(columns="run"), color="run")
    with pytest.raises(ValueError, match="wall_time"):
        figures.loss_terms(scalars, x="wall_time")


def test_head_tail_steps_from_a_dataframe(vanilla):
    means = {"p_head": (0.9, 0.8), "q_head": (0.5, 0.7), "g_head": (0.4, 0.1), "w_head": (0.3, 0.6)}
    spread = {"q05": -0.25, "q25": -0.125, "q50": 0.0, "q75": 0.125, "q95": 0.25}
    table = pd.DataFrame([
        {"step": k, "space": "shared", "statistic": stat, "mean": m[k], **{q: m[k] + d for q, d in spread.items()}}
        for stat, m in means.items()
        for k in (0, 1)
    ])
    fig = figures.head_tail_steps(table)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["teacher head p(H)"].y) == [0.9, 0.8] and list(by_name["g_head"].x) == [0, 1]
    assert list(by_name["student on head q(H)"].y) == [0.5, 0.7]
    np.testing.assert_allclose(by_name["w_head median"].y, [0.3, 0.6])
    np.testing.assert_allclose(by_name["w_head q05-q95"].y, [0.05, 0.35])  # the band's low edge: q05
    assert figures.head_tail_steps(vanilla).to_json() == figures.head_tail_steps(vanilla.head_tail()).to_json()
    with pytest.raises(ValueError, match="q05"):
        figures.head_tail_steps(table.drop(columns="q05"))


def test_head_tail_tokens_from_a_dataframe(vanilla):
    rows = pd.DataFrame({
        "step": [3, 3, 3], "sample": [0, 0, 0], "position": [5, 6, 7], "token": ["a", "<b>", "c"],
        "p_head": [0.9, 0.8, 0.7], "q_head": [0.5, 0.6, 0.7], "g_head": [0.4, 0.2, 0.0],
        "g_tail": [0.1, 0.2, 0.3], "w_head": [0.2, 0.5, 0.9],
    })
    fig = figures.head_tail_tokens(rows, 3)
    assert list(fig.data[0].x) == ["5 a", "6 &lt;b&gt;", "7 c"] and list(fig.data[0].y) == [0.9, 0.8, 0.7]
    assert list(fig.data[2].y) == [0.4, 0.2, 0.0] and list(fig.data[4].y) == [0.2, 0.5, 0.9]
    per_token = vanilla.head_tail(per_token=True)
    assert figures.head_tail_tokens(vanilla, 2, 1).to_json() == figures.head_tail_tokens(per_token, 2, 1).to_json()


def test_token_losses_from_a_dataframe(vanilla):
    rows = pd.DataFrame({
        "step": [1, 1, 1, 2], "sample": [0, 0, 0, 0], "position": [2, 0, 1, 0],
        "token": ["c", "a", "b", "z"], "token_kd": [0.3, 0.1, 0.2, 9.0],
    })
    heat = figures.token_losses(rows, 1, per_line=2).data[0]
    assert [t for line in heat.text for t in line] == ["a", "b", "c", ""]  # by position, wrapped every 2
    special = figures.token_losses(rows.assign(token=["c", "<|endoftext|>", "b", "z"]), 1, per_line=2).data[0]
    assert special.text[0][0] == "&lt;|en…" and "&lt;|endoftext|&gt;" in special.customdata[0][0]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float).ravel()[:3], [0.1, 0.2, 0.3])
    assert figures.token_losses(vanilla, 4, 0).to_json() == figures.token_losses(vanilla.tokens(), 4, 0).to_json()
    with pytest.raises(ValueError, match="no column 'position'"):
        figures.token_losses(rows.drop(columns="position"), 1)


def test_numerics_and_results_from_a_dataframe(cma, vanilla):
    scalars = pd.DataFrame({
        "run": ["a", "a", "a", "a", "b", "b"],
        "step": [0, 0, 1, 1, 0, 1],
        "name": ["grad_norm/student", "loss", "grad_norm/student", "loss", "loss", "loss"],
        "value": [1.5, 2.0, 0.5, 1.0, 7.0, 9.0],
    })
    fig = figures.numerics(scalars)
    assert [t.name for t in fig.data] == ["grad_norm/student"] and list(fig.data[0].y) == [1.5, 0.5]
    assert figures.numerics(cma).to_json() == figures.numerics(cma.scalars).to_json()
    table = figures.results_table(scalars, by="run")
    assert table["run"].tolist() == ["a", "b"] and table["loss"].tolist() == [1.5, 8.0]
    assert table["steps"].tolist() == [2, 2]
    from_runs = figures.results_table({"c": cma, "v": vanilla})
    pd.testing.assert_frame_equal(from_runs, figures.results_table({"c": cma.scalars, "v": vanilla.scalars}))


def test_matrix_figures_from_a_wide_dataframe():
    plan = pd.DataFrame([[0.25, 0.0, 0.25], [0.0, 0.5, 0.0]], index=["s0", "s1"], columns=["t0", "t1", "t2"])
    heat = figures.alignment_heatmap(plan, "my alignment")
    np.testing.assert_allclose(heat.data[0].z, plan.to_numpy())
    assert list(heat.data[0].y) == ["0 s0", "1 s1"] and list(heat.data[0].x) == ["0 t0", "1 t1", "2 t2"]
    assert heat.layout.title.text.startswith("my alignment") and len(heat.data[1].x) == 0  # no ground truth
    row = figures.alignment_row(plan, 1)
    assert list(row.data[0].y) == [0.0, 0.5, 0.0] and "argmax 1 t1" in row.layout.title.text
    cost = plan * 0 + np.arange(6).reshape(2, 3)
    fig = figures.transport_figure(plan, cost)
    np.testing.assert_allclose(fig.data[0].z, plan.to_numpy())
    np.testing.assert_allclose(fig.data[2].z, cost.to_numpy())
    with pytest.raises(ValueError, match="plan's shape"):
        figures.transport_figure(plan, cost.iloc[:, :2])
    with pytest.raises(ValueError, match="holds numbers"):
        figures.alignment_heatmap(pd.DataFrame({"t0": ["x"]}))
    with pytest.raises(TypeError, match="Matrix, a kdviz Run or a wide pandas DataFrame"):
        figures.alignment_heatmap(plan.to_numpy())


def test_matrix_figures_from_a_run(cma, ot):
    matrix = cma.matrix("t2s_weight", 4, 1)
    assert figures.alignment_heatmap(cma, step=4, sample=1).to_json() == figures.alignment_heatmap(matrix).to_json()
    assert figures.alignment_heatmap(cma).to_json() == figures.alignment_heatmap(cma.matrix("t2s_weight")).to_json()
    position = matrix.info["rows"][0]
    top = figures.recorded_top(figures.sample_rows(cma.tokens(), 4, 1))[position]  # the top-k recorded there
    row = figures.alignment_row(cma, 0, step=4, sample=1)
    assert row.to_json() == figures.alignment_row(matrix, 0, top).to_json()
    assert list(row.data[1].cells.values[1]) == [figures.token_label(t) for t, _ in top[0]]
    plan, cost = ot.matrix("transport_plan", 2, 0), ot.matrix("transport_cost", 2, 0)
    assert figures.transport_figure(ot, step=2).to_json() == figures.transport_figure(plan, cost).to_json()
    with pytest.raises(ValueError, match="pick a matrix of a Run"):
        figures.alignment_heatmap(matrix, step=2)  # a Matrix is drawn as it is, never silently another step


def test_vocab_map_table_from_a_dataframe(ot):
    table = pd.DataFrame({
        "step": [0, 0, 3, 3], "sample": [0, 0, 0, 0], "rank": [0, 1, 0, 1],
        "teacher_id": [5, 6, 7, 8], "student_id": [1, 2, 3, 4],
    })
    cells = figures.vocab_map_table(table, step=2, teacher_tokens={5: "five"}).data[0].cells.values  # step 0: <= 2
    assert list(cells[0]) == [0, 1] and list(cells[1]) == ["five\u00a0(5)", "6"] and list(cells[2]) == ["1", "2"]
    assert list(figures.vocab_map_table(table).data[0].cells.values[2]) == ["3", "4"]  # the latest step
    assert figures.vocab_map_table(ot, 2, 0).to_json() == figures.vocab_map_table(ot.table("vocab_map"), 2, 0).to_json()
    with pytest.raises(ValueError, match="no column 'student_id'"):
        figures.vocab_map_table(table.drop(columns="student_id"))
    with pytest.raises(TypeError, match="DataFrame or a kdviz Run"):
        figures.vocab_map_table(table.to_dict())


def test_kdviz_viz_exports_views_only():
    """The namespace holds the figures, widgets, report and lab settings; helpers stay in their modules."""
    import inspect

    from kdviz import viz

    public = {name: value for name, value in vars(viz).items() if not name.startswith("_")}
    assert set(viz.__all__) == {name for name, value in public.items() if not inspect.ismodule(value)} | {"lab"}
    assert {name for name, value in public.items() if inspect.ismodule(value)} == {"figures", "lab", "toy", "widgets"}
    assert not {"smooth", "token_label", "message_figure", "matrix_view", "MAX_AXIS", "top_tokens"} & set(public)


def test_a_near_uniform_plan_is_drawn_in_one_colour_from_zero():
    """Colours run from 0 to the largest mass (plotly ignores a lone ``zmin``): a plan of 0.1 +- 1e-7 is one
    colour, not float noise at full contrast."""
    noise = np.random.default_rng(0).normal(0, 1e-7, (3, 10))
    plan = pd.DataFrame(0.1 + noise, index=["s0", "s1", "s2"], columns=[f"t{j}" for j in range(10)])
    fig = figures.transport_figure(plan, plan * 4)
    for trace, top in ((fig.data[0], plan.to_numpy().max()), (fig.data[2], 4 * plan.to_numpy().max())):
        assert trace.zmin == 0 and trace.zmax == pytest.approx(top)
        z = np.asarray(trace.z, dtype=float)
        assert (z.max() - z.min()) / (trace.zmax - trace.zmin) < 1e-5  # the cells' colours differ by < 1e-5
    heat = figures.alignment_heatmap(plan).data[0]
    assert heat.zmin == 0 and heat.zmax == pytest.approx(plan.to_numpy().max())
    assert fig.data[0].colorbar.tickformat == ".3~g"
