"""`kdviz demo` end to end on a reduced budget, the toy comparison, and the CLI's errors."""

from __future__ import annotations

import pytest

from kdviz import cli, open_run
from kdviz.assets import default_paths
from kdviz.train.demo import DEMO_METHODS, default_setup, run_demo
from kdviz.train.loop import TrainConfig


def test_demo_runs_every_method_end_to_end(tmp_path):
    setup = default_setup()
    names = list(DEMO_METHODS)
    table = run_demo(setup, names, tmp_path, TrainConfig(steps=3, batch_size=4), eval_examples=6, every=1,
                     progress=False, log=lambda _: None)
    assert list(table["method"]) == ["teacher", "untrained student", "untrained student", *names]
    teacher = table.set_index("method").loc["teacher"]
    assert teacher["exact_match"] > 30  # the embedded teacher answers most test prompts
    assert (tmp_path / "results.csv").exists()
    assert "<html" in (tmp_path / "report.html").read_text()[:2000].lower()
    for name in names:
        run = open_run(tmp_path / name)
        assert run.meta["method"] == name and set(run.scalars["step"]) == {0, 1, 2}
    assert not open_run(tmp_path / "cma").matrix_steps("t2s_weight") == []


def test_toy_comparison_prints_every_divergence(capsys):
    cli.main(["toy"])
    printed = capsys.readouterr().out
    for name in ("fkl", "rkl", "akl", "abkd", "w_head", "tail right, head flat"):
        assert name in printed
    table = cli.divergence_table()
    assert (table.loc["equal to the teacher"].abs() < 1e-6).iloc[:10].all()
    # FKL punishes a wrong head harder than RKL does; the tail-right student is close under both
    assert table.loc["peak shifted by 8 classes", "fkl"] > table.loc["peak shifted by 8 classes", "rkl"]


def test_cli_errors(capsys):
    with pytest.raises(ValueError, match="unknown demo method"):
        cli.main(["demo", "--methods", "fkl", "nope", "--steps", "1"])
    with pytest.raises(SystemExit):
        cli.main(["toy", "--mu", "1.5"])
    with pytest.raises(FileNotFoundError, match="cannot load the model"):
        default_setup(student="/nonexistent/model/path")


def test_inspect_compares_the_tokenizers(capsys, tmp_path):
    cli.main(["inspect", "--limit", "5"])
    out = capsys.readouterr().out
    assert "on 5 texts" in out and "TokenizerReport" in out and "one_to_one_rate" in out
    texts = tmp_path / "texts.txt"
    texts.write_text("The naïve café owner waits.\n\nTwo plus two is four.\n", encoding="utf-8")
    cli.main(["inspect", "--texts", str(texts), "--teacher", str(default_paths().student_tokenizer)])
    out = capsys.readouterr().out
    assert "on 2 texts" in out and "one_to_one_rate: 1.0" in out  # a tokenizer against itself
    with pytest.raises(SystemExit):
        cli.main(["inspect", "--limit", "0"])


def test_lab_starts_jupyterlab_on_the_notebooks(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("os.execv", lambda path, argv: calls.append(argv))
    cli.main(["lab"])
    assert calls[0][1:3] == ["-m", "jupyterlab"] and calls[0][3].endswith("notebooks")
    with pytest.raises(SystemExit, match="not a directory"):
        cli.main(["lab", str(tmp_path / "missing")])
