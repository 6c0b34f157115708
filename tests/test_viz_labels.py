"""Run labels are HTML-escaped exactly once in the static report and in compare()."""

from __future__ import annotations

from kdviz.record import Recorder, open_run
from kdviz.viz import compare, report
from tests.record_fakes import make_batch, make_output


def _run(path, name):
    with Recorder(path, every=1, samples=1, meta={"method": {"name": name}}) as rec:
        for step in range(2):
            rec.log(step, make_batch(), make_output(step))
    return open_run(path)


def test_run_labels_are_escaped_once(tmp_path):
    runs = [_run(tmp_path / "a", "fkl & akl"), _run(tmp_path / "b", "<b>bold</b>")]
    page = report(runs, tmp_path / "report.html").read_text()
    assert "fkl &amp; akl" in page and "&amp;amp;" not in page and "<b>bold</b>" not in page
    widget = compare(runs)
    assert "fkl &amp; akl" in widget.results.value and "&amp;amp;" not in widget.results.value
