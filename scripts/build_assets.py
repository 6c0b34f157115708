"""Rebuild every embedded asset under ``data/`` deterministically and record them in ``data/ASSETS.json``.

Stages, in order: ``data`` (scripts/make_data.py), ``tokenizers`` (scripts/train_tokenizers.py),
``teacher`` (scripts/train_teacher.py, the long one: about 15-25 minutes on 2 shared CPU cores) and
``students`` (Llama configurations, randomly initialised with a fixed seed). The manifest is written last:
split sizes, vocabulary sizes, parameter counts, the teacher's greedy scores on dev and test (and on the
first ``REFERENCE_SUBSET`` dev examples, the reference of the regression test), sizes on disk and the time
of each stage. ``--stages`` reruns a subset; the timings of stages not rerun are kept from the manifest.

Usage: ``python scripts/build_assets.py [--stages data,tokenizers,teacher,students]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import make_data
import tokenizers
import torch
import train_teacher
import train_tokenizers
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from kdviz.assets import default_paths, load_model, load_split, load_tokenizer
from kdviz.train.evaluate import evaluate

STAGES = ("data", "tokenizers", "teacher", "students")
SEED = 0
REFERENCE_SUBSET = 200
STUDENT_CONFIG = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128,
                  "tie_word_embeddings": True}


def build_student(tokenizer_dir: Path, out: Path, seed: int = SEED) -> None:
    """Save a randomly initialised Llama student (and its tokenizer) to ``out``."""
    tokenizer = load_tokenizer(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **STUDENT_CONFIG)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def scores(summary: dict) -> dict:
    keys = ("exact_match", "rouge_l", "n", "by_task")
    return {k: summary[k] for k in keys if k in summary}


def manifest(paths, seconds: dict[str, float]) -> dict:
    """Describe the built assets (evaluates the teacher greedily on dev and test)."""
    teacher_tok, student_tok = load_tokenizer(paths.teacher_tokenizer), load_tokenizer(paths.student_tokenizer)
    models = {}
    for name, path in (("teacher", paths.teacher), ("student-same", paths.student_same),
                       ("student-cross", paths.student_cross)):
        model = load_model(path)
        models[name] = {"architecture": type(model).__name__, "parameters": model.num_parameters(),
                        "vocab_size": model.config.vocab_size, "bytes": directory_bytes(path)}
    teacher = load_model(paths.teacher)
    dev, test = load_split(paths.dev), load_split(paths.test)
    dev_summary, _ = evaluate(teacher, teacher_tok, dev, batch_size=50)
    test_summary, _ = evaluate(teacher, teacher_tok, test, batch_size=50)
    subset_summary, _ = evaluate(teacher, teacher_tok, dev[:REFERENCE_SUBSET], batch_size=50)
    splits = {s: len(load_split(getattr(paths, s))) for s in ("train", "dev", "test")}
    return {
        "seed": SEED,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "splits": splits,
        "tokenizers": {"teacher": {"kind": "byte-level BPE", "vocab_size": len(teacher_tok)},
                       "student": {"kind": "Unigram + metaspace", "vocab_size": len(student_tok)}},
        "models": models,
        "teacher_training": json.loads((paths.teacher / "training.json").read_text()),
        "teacher_scores": {"decoding": "greedy", "dev": scores(dev_summary), "test": scores(test_summary),
                           "dev_subset": {"first": REFERENCE_SUBSET, **scores(subset_summary)}},
        "build_seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; valid stages: {', '.join(STAGES)}")
    paths = default_paths()
    previous = json.loads(paths.manifest.read_text()) if paths.manifest.exists() else {}
    seconds = {k: v for k, v in previous.get("build_seconds", {}).items() if k in STAGES}
    for stage in (s for s in STAGES if s in stages):
        start = time.perf_counter()
        print(f"== {stage}")
        if stage == "data":
            make_data.write(paths.root, make_data.build(seed=SEED))
        elif stage == "tokenizers":
            print(train_tokenizers.build(paths.root, paths.root / "tokenizers"))
        elif stage == "teacher":
            train_teacher.train(paths.root, paths.teacher_tokenizer, paths.teacher, seed=SEED)
        else:
            build_student(paths.teacher_tokenizer, paths.student_same)
            build_student(paths.student_tokenizer, paths.student_cross)
        seconds[stage] = round(time.perf_counter() - start, 1)
        print(f"   {stage}: {seconds[stage]:.1f} s")
    record = manifest(paths, seconds)
    record["data_bytes"] = directory_bytes(paths.root) - (paths.manifest.stat().st_size
                                                          if paths.manifest.exists() else 0)
    paths.manifest.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("teacher_scores", "build_seconds", "data_bytes")}, indent=1))


if __name__ == "__main__":
    main()
