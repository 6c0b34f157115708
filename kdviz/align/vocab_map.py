"""The teacher -> student vocabulary map of MinED (docs/methods.md#mined), computed fast and cached on disk.

Each teacher token ``t`` maps to one student token:

1. *exact*: a student token whose marker-normalised string (``▁``/``Ġ`` removed) equals ``t``'s; among
   several, one that agrees with ``t`` on starting a word (a leading marker), then the lowest id;
2. otherwise the student token of minimum Levenshtein distance between normalised strings (lowest id on
   ties), computed with rapidfuzz's ``cdist`` in C++ over chunks of teacher tokens, on every core.

The map is cached per tokenizer pair under ``cache_dir`` (default ``$KDVIZ_CACHE`` or
``~/.cache/kdviz``, sub-directory ``vocab_maps``) as an ``.npz`` file named by the SHA-256 of both
vocabularies and the markers, read back with ``allow_pickle=False``. A changed vocabulary has a new hash,
hence a new file: stale maps are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from kdviz.align.dtw import MARKERS, normalize_token

FORMAT = 1
CHUNK = 512


@dataclass(frozen=True)
class VocabMap:
    """``ids[t]``: the student id teacher id ``t`` maps to; ``exact[t]``: whether by exact normalised string.

    ``from_cache`` says whether this map was read from disk; ``path`` is its cache file (None if uncached).
    """

    ids: np.ndarray
    exact: np.ndarray
    teacher_hash: str
    student_hash: str
    from_cache: bool = False
    path: Path | None = None

    @property
    def exact_share(self) -> float:
        """Share of teacher tokens mapped by exact normalised string."""
        return float(self.exact.mean()) if len(self.exact) else 0.0

    def __len__(self) -> int:
        return len(self.ids)


def vocabulary(tokenizer) -> list[str]:
    """The token strings of a Hugging Face tokenizer, by id (``""`` for ids without a string)."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    out = [""] * size
    for token, index in vocab.items():
        out[index] = token
    return out


def vocab_hash(tokens: Sequence[str]) -> str:
    """SHA-256 of a vocabulary (its strings in id order)."""
    return hashlib.sha256(json.dumps(list(tokens), ensure_ascii=False).encode()).hexdigest()


def _word_start(token: str, markers: Sequence[str]) -> bool:
    return any(token.startswith(m) for m in markers)


def build_vocab_map(
    teacher_tokens: Sequence[str], student_tokens: Sequence[str], markers: Sequence[str] = MARKERS, workers: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [V_t] int64, exact [V_t] bool)``: the map of the module docstring, without caching."""
    if not student_tokens:
        raise ValueError("the student vocabulary is empty; a vocabulary map needs at least one student token")
    s_norm = [normalize_token(t, markers) for t in student_tokens]
    by_string: dict[tuple[str, bool], int] = {}
    for index in range(len(student_tokens) - 1, -1, -1):
        start = _word_start(student_tokens[index], markers)
        by_string[(s_norm[index], start)] = index
        by_string[(s_norm[index], None)] = index
    ids = np.full(len(teacher_tokens), -1, dtype=np.int64)
    exact = np.zeros(len(teacher_tokens), dtype=bool)
    rest = []
    for index, token in enumerate(teacher_tokens):
        norm = normalize_token(token, markers)
        hit = by_string.get((norm, _word_start(token, markers)), by_string.get((norm, None)))
        if hit is None:
            rest.append(index)
        else:
            ids[index], exact[index] = hit, True
    choices = list(dict.fromkeys(s_norm))  # unique strings, in order of their lowest id
    choice_ids = np.asarray([by_string[(c, None)] for c in choices], dtype=np.int64)
    queries: dict[str, list[int]] = {}
    for index in rest:
        queries.setdefault(normalize_token(teacher_tokens[index], markers), []).append(index)
    strings = list(queries)
    for start in range(0, len(strings), CHUNK):
        chunk = strings[start : start + CHUNK]
        dist = cdist(chunk, choices, scorer=Levenshtein.distance, dtype=np.int32, workers=workers)
        for query, best in zip(chunk, choice_ids[dist.argmin(axis=1)].tolist(), strict=True):
            ids[queries[query]] = best
    return ids, exact


def default_cache_dir() -> Path:
    """``$KDVIZ_CACHE/vocab_maps``, else ``~/.cache/kdviz/vocab_maps``."""
    root = os.environ.get("KDVIZ_CACHE") or Path.home() / ".cache" / "kdviz"
    return Path(root) / "vocab_maps"


def _cache_path(cache_dir: Path, teacher_hash: str, student_hash: str, markers: Sequence[str]) -> Path:
    key = hashlib.sha256(f"{FORMAT}|{teacher_hash}|{student_hash}|{json.dumps(list(markers))}".encode()).hexdigest()
    return cache_dir / f"vocab_map-{key[:32]}.npz"


def _load(path: Path, teacher_hash: str, student_hash: str, v_t: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["teacher_hash"]) != teacher_hash or str(data["student_hash"]) != student_hash:
                return None
            ids, exact = data["ids"].astype(np.int64), data["exact"].astype(bool)
    except (OSError, KeyError, ValueError):
        return None
    return (ids, exact) if len(ids) == v_t == len(exact) else None


def _save(path: Path, ids: np.ndarray, exact: np.ndarray, teacher_hash: str, student_hash: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, ids=ids, exact=exact, teacher_hash=np.str_(teacher_hash), student_hash=np.str_(student_hash))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vocab_map(
    teacher,
    student,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    markers: Sequence[str] = MARKERS,
    workers: int = -1,
) -> VocabMap:
    """The teacher -> student :class:`VocabMap` of two tokenizers (or two vocabularies: lists of strings by id).

    Read from the cache when an entry for exactly these two vocabularies exists, else computed and stored
    (``use_cache=False`` neither reads nor writes). ``workers`` is rapidfuzz's thread count (-1: all cores).
    """
    t_tokens = list(teacher) if _is_token_list(teacher) else vocabulary(teacher)
    s_tokens = list(student) if _is_token_list(student) else vocabulary(student)
    t_hash, s_hash = vocab_hash(t_tokens), vocab_hash(s_tokens)
    path = None
    if use_cache:
        path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), t_hash, s_hash, markers)
        cached = _load(path, t_hash, s_hash, len(t_tokens)) if path.exists() else None
        if cached is not None:
            return VocabMap(*cached, t_hash, s_hash, from_cache=True, path=path)
    ids, exact = build_vocab_map(t_tokens, s_tokens, markers, workers)
    if path is not None:
        _save(path, ids, exact, t_hash, s_hash)
    return VocabMap(ids, exact, t_hash, s_hash, from_cache=False, path=path)


def _is_token_list(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and all(isinstance(t, str) for t in x[:8])
