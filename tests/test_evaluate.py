"""Evaluation: exact match and ROUGE-L on hand-made cases, batched generation, sampling over seeds."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest
from rouge_score import rouge_scorer

from kdviz.assets import default_paths, load_model, load_tokenizer
from kdviz.train import evaluate, exact_match, format_prompt, generate, rouge_l


@pytest.fixture(scope="module")
def teacher():
    paths = default_paths()
    return load_model(paths.teacher), load_tokenizer(paths.teacher)


def test_exact_match_strips_whitespace_only():
    assert exact_match(" 81 \n", "81") == 100.0
    assert exact_match("81.", "81") == 0.0
    assert exact_match("Eighty-one", "eighty-one") == 0.0
    assert exact_match("two pears", ["a pear", "two pears"]) == 100.0


def test_rouge_l_identical_partial_and_stemmed():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    # LCS 5 of 5 predicted and 6 reference tokens: P = 1, R = 5/6, F = 10/11.
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(1000 / 11)
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(
        "Mira Tolsen is a baker from Varno.", "Mira is a baker in Varno")["rougeL"].fmeasure * 100
    assert rouge_l("Mira is a baker in Varno", "Mira Tolsen is a baker from Varno.") == pytest.approx(expected)
    assert rouge_l("cats running", "cat runs") == pytest.approx(100.0)  # stemming
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("red fox", ["blue sky", "red fox"]) == pytest.approx(100.0)  # max over references


def test_format_prompt_ends_on_a_newline_boundary():
    assert format_prompt("What is 2 plus 2?") == "Instruction: What is 2 plus 2?\nResponse:\n"


def test_evaluate_scores_hand_made_predictions(monkeypatch, teacher):
    model, tokenizer = teacher
    # generation is replaced by fixed answers, so the scoring path is checked exactly
    answers = {"p1": "81", "p2": "the cat on the mat", "p3": "wrong"}
    module = importlib.import_module("kdviz.train.evaluate")  # the package re-exports a function of that name
    monkeypatch.setattr(module, "generate", lambda m, t, prompts, **kw: [answers[p] for p in prompts])
    examples = [{"prompt": "p1", "response": "81", "task": "a"},
                {"prompt": "p2", "response": "the cat sat on the mat", "task": "b"},
                {"prompt": "p3", "response": "right", "task": "b"}]
    summary, frame = evaluate(model, tokenizer, examples, progress=False)
    assert frame["exact_match"].tolist() == [100.0, 0.0, 0.0]
    assert frame["rouge_l"].tolist() == pytest.approx([100.0, 1000 / 11, 0.0])
    assert summary["exact_match"] == pytest.approx(100 / 3)
    assert summary["rouge_l"] == pytest.approx((100 + 1000 / 11) / 3)
    assert summary["by_task"]["b"]["exact_match"] == 0.0
    assert summary["n"] == 3 and summary["greedy"] and summary["exact_match_std"] == 0.0


def test_batched_left_padded_greedy_matches_one_by_one(teacher):
    model, tokenizer = teacher
    prompts = ["What is 7 plus 5?", "Reverse the words: river wind red fox bird",
               "Convert 3 hours to minutes.", "Count the items: fig, pear, plum."]
    batched = generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=12, progress=False)
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=12, progress=False)[0]
              for p in prompts]
    assert batched == single
    assert model.training is False


def test_sampling_averages_over_seeds_and_is_reproducible(teacher):
    model, tokenizer = teacher
    examples = pd.DataFrame([{"prompt": "What is 7 plus 5?", "response": "12"},
                             {"prompt": "Describe the town Saloni.", "response": "Saloni is an old town."}])
    summary, frame = evaluate(model, tokenizer, examples, greedy=False, seeds=(0, 1, 2), max_new_tokens=16,
                              progress=False)
    again, frame_again = evaluate(model, tokenizer, examples, greedy=False, seeds=(0, 1, 2),
                                  max_new_tokens=16, progress=False)
    assert len(frame) == 6 and sorted(frame["seed"].unique()) == [0, 1, 2]
    assert "task" not in frame.columns
    assert frame["prediction"].tolist() == frame_again["prediction"].tolist()
    assert summary["seeds"] == [0, 1, 2] and not summary["greedy"]
    assert summary["exact_match"] == pytest.approx(frame["exact_match"].mean())


def test_bad_examples_are_named(teacher):
    model, tokenizer = teacher
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match="example 0 has keys"):
        evaluate(model, tokenizer, [{"question": "x"}], progress=False)
    with pytest.raises(ValueError, match="at least one seed"):
        evaluate(model, tokenizer, [{"prompt": "x", "response": "y"}], greedy=False, seeds=(), progress=False)
