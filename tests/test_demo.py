"""`kdviz demo` end to end on a reduced budget, the toy comparison, and the CLI's errors."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from kdviz import DIVERGENCES, assets, cli, open_run
from kdviz.assets import default_paths
from kdviz.demo.run import DEMO_METHODS, default_setup, run_demo
from kdviz.demo.toy import divergence_table
from kdviz.train.loop import TrainConfig


def test_demo_runs_every_method_end_to_end(tmp_path):
    setup = default_setup()
    names = list(DEMO_METHODS)
    table = run_demo(setup, names, tmp_path, TrainConfig(steps=3, batch_size=4), eval_examples=6, every=1,
                     progress=False, log=lambda _: None)
    per_seed, summary = table[table["seed"] != "mean"], table[table["seed"] == "mean"]
    assert list(per_seed["method"]) == names and set(per_seed["seed"]) == {0}
    assert list(summary["method"]) == ["teacher", "untrained student", "untrained student", *names]
    teacher = summary.set_index("method").loc["teacher"]
    assert teacher["exact_match"] > 30  # the embedded teacher answers most test prompts
    assert (tmp_path / "results.csv").exists()
    assert "<html" in (tmp_path / "report.html").read_text()[:2000].lower()
    for name in names:
        run = open_run(tmp_path / name)
        assert run.meta["method"] == name and set(run.scalars["step"]) == {0, 1, 2}
    assert not open_run(tmp_path / "cma").matrix_steps("t2s_weight") == []


def _tiny_demo(out, seeds, names=("sft", "fkl")):
    return run_demo(default_setup(), list(names), out, TrainConfig(steps=4, batch_size=4, lr=1e-2), seeds=seeds,
                    eval_examples=8, every=2, progress=False, log=lambda _: None)


def test_seeds_give_mean_std_and_the_paired_gain_over_sft(tmp_path):
    table = _tiny_demo(tmp_path, [0, 1])
    per_seed = table[table["seed"] != "mean"].set_index(["method", "seed"])
    summary = table[table["seed"] == "mean"].set_index("method")
    for name in ("fkl",):
        gains = [per_seed.loc[(name, s), "rouge_l"] - per_seed.loc[("sft", s), "rouge_l"] for s in (0, 1)]
        assert per_seed.loc[(name, 0), "gain_rouge_l"] == pytest.approx(gains[0])
        assert summary.loc[name, "gain_rouge_l"] == pytest.approx(sum(gains) / 2)
        assert summary.loc[name, "gain_rouge_l_std"] == pytest.approx(abs(gains[0] - gains[1]) / 2 ** 0.5)
        scores = [per_seed.loc[(name, s), "rouge_l"] for s in (0, 1)]
        assert summary.loc[name, "rouge_l_std"] == pytest.approx(abs(scores[0] - scores[1]) / 2 ** 0.5)
        assert summary.loc[name, "wins"] == sum(g > 0 for g in gains) and summary.loc[name, "n_seeds"] == 2
    assert summary.loc["teacher", "n_seeds"] == 2 and pd.isna(summary.loc["sft", "gain_rouge_l"])
    saved = pd.read_csv(tmp_path / "results.csv")
    assert list(saved["seed"].astype(str)) == [str(s) for s in table["seed"]]
    assert (tmp_path / "fkl").is_dir() and (tmp_path / "seed1" / "fkl").is_dir()  # every seed is recorded
    assert open_run(tmp_path / "seed1" / "fkl").meta["config"]["seed"] == 1


def test_the_same_demo_twice_gives_the_same_numbers(tmp_path):
    first = _tiny_demo(tmp_path / "a", [3], names=("sft", "cma"))
    again = _tiny_demo(tmp_path / "b", [3], names=("cma",))  # a method alone: no state carried over from others
    assert first.loc[first["method"] == "cma", "rouge_l"].tolist() == again.loc[again["method"] == "cma",
                                                                                  "rouge_l"].tolist()
    one, two = (open_run(tmp_path / d / "cma").scalars.query("name == 'loss'") for d in ("a", "b"))
    assert len(one) == 4 and one["value"].tolist() == two["value"].tolist()


def test_bad_seeds_are_refused(capsys, tmp_path):
    with pytest.raises(ValueError, match="seeds must be distinct"):
        _tiny_demo(tmp_path, [1, 1])
    with pytest.raises(ValueError, match="non-empty list of integers"):
        _tiny_demo(tmp_path, [])
    capsys.readouterr()  # the models' loading messages
    err = _user_error(capsys, ["demo", "--seeds", "0"])
    assert "--seeds must be at least 1, got 0" in err


def test_the_printed_table_has_mean_std_and_the_paired_gain():
    table = pd.DataFrame({
        "method": ["teacher", "sft", "fkl"], "pair": ["-", "same", "same"], "seed": ["mean"] * 3,
        "rouge_l": [70.0, 30.0, 33.0], "rouge_l_std": [0.0, 1.0, 0.5], "exact_match": [60.0, 10.0, 12.0],
        "exact_match_std": [0.0, 1.0, 1.0], "gain_rouge_l": [float("nan"), float("nan"), 3.0],
        "gain_rouge_l_std": [float("nan"), float("nan"), 0.3], "wins": [float("nan"), float("nan"), 3],
        "n_seeds": [3, 3, 3], "train_s": [float("nan"), 10.0, 20.0]})
    text = cli.format_results(table)
    assert "mean ± std over 3 seeds" in text and "33.0 ± 0.5" in text and "3.0 ± 0.3" in text and "3/3" in text


def test_the_demo_uses_its_documented_settings():
    setup = default_setup()

    def build(name):
        student, tokenizer = setup.students[DEMO_METHODS[name].pair]
        return DEMO_METHODS[name].build(student, setup.teacher, tokenizer, setup.teacher_tokenizer)

    assert build("dskd").tau == 1.0 and build("cma").tau == 1.0 and build("fkl").tau == 1.0
    uld = build("uld")
    assert (uld.ce_weight, uld.kd_weight, uld.positions, uld.kd_normaliser) == (1.0, 0.1, "shift", "student")
    akl, mined = build("akl"), build("mined")
    assert (akl.divergence, akl.ce_weight, akl.kd_weight) == ("akl", 1.0, 0.25)
    assert (mined.ce_weight, mined.kd_weight, mined.tau) == (1.0, 0.1, 2.0)


def test_train_examples_keeps_the_first_examples_for_every_method(tmp_path, capsys):
    full = default_setup()
    few = default_setup(train_examples=5)
    assert few.train == full.train[:5]
    run_demo(few, ["sft"], tmp_path, TrainConfig(steps=1, batch_size=4), eval_examples=2, progress=False,
             log=lambda _: None)
    assert open_run(tmp_path / "sft").meta["train_examples"] == 5
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="train_examples must be a positive integer"):
            default_setup(train_examples=bad)
    with pytest.raises(ValueError, match=f"train_examples must be at most {len(full.train)}"):
        default_setup(train_examples=len(full.train) + 1)
    capsys.readouterr()
    assert "--train-examples must be at least 1, got 0" in _user_error(capsys, ["demo", "--train-examples", "0"])
    err = _user_error(capsys, ["demo", "--train-examples", str(len(full.train) + 1), "--steps", "1"])
    assert f"train_examples must be at most {len(full.train)}" in err


def test_toy_comparison_prints_every_divergence(capsys):
    cli.main(["toy"])
    printed = capsys.readouterr().out
    for name in [*DIVERGENCES, "w_head", "tail right, head flat"]:
        assert name in printed
    table = divergence_table()
    assert (table.loc["equal to the teacher", list(DIVERGENCES)].abs() < 1e-6).all()
    # FKL punishes a wrong head harder than RKL does; the tail-right student is close under both
    assert table.loc["peak shifted by 8 classes", "fkl"] > table.loc["peak shifted by 8 classes", "rkl"]


def _user_error(capsys, argv):
    """Run the CLI; it must exit 2 with exactly one line on stderr (returned)."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cli_user_errors_are_one_line_and_exit_2(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8\n")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "meta.json").write_text("{not json")
    cases = {
        ("demo", "--methods", "fkl", "bogus"): "unknown demo method",
        ("demo", "--steps", "-1"): "--steps must be at least 1, got -1",
        ("demo", "--steps", "0"): "--steps must be at least 1, got 0",
        ("demo", "--lr", "nan"): "--lr must be a finite number > 0, got nan",
        ("demo", "--lr", "inf"): "--lr must be a finite number",
        ("demo", "--batch-size", "0"): "--batch-size must be at least 1",
        ("demo", "--method-lr", "nan"): "--method-lr must be a finite number > 0, got nan",
        ("demo", "--seeds", "-2"): "--seeds must be at least 1, got -2",
        ("demo", "--student", "/nonexistent/model/path", "--steps", "1"): "cannot load the tokenizer",
        ("report", str(tmp_path / "missing")): "no run directory at",
        ("report", str(tmp_path / "empty")): "is not a kdviz run",
        ("report", str(tmp_path / "bad.txt")): "is a file, not a run directory",
        ("report", str(tmp_path / "damaged")): "meta.json is damaged",
        ("inspect", "--texts", str(tmp_path / "missing.txt")): "No such file",
        ("inspect", "--texts", str(tmp_path / "bad.txt")): "is not UTF-8 text",
        ("inspect", "--student", "./no/such/dir"): "does not exist",
        ("inspect", "--limit", "0"): "--limit must be at least 1",
        ("toy", "--mu", "nan"): "--mu must be strictly between 0 and 1",
        ("toy", "--mu", "1.5"): "--mu must be strictly between 0 and 1",
    }
    for argv, message in cases.items():
        err = _user_error(capsys, list(argv))
        assert message in err and err.startswith(f"kdviz {argv[0]}: error: "), (argv, err)


def test_an_uncached_hub_id_fails_fast_offline(capsys, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    err = _user_error(capsys, ["inspect", "--student", "nobody/kdviz-no-such-model"])
    assert "HF_HUB_OFFLINE is set" in err and "hf download nobody/kdviz-no-such-model" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(assets, "_unreachable_hub", lambda: "huggingface.co")
    err = _user_error(capsys, ["demo", "--teacher", "nobody/kdviz-no-such-model"])
    assert "huggingface.co cannot be reached" in err and "or pass a local directory" in err
    assert time.perf_counter() - start < 10


def test_demo_steps_are_taken_as_given(monkeypatch, capsys):
    from kdviz.demo import run as demo

    configs = []

    def run_demo(setup, names, out, config, **kwargs):
        configs.append(config)
        return pd.DataFrame({"method": names, "pair": "same", "seed": "mean", "rouge_l": 1.0, "rouge_l_std": 0.0,
                             "exact_match": 0.0, "exact_match_std": 0.0, "gain_rouge_l": 0.0,
                             "gain_rouge_l_std": 0.0, "wins": 1, "n_seeds": 1, "train_s": 1.0})

    monkeypatch.setattr(demo, "run_demo", run_demo)
    monkeypatch.setattr(demo, "default_setup", lambda *names, **options: SimpleNamespace(train=[]))
    cli.main(["demo", "--steps", "7", "--methods", "fkl"])
    cli.main(["demo", "--quick", "--methods", "fkl"])
    assert [c.steps for c in configs] == [7, cli.QUICK["steps"]]
    assert configs[0].method_lr == configs[0].lr  # the projectors learn at the student's rate by default
    cli.main(["demo", "--methods", "fkl", "--lr", "0.01", "--method-lr", "0.002"])
    assert (configs[-1].lr, configs[-1].method_lr) == (0.01, 0.002)
    with pytest.raises(FileNotFoundError, match="cannot load the tokenizer"):
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
