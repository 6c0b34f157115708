"""Static HTML reports: self-contained, client-side step sliders, token text escaped."""

from __future__ import annotations

import pytest

from kdviz.record import open_run
from kdviz.viz import report
from kdviz.viz.report import pick_steps
from tests.viz_runs import INJECTED, cma_run, fake_run, ot_run, vanilla_run


def test_report_is_self_contained_with_step_sliders(tmp_path):
    runs = [open_run(cma_run()), open_run(vanilla_run()), open_run(ot_run())]
    path = report(runs, tmp_path / "r.html", title="three runs")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>three runs</title>" in html
    head, body = html.split("</head>", 1)
    assert len(head) > 3_000_000 and "<script src" not in body  # plotly.js inlined once, no network
    assert html.count("Plotly.newPlot(") >= 8 and "Plotly.addFrames" in html
    assert "<table" in html and "CMA" in html and "VanillaKD-AKL" in html
    assert '"currentvalue":{"prefix":"step "}' in html
    assert html.count('"label":"0"') >= 3 and html.count('"label":"4"') >= 3  # alignment, tokens, head/tail
    assert "transport plan" in html and "top-k vocabulary map" in html
    assert "no t2s_weight / s2t_weight / pairing diagnostics" in html  # the vanilla run's absent alignment is explained


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
