"""Widgets: the dashboard's tabs, shared step slider and sample selector, in-place updates, absent data,
errors in the Output area, live polling; compare, playground and the tokenizer inspector."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from kdviz.record import Recorder, open_run
from kdviz.viz import compare, dashboard, figures, inspect_tokenizers, playground
from kdviz.viz.widgets import PLOTLY_MIME, FigureView
from tests.kd_helpers import bpe_tokenizer, unigram_tokenizer
from tests.record_fakes import make_batch, make_output
from tests.viz_runs import cma_run, fake_run, ot_run, vanilla_run

TABS = ["Overview", "Head/Tail", "Alignment", "Transport", "Tokens", "Numerics"]


def _errors(view) -> str:
    return "".join(o.get("text", "") for o in view.errors.outputs)


def test_dashboard_tabs_slider_and_sample_update_the_heatmap_in_place():
    run = open_run(cma_run())
    d = dashboard(run)
    assert d.tab_titles == TABS
    assert list(d.controls.slider.options) == [0, 2, 4] and d.controls.slider.value == 4
    assert list(d.controls.sample.options) == [0, 1]
    heat = d.heatmap
    assert "step 4 · sample 0" in heat.layout.title.text
    d.tabs.selected_index = TABS.index("Alignment")
    d.controls.slider.value = 0
    assert d.heatmap is heat and "step 0 · sample 0" in heat.layout.title.text
    np.testing.assert_allclose(heat.data[0].z, run.matrix("t2s_weight", 0, 0).values)
    d.controls.sample.value = 1
    assert "step 0 · sample 1" in heat.layout.title.text
    d.alignment_name.value = "s2t_weight"
    assert heat.layout.title.text.startswith("s2t_weight") and "columns sum to 1" in heat.layout.title.text
    assert heat.layout.yaxis.title.text == "student token (predicted)"  # one orientation: student rows
    assert _errors(d) == ""


def test_choosing_a_token_shows_its_alignment_row_and_both_top_k():
    run = open_run(cma_run())
    d = dashboard(run)
    d.tabs.selected_index = TABS.index("Alignment")
    d.controls.slider.value = 2
    matrix = run.matrix("t2s_weight", 2, 0)
    assert len(d.alignment_row.options) == len(matrix.row_tokens)
    d.alignment_row.value = 3
    bars, table = d.row_view.data
    np.testing.assert_allclose(bars.y, matrix.values[3])
    reference = matrix.reference[3]
    assert [c == "#00a5bd" for c in bars.marker.color] == list(reference)  # the overlapping teacher tokens
    label = d.alignment_row.label
    assert f"row {label}" in d.row_view.layout.title.text and "step 2" in d.row_view.layout.title.text
    recorded = figures.recorded_top(figures.sample_rows(run.tokens(), 2, 0))[int(matrix.info["rows"][3])]
    assert list(table.cells.values[1]) == [figures.token_label(t) for t, _ in recorded[0]]  # teacher top-k
    assert list(table.cells.values[3]) == [figures.token_label(t) for t, _ in recorded[1]]  # student top-k
    d.controls.slider.value = 4  # another matrix: the menu follows it, the chosen row is kept when it exists
    assert len(d.alignment_row.options) == len(run.matrix("t2s_weight", 4, 0).row_tokens)
    assert d.alignment_row.value == 3 and "step 4" in d.row_view.layout.title.text
    assert _errors(d) == ""


def test_hidden_tabs_catch_up_when_shown():
    d = dashboard(open_run(cma_run()))
    tokens_panel = next(p for p in d.panels if p.tab == TABS.index("Tokens"))
    d.tabs.selected_index = TABS.index("Alignment")
    d.controls.slider.value = 2
    assert tokens_panel.shown[0] == 4  # not redrawn while hidden
    d.tabs.selected_index = TABS.index("Tokens")
    assert tokens_panel.shown == (2, 0) and "step 2" in tokens_panel.widget.layout.title.text


def test_run_without_alignment_explains_each_absent_tab():
    d = dashboard(open_run(vanilla_run()))
    assert d.tab_titles == TABS
    alignment, transport = d.tabs.children[2], d.tabs.children[3]
    assert "No alignment matrices in this run" in alignment.value and "CMA" in alignment.value
    assert "no Alignment diagnostics" in alignment.value  # the recorder's note
    assert "No transport plans" in transport.value
    for k in range(len(TABS)):
        d.tabs.selected_index = k
        d.controls.slider.value = 2
    assert _errors(d) == ""


def test_update_errors_go_to_the_output_area(tmp_path):
    path = tmp_path / "run"
    shutil.copytree(cma_run(), path)
    run = open_run(path)
    d = dashboard(run)
    d.tabs.selected_index = TABS.index("Alignment")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    run.matrix = broken
    d.controls.slider.value = 0  # must not raise
    assert "RuntimeError: disk on fire" in _errors(d)
    assert "failed to draw" in d.heatmap.layout.annotations[0].text


def test_live_dashboard_follows_a_run_being_written(tmp_path):
    rec = Recorder(tmp_path / "live", every=1, samples=1, flush_every=1)
    rec.log(0, make_batch(), make_output(0))
    d = dashboard(open_run(tmp_path / "live"))
    assert list(d.controls.slider.options) == [0]
    d.tabs.selected_index = TABS.index("Alignment")
    assert not d.poll()
    for step in (1, 2):
        rec.log(step, make_batch(), make_output(step))
    assert d.poll()
    assert list(d.controls.slider.options) == [0, 1, 2] and d.controls.slider.value == 2
    assert "step 2" in d.heatmap.layout.title.text and d.controls.play.max == 2
    rec.close()
    d.start(0.05)  # no running event loop here: a polling thread
    rec2 = Recorder(tmp_path / "live", every=1, samples=1, flush_every=1, resume=True)
    rec2.log(3, make_batch(), make_output(3))
    rec2.close()
    for _ in range(100):
        if 3 in d.controls.slider.options:
            break
        time.sleep(0.05)
    d.stop()
    assert 3 in d.controls.slider.options and _errors(d) == ""


def test_transport_tab():
    d = dashboard(open_run(ot_run()))
    assert "No alignment matrices" in d.tabs.children[TABS.index("Alignment")].value
    plan, vocab = d.tabs.children[TABS.index("Transport")].children
    assert [t.type for t in plan.data] == ["heatmap", "scatter", "heatmap"]
    assert vocab.data[0].type == "table" and "step 4" in vocab.layout.title.text
    d.tabs.selected_index = TABS.index("Transport")
    d.controls.slider.value = 2
    assert "step 2" in plan.layout.title.text and "step 2" in vocab.layout.title.text and _errors(d) == ""


def test_injected_run_name_is_escaped():
    d = dashboard(open_run(fake_run()))
    assert "&lt;script&gt;" in d.header.value and "<script>" not in d.header.value


def test_compare_side_by_side_with_results_table():
    c = compare([open_run(cma_run()), open_run(vanilla_run())])
    assert c.tab_titles == ["Overview", "Head/Tail", "Alignment", "Tokens"]
    assert "CMA" in c.results.value and "VanillaKD-AKL" in c.results.value and "<table" in c.results.value
    alignment = c.tabs.children[2]
    left, right = (box.children[1] for box in alignment.children)
    assert left.data[0].type == "heatmap" and "No alignment matrices" in right.layout.annotations[0].text
    c.tabs.selected_index = 2
    c.controls.slider.value = 0
    assert "step 0" in left.layout.title.text and _errors(c) == ""
    # one colour scale for the per-token losses of every run
    tokens = c.tabs.children[3]
    c.tabs.selected_index = 3
    scales = {box.children[1].data[0].zmax for box in tokens.children}
    assert len(scales) == 1 and None not in scales
    # deselecting a run hides its panels and takes it out of the overlaid loss terms
    first = c.shown_runs.options[0]
    c.shown_runs.value = [first]
    assert [box.layout.display for box in alignment.children] == [None, "none"]
    overview = c.tabs.children[0].children[1]
    assert overview.data and all(t.name.startswith(first) for t in overview.data if t.showlegend is not False)
    assert _errors(c) == ""


def test_playground_values_gradients_and_training():
    p = playground(vocab=16)
    assert "akl" in p.values.value and "abkd" in p.values.value
    names = [t.name for t in p.figure.data]
    assert names[:2] == ["p teacher (dark: head)", "q student"] and "grad fkl" in names
    p.mu.value = 0.8
    assert "mu 0.8" in p.figure.layout.annotations[0].text
    before = p.student.clone()
    gap_before = float(p.figure.layout.annotations[0].text.split("g_head ")[1].split(" ")[0])
    p.divergence.value, p.steps.value = "rkl", 40
    p.train(frames=4)
    assert not torch.equal(before, p.student)
    gap_after = float(p.figure.layout.annotations[0].text.split("g_head ")[1].split(" ")[0])
    assert gap_after < gap_before and "grad rkl" in [t.name for t in p.figure.data]
    p.reset()
    assert torch.equal(before, p.student) and _errors(p) == ""


def test_inspect_tokenizers_redraws_on_edit():
    w = inspect_tokenizers(unigram_tokenizer(), bpe_tokenizer(), "The café owner")
    bars = [t for t in w.figure.data if t.type == "bar"]
    assert bars and any("caf" in x for t in bars for x in t.text)
    w.text.value = "Zoë draws three apples."
    assert any("Zo" in x for t in w.figure.data if t.type == "bar" for x in t.text)
    assert _errors(w) == ""


def test_figure_view_sends_one_plotly_output_and_no_plotly_js():
    """A view is one output holding the figure's JSON for JupyterLab's plotly renderer: no plotly.js bundle
    travels with it (a FigureWidget sent ~5 MB each), and showing another figure replaces it."""
    import json

    import plotly.graph_objects as go

    view = FigureView(go.Figure(go.Bar(y=[1, 2])))
    view.show(go.Figure(go.Scatter(y=[3]), layout={"title": "new"}))
    assert [t.type for t in view.data] == ["scatter"] and view.layout.title.text == "new"
    (output,) = view.outputs
    figure = output["data"][PLOTLY_MIME]
    assert [t["type"] for t in figure["data"]] == ["scatter"] and figure["layout"]["title"]["text"] == "new"
    assert len(json.dumps(view.get_state())) < 20_000


@pytest.mark.parametrize("bad", [None, "runs/x"])
def test_dashboard_needs_a_run(bad):
    with pytest.raises(TypeError, match="open_run"):
        dashboard(bad)
