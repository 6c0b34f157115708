"""Static HTML reports: self-contained, client-side step sliders, token text escaped."""

from __future__ import annotations

import json

import pytest

from kdviz.record import open_run
from kdviz.viz import figures, report
from kdviz.viz.report import pick_steps
from tests.viz_runs import INJECTED, cma_run, fake_run, ot_run, uld_run, vanilla_run


def _views(html: str) -> list[tuple[str, list[dict]]]:
    """(data-view, [{"step", "figure"}, ...]) of every stepped view in a report."""
    out = []
    for chunk in html.split("<div class='kdviz-stepped'")[1:]:
        name = chunk.split("data-view='", 1)[1].split("'", 1)[0]
        payload = chunk.split("<script type='application/json'>", 1)[1].split("</script>", 1)[0]
        out.append((name, json.loads(payload)))
    return out


def test_report_is_self_contained_with_step_sliders(tmp_path):
    runs = [open_run(cma_run()), open_run(vanilla_run()), open_run(ot_run()), open_run(uld_run())]
    path = report(runs, tmp_path / "r.html", title="four runs")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>four runs</title>" in html
    head, body = html.split("</head>", 1)
    assert len(head) > 3_000_000 and "<script src" not in body  # plotly.js inlined once, no network
    assert "<table" in html and "CMA" in html and "VanillaKD-AKL" in html
    assert "transport plan" in html and "top-k vocabulary map" in html
    assert "no Alignment diagnostics" in html  # vanilla: why no alignment
    views = _views(html)
    names = [name for name, _ in views]
    # CMA: both attentions, KD per token, head/tail; VanillaKD: KD per token, head/tail; OT: plan, HAD per token;
    # ULD: its pairing is an alignment
    assert names.count("t2s_weight") == 1 and names.count("s2t_weight") == 1 and names.count("pairing") == 1
    assert "transport_plan" in names and "token_had" in names and names.count("head_tail") >= 2
    assert "alignment: not recorded" not in html
    for name, frames in views:
        assert [f["step"] for f in frames] == sorted(f["step"] for f in frames)
        for entry in frames:
            assert entry["figure"]["data"], (name, entry["step"])  # every step has traces


def test_every_step_of_a_stepped_view_carries_its_own_matrix(tmp_path):
    """The old report reused the last step's axes for every frame: a step whose matrix has another shape was
    cropped. Each step now carries the whole matrix it recorded."""
    run = open_run(cma_run())
    views = dict(_views(report(run, tmp_path / "r.html").read_text()))
    shapes = set()
    for entry in views["t2s_weight"]:
        heatmap = entry["figure"]["data"][0]
        shape = figures.matrix_view(run.matrix("t2s_weight", entry["step"], 0)).shape
        assert (len(heatmap["y"]), len(heatmap["x"])) == shape
        shapes.add(shape)
    assert len(shapes) > 1  # the fixture's steps really differ in shape


def test_injected_tokens_are_escaped(tmp_path):
    html = report(open_run(fake_run()), tmp_path / "r.html").read_text()
    for raw in INJECTED:
        assert raw not in html
    assert "<img" not in html
    body = html.split("</head>", 1)[1]
    assert "<script>alert" not in body and "onerror=alert(1)>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body or "\\u0026lt;img src=x onerror=alert(1)\\u0026gt;" in body


def test_pick_steps():
    assert pick_steps(range(5), 10) == [0, 1, 2, 3, 4]
    picked = pick_steps(list(range(0, 1000, 10)), 5)
    assert picked[0] == 0 and picked[-1] == 990 and len(picked) == 5


def test_report_command_line(tmp_path, capsys):
    from kdviz import cli

    out = tmp_path / "two.html"
    cli.main(["report", str(cma_run()), str(vanilla_run()), "-o", str(out), "--title", "from the CLI"])
    html = out.read_text()
    assert "<title>from the CLI</title>" in html and "CMA" in html and "VanillaKD-AKL" in html
    assert str(out) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["report", str(cma_run()), "--max-steps", "0"])


def test_report_command_line_rejects_a_directory_that_is_not_a_run(tmp_path, capsys):
    from kdviz import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert stopped.value.code == 2 and str(tmp_path) in capsys.readouterr().err
