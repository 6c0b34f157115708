"""The embedded default under ``data/``: a tiny pretrained teacher, two untrained students, their two
tokenizers and an instruction -> response dataset, all loaded from disk, never from the network.

- ``teacher``: GPT-2 architecture, pretrained on the training split, byte-level BPE tokenizer.
- ``student_same``: Llama architecture, randomly initialised (fixed seed), the teacher's tokenizer
  (same-vocabulary methods).
- ``student_cross``: Llama architecture, randomly initialised (fixed seed), a Unigram tokenizer with its
  own normaliser and ``▁`` marker (cross-tokenizer methods).
- ``train`` / ``dev`` / ``test``: lists of ``{"prompt", "response", "task"}`` dicts. Models see
  ``kdviz.train.format_prompt(prompt)`` followed by ``response + tokenizer.eos_token``; no BOS is used and
  neither tokenizer adds special tokens by itself.

Everything is rebuilt deterministically by ``python scripts/build_assets.py``; ``data/ASSETS.json``
records sizes, parameter counts, the teacher's scores and the build time. The data directory is the
repository's ``data/`` unless ``KDVIZ_DATA`` or the ``root`` argument points elsewhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

REBUILD_HINT = "rebuild the embedded assets with `python scripts/build_assets.py` from the repository root"


@dataclass(frozen=True)
class AssetPaths:
    """Where each embedded asset lives (cheap: nothing is read)."""

    root: Path
    teacher: Path
    student_same: Path
    student_cross: Path
    teacher_tokenizer: Path
    student_tokenizer: Path
    train: Path
    dev: Path
    test: Path
    manifest: Path


@dataclass
class Assets:
    """The loaded embedded default: models (in eval mode), tokenizers, splits and the build manifest."""

    paths: AssetPaths
    teacher: object
    student_same: object
    student_cross: object
    teacher_tokenizer: object
    student_tokenizer: object
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    manifest: dict


def default_paths(root: str | os.PathLike | None = None) -> AssetPaths:
    """Paths of the embedded assets under ``root`` (default: ``$KDVIZ_DATA`` or the repository's data/)."""
    if root is None:
        root = os.environ.get("KDVIZ_DATA") or Path(__file__).resolve().parents[1] / "data"
    root = Path(root)
    return AssetPaths(
        root=root,
        teacher=root / "models" / "teacher",
        student_same=root / "models" / "student-same",
        student_cross=root / "models" / "student-cross",
        teacher_tokenizer=root / "tokenizers" / "teacher",
        student_tokenizer=root / "tokenizers" / "student",
        train=root / "train.jsonl",
        dev=root / "dev.jsonl",
        test=root / "test.jsonl",
        manifest=root / "ASSETS.json",
    )


def _require(path: Path, what: str, inside: str | None = None) -> Path:
    target = path / inside if inside else path
    if not target.exists():
        raise FileNotFoundError(f"kdviz.assets: the {what} is missing: {target} does not exist; {REBUILD_HINT}.")
    return path


def load_split(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL split into a list of dicts."""
    path = _require(Path(path), "data split")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_tokenizer(path: str | os.PathLike):
    """A fast Hugging Face tokenizer from a local directory (never the network)."""
    from transformers import AutoTokenizer

    path = _require(Path(path), "tokenizer", "tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tokenizer.is_fast:
        raise TypeError(f"kdviz.assets: the tokenizer at {path} is not a fast tokenizer (offsets are needed).")
    return tokenizer


def load_model(path: str | os.PathLike):
    """A causal language model from a local directory (never the network), in eval mode."""
    from transformers import AutoModelForCausalLM

    path = _require(Path(path), "model", "config.json")
    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()


def load_default(root: str | os.PathLike | None = None) -> Assets:
    """Load the embedded teacher, both students, both tokenizers, the three splits and the manifest."""
    paths = default_paths(root)
    manifest = json.loads(_require(paths.manifest, "asset manifest").read_text())
    return Assets(
        paths=paths,
        teacher=load_model(paths.teacher),
        student_same=load_model(paths.student_same),
        student_cross=load_model(paths.student_cross),
        teacher_tokenizer=load_tokenizer(paths.teacher_tokenizer),
        student_tokenizer=load_tokenizer(paths.student_tokenizer),
        train=load_split(paths.train),
        dev=load_split(paths.dev),
        test=load_split(paths.test),
        manifest=manifest,
    )
