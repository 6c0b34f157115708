"""What a person waits for in JupyterLab: the dashboard's first render, and the bytes sent to the browser.

A CMA run is recorded as in notebook 02 (:func:`kdviz.demo.cma_example.record_cma_example`: the embedded
default, 24 steps, every 3, 2 samples). A notebook in
a real JupyterLab (Chromium, driven by Playwright) then opens it, and two cells are timed separately, each
from the moment it is sent to the kernel until every plot it shows is drawn with its traces:

- kdviz: ``kdviz.viz.dashboard(run)`` (figures in Output widgets, drawn by JupyterLab's plotly renderer);
- baseline: the dashboard's figures (every tab's, as the dashboard builds them all), each in a
  ``plotly.graph_objects.FigureWidget`` (what the dashboard used before: an anywidget per figure), in one
  column, so all are drawn at once.

Both cells run once first (imports, caches), then each is timed. Printed: each first-render time and the
websocket bytes received by the page while it ran, and the ratios kdviz / baseline. Run on an idle machine;
``--quick`` records 6 steps (a smoke test of the harness).

    python benchmarks/bench_dashboard_browser.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared browser harness lives in tests/

from playwright.sync_api import sync_playwright  # noqa: E402

from kdviz.demo.cma_example import record_cma_example  # noqa: E402
from tests.browser import ARGS, CHROMIUM, jupyterlab, new_page, open_notebook, run_all  # noqa: E402

SETUP = """import plotly.graph_objects as go, ipywidgets as widgets
import kdviz, kdviz.viz
run = kdviz.open_run({path!r})
kdviz.viz.dashboard(run);  # warm-up: imports and plotly templates, not shown"""
KDVIZ = "dash = kdviz.viz.dashboard(run)\ndash"
BASELINE = "widgets.VBox([go.FigureWidget(p.widget.figure) for p in dash.panels])"
# plots drawn with traces inside the output of the code cell at INDEX of the notebook NAME
DRAWN = """([NAME, INDEX]) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === NAME);
  const cell = panel.content.widgets.filter(c => c.model.type === 'code')[INDEX];
  const plots = Array.from(cell.node.querySelectorAll('.js-plotly-plot'))
    .filter(p => p.offsetParent !== null && p.querySelector('.main-svg') && (p.data || []).length > 0);
  return plots.length;
}"""
RUN_CELL = """([NAME, INDEX]) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === NAME);
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  panel.content.activeCellIndex = panel.content.widgets.indexOf(cells[INDEX]);
  window.jupyterapp.commands.execute('notebook:run-cell');
}"""


def notebook(cells: list[str]) -> dict:
    code = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": c} for c in cells]
    return {"cells": code, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
            "nbformat": 4, "nbformat_minor": 5}


def time_cell(page, name: str, index: int, received: list[int], expected: int | None) -> tuple[float, int, int]:
    """Run code cell ``index``; seconds until its plots are drawn (all ``expected``, or as many as stay drawn
    for a second), websocket bytes received meanwhile, plots drawn."""
    received.clear()
    start = time.perf_counter()
    page.evaluate(RUN_CELL, [name, index])
    if expected is not None:
        page.wait_for_function(f"(a) => ({DRAWN})(a) >= {expected}", arg=[name, index], timeout=300_000, polling=50)
        return time.perf_counter() - start, sum(received), expected
    page.wait_for_function(f"(a) => ({DRAWN})(a) > 0", arg=[name, index], timeout=300_000, polling=50)
    while True:  # the dashboard shows its first tab: done when the count of drawn plots stops growing
        count, took = page.evaluate(DRAWN, [name, index]), time.perf_counter() - start
        page.wait_for_timeout(1000)
        if page.evaluate(DRAWN, [name, index]) == count:
            return took, sum(received), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="record 6 steps instead of 24")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record_cma_example(tmp / "run", 6 if args.quick else 24)
        (tmp / "lab").mkdir()
        name = "bench_dashboard.ipynb"
        cells = [SETUP.format(path=str(tmp / "run")), KDVIZ, BASELINE]
        (tmp / "lab" / name).write_text(json.dumps(notebook(cells)))
        with jupyterlab(tmp / "lab", tmp / "settings") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            errors: list[str] = []
            page = new_page(browser, errors)
            received: list[int] = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(len(frame))))
            open_notebook(page, url, name)
            run_all(page, name, 300_000)  # setup and a first pass of both cells: imports and caches warm
            kd_time, kd_bytes, plots = time_cell(page, name, 1, received, None)
            base_time, base_bytes, panels = time_cell(page, name, 2, received, None)
            browser.close()
    print(f"dashboard of the notebook-02 run: {plots} plots on its first tab; baseline draws all {panels} figures")
    print(f"kdviz    first render {kd_time:6.2f} s   websocket {kd_bytes / 1e6:7.2f} MB")
    print(f"baseline first render {base_time:6.2f} s   websocket {base_bytes / 1e6:7.2f} MB   (a FigureWidget each)")
    print(f"ratio kdviz / baseline: time {kd_time / base_time:.2f}, bytes {kd_bytes / base_bytes:.3f}")
    if errors:
        print("page errors:", *errors[:5], sep="\n  ")


if __name__ == "__main__":
    main()
