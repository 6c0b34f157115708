"""Draw the README's picture, ``docs/alignment.png``: CMA's cross-model attention on the embedded default
after a short recorded run (as in notebook 02), rendered by kdviz's figure in Chromium.

Usage: ``python scripts/readme_picture.py`` (about half a minute; needs Debian's ``chromium``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

import kdviz
import kdviz.viz
from kdviz.demo.cma_example import record_cma_example

OUT = Path(__file__).resolve().parents[1] / "docs" / "alignment.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = record_cma_example(f"{tmp}/cma")
        fig = kdviz.viz.alignment_heatmap(run.matrix("t2s_weight", sample=0))
        fig.update_layout(width=900, height=640, margin={"l": 40, "r": 40, "t": 70, "b": 40})
        page_path = Path(tmp) / "figure.html"
        fig.write_html(page_path, include_plotlyjs=True, full_html=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"])
            page = browser.new_page(viewport={"width": 940, "height": 700}, device_scale_factor=1.5)
            page.goto(page_path.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg")
            OUT.parent.mkdir(exist_ok=True)
            page.locator(".js-plotly-plot").first.screenshot(path=str(OUT))
            browser.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
