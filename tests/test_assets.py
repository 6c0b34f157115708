"""The embedded default: loads offline, the teacher answers at its recorded level, the tokenizers differ."""

from __future__ import annotations

import json

import pytest
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from kdviz import assets
from kdviz.align import compare_tokenizers
from kdviz.train import evaluate, format_prompt

MB = 1024 * 1024


@pytest.fixture(scope="module")
def loaded():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield assets.load_default()
    mp.undo()


def test_default_paths_are_cheap_and_complete():
    paths = assets.default_paths()
    assert paths.teacher == paths.root / "models" / "teacher"
    for path in (paths.teacher, paths.student_same, paths.student_cross, paths.teacher_tokenizer,
                 paths.student_tokenizer, paths.train, paths.dev, paths.test, paths.manifest):
        assert path.exists(), path


def test_default_paths_follow_root_and_environment(tmp_path, monkeypatch):
    assert assets.default_paths(tmp_path).dev == tmp_path / "dev.jsonl"
    monkeypatch.setenv("KDVIZ_DATA", str(tmp_path))
    assert assets.default_paths().manifest == tmp_path / "ASSETS.json"


def test_load_default_models_tokenizers_and_splits(loaded):
    assert isinstance(loaded.teacher, GPT2LMHeadModel)
    assert isinstance(loaded.student_same, LlamaForCausalLM)
    assert isinstance(loaded.student_cross, LlamaForCausalLM)
    assert not loaded.teacher.training
    assert loaded.student_same.config.vocab_size == len(loaded.teacher_tokenizer)
    assert loaded.student_cross.config.vocab_size == len(loaded.student_tokenizer)
    teacher_params = loaded.teacher.num_parameters()
    for student in (loaded.student_same, loaded.student_cross):
        assert 5 <= teacher_params / student.num_parameters() <= 10
    assert [len(loaded.train), len(loaded.dev), len(loaded.test)] == [20000, 500, 500]
    assert set(loaded.dev[0]) == {"prompt", "response", "task"}
    assert loaded.manifest["splits"] == {"train": 20000, "dev": 500, "test": 500}


def test_data_directory_stays_small():
    paths = assets.default_paths()
    total = sum(f.stat().st_size for f in paths.root.rglob("*") if f.is_file())
    assert total < 60 * MB


def test_teacher_dev_exact_match_at_recorded_level(loaded):
    recorded = loaded.manifest["teacher_scores"]["dev_subset"]
    subset = loaded.dev[: recorded["first"]]
    summary, _ = evaluate(loaded.teacher, loaded.teacher_tokenizer, subset, batch_size=50, progress=False)
    assert summary["exact_match"] == pytest.approx(recorded["exact_match"], abs=2.0)
    assert summary["rouge_l"] == pytest.approx(recorded["rouge_l"], abs=2.0)


def test_tokenizers_are_fast_with_offsets_and_explicit_specials(loaded):
    text = format_prompt("Describe the town Saloni.") + "Saloni is an old town."
    for tok in (loaded.teacher_tokenizer, loaded.student_tokenizer):
        assert tok.is_fast
        enc = tok(text, return_offsets_mapping=True)
        assert len(enc["offset_mapping"]) == len(enc["input_ids"])
        assert tok.decode(enc["input_ids"]) == text  # nothing added, lossless
        assert len({tok.eos_token_id, tok.pad_token_id}) == 2 and tok.bos_token_id is not None
    assert loaded.teacher_tokenizer.eos_token == "<|endoftext|>"
    assert loaded.student_tokenizer.eos_token == "</s>"


def test_prompt_ids_are_a_prefix_of_the_training_text(loaded):
    for tok in (loaded.teacher_tokenizer, loaded.student_tokenizer):
        for row in loaded.dev[:50]:
            prompt = tok(format_prompt(row["prompt"]))["input_ids"]
            full = tok(format_prompt(row["prompt"]) + row["response"] + tok.eos_token)["input_ids"]
            assert full[: len(prompt)] == prompt and full[-1] == tok.eos_token_id


def test_tokenizers_split_text_differently(loaded):
    texts = [format_prompt(r["prompt"]) + r["response"] for r in loaded.dev[:100]]
    report = compare_tokenizers(loaded.student_tokenizer, loaded.teacher_tokenizer, texts)
    regions = report.summary["regions"]
    total = sum(regions.values())
    assert regions["one-to-one"] > 0.3 * total
    assert regions["many-to-one"] > 0.3 * total  # the student splits what the teacher keeps whole (words)
    assert regions["one-to-many"] > 0.02 * total  # the student keeps whole what the teacher splits (numbers)


def test_missing_paths_name_the_path_and_the_rebuild_command(tmp_path):
    missing = tmp_path / "no-model"
    with pytest.raises(FileNotFoundError, match="the model .* does not exist") as err:
        assets.load_model(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        assets.load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="ASSETS.json"):
        assets.load_default(tmp_path)
    (tmp_path / "ASSETS.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError, match="models/teacher"):
        assets.load_default(tmp_path)
