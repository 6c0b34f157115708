"""scripts/make_data.py: the embedded splits are what it generates; ``train_mix`` changes the training split only."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kdviz import assets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def make_data():
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "scripts" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def default(make_data):
    return make_data.build(seed=0)


def test_the_embedded_splits_are_the_generated_ones(default):
    paths = assets.default_paths()
    for split in ("train", "dev", "test"):
        assert assets.load_split(getattr(paths, split)) == default[split], split
    assert json.loads((paths.root / "world.json").read_text()) == default["world"]


def test_train_mix_changes_the_training_split_only(make_data, default):
    variant = make_data.build(seed=0, train_mix=make_data.parse_mix("facts=0.08,mention=0.12"))
    assert variant["world"] == default["world"]
    assert variant["dev"] == default["dev"] and variant["test"] == default["test"]
    tasks = [row["task"] for row in variant["train"]]
    assert 0.10 < tasks.count("mention") / len(tasks) < 0.14
    assert 0.06 < tasks.count("facts") / len(tasks) < 0.10
    assert "mention" not in {row["task"] for row in default["train"] + default["dev"] + default["test"]}


def test_a_mention_has_several_right_answers_and_gives_one(make_data, default):
    people = {p["name"]: p for p in default["world"]["people"]}
    rows = make_data.build(seed=0, n_train=400, train_mix={"mention": 1.0})["train"]
    answers: dict[str, set[str]] = {}
    for row in (r for r in rows if r["task"] == "mention"):
        person = people[row["prompt"].rsplit(" about ", 1)[1].rstrip(".")]
        facts = {person["town"], make_data.article(person["job"]), make_data.article(person["pet"]), person["colour"]}
        assert row["response"] in facts
        answers.setdefault(person["name"], set()).add(row["response"])
    assert max(len(a) for a in answers.values()) >= 3  # the same question, different right answers


def test_unknown_tasks_and_bad_mixes_are_refused(make_data):
    with pytest.raises(ValueError, match="train_mix: unknown tasks \\['recipes'\\]"):
        make_data.build(seed=0, n_train=10, train_mix={"recipes": 0.1})
    with pytest.raises(ValueError, match="weights must be numbers >= 0"):
        make_data.build(seed=0, n_train=10, train_mix={"facts": -0.1})
    with pytest.raises(Exception, match="expected TASK=WEIGHT"):
        make_data.parse_mix("facts:0.1")
