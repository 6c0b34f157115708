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

:func:`load_model` and :func:`load_tokenizer` are kdviz's one loader, for the embedded assets and for any local
directory or Hugging Face id (:func:`from_pretrained`: the network only for a hub id missing from the local cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

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


def from_pretrained(loader: Callable, name: str | os.PathLike, what: str):
    """``loader.from_pretrained`` of a local directory or a Hugging Face id, failing fast without network.

    A directory is read with ``local_files_only=True``. A hub id is looked up in the local Hugging Face cache
    first; when it is not there and the hub is offline (``HF_HUB_OFFLINE``) or cannot be reached within
    seconds, the error says what to do. ``what`` names the object in errors ("model", "tokenizer").
    """
    name = str(name)
    path = Path(name).expanduser()
    if path.exists():
        try:
            return loader.from_pretrained(str(path), local_files_only=True)
        except OSError as err:
            raise FileNotFoundError(f"cannot load the {what} from the directory {path}: {err}") from err
    if name.startswith(("/", "./", "../", "~")) or path.is_absolute():
        raise FileNotFoundError(f"cannot load the {what} {name!r}: the directory {path} does not exist")
    try:
        return loader.from_pretrained(name, local_files_only=True)  # the local cache: no network
    except OSError:
        pass
    todo = (f"download it where there is network (`hf download {name}`) and copy the Hugging Face cache, "
            "or pass a local directory")
    if _hub_offline():
        raise FileNotFoundError(f"cannot load the {what} {name!r}: it is neither a local directory nor in the "
                                f"Hugging Face cache, and HF_HUB_OFFLINE is set; {todo}")
    host = _unreachable_hub()
    if host:
        raise FileNotFoundError(f"cannot load the {what} {name!r}: it is neither a local directory nor in the "
                                f"Hugging Face cache, and {host} cannot be reached; {todo}")
    try:
        return loader.from_pretrained(name)
    except OSError as err:
        raise FileNotFoundError(f"cannot load the {what} {name!r} (a Hugging Face id or a local path): {err}") from err


def _hub_offline() -> bool:
    from huggingface_hub import constants

    legacy = os.environ.get("TRANSFORMERS_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or legacy


def _unreachable_hub(timeout: float = 3.0) -> str | None:
    """The hub's host name when a connection to it fails within ``timeout`` seconds, else None."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return None
    except OSError:
        return url.hostname


def load_tokenizer(name: str | os.PathLike):
    """A fast Hugging Face tokenizer from a local directory or a Hugging Face id (:func:`from_pretrained`), its
    pad token set to EOS when it has none."""
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, name, "tokenizer")
    if not tokenizer.is_fast:
        raise TypeError(f"the tokenizer of {str(name)!r} is not a fast tokenizer; kdviz needs character offsets")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | os.PathLike):
    """A causal language model from a local directory or a Hugging Face id (:func:`from_pretrained`), in eval
    mode."""
    from transformers import AutoModelForCausalLM

    return from_pretrained(AutoModelForCausalLM, name, "model").eval()


@contextlib.contextmanager
def _no_weight_loading_bars():
    """Transformers' "Loading weights" progress bars off for the duration, restored afterwards.

    The embedded models load in milliseconds, so their bars say nothing; in a notebook each bar is a widget,
    and a saved notebook reopened while its new kernel starts can show a stale one as "Error displaying
    widget: model not found" (JupyterLab's widget manager may report itself restored before the notebook's
    widget state is). Models of your own keep their bars (:func:`load_model`)."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def load_default(root: str | os.PathLike | None = None) -> Assets:
    """Load the embedded teacher, both students, both tokenizers, the three splits and the manifest (without
    progress bars)."""
    paths = default_paths(root)
    manifest = json.loads(_require(paths.manifest, "asset manifest").read_text())
    with _no_weight_loading_bars():
        return Assets(
            paths=paths,
            teacher=load_model(_require(paths.teacher, "model", "config.json")),
            student_same=load_model(_require(paths.student_same, "model", "config.json")),
            student_cross=load_model(_require(paths.student_cross, "model", "config.json")),
            teacher_tokenizer=load_tokenizer(_require(paths.teacher_tokenizer, "tokenizer", "tokenizer.json")),
            student_tokenizer=load_tokenizer(_require(paths.student_tokenizer, "tokenizer", "tokenizer.json")),
            train=load_split(paths.train),
            dev=load_split(paths.dev),
            test=load_split(paths.test),
            manifest=manifest,
        )
