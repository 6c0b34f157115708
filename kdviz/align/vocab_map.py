"""The teacher -> student vocabulary map of MinED (docs/methods.md#mined), computed fast and cached on disk.

Tokens are compared by the bytes they stand for (byte-level alphabet decoded, ``<0x..>`` byte fallback
as its byte, ``▁`` as a space), so ``Ġthe`` and ``▁the`` are both ``b" the"``, and whitespace-only tokens
differ by length. Each teacher token ``t`` maps to one student token:

1. *exact* (a dictionary look-up): the lowest student id with identical bytes -- exact ⇔ identical bytes;
2. otherwise the student token of minimum Levenshtein distance between the byte strings (lowest id on
   ties), computed with rapidfuzz's ``cdist`` in C++ on every core.

The map is cached per tokenizer pair under ``<cache_dir>/vocab_maps/`` (``cache_dir`` defaults to
``$KDVIZ_CACHE``, else ``~/.cache/kdviz``) as an ``.npz`` file named by the SHA-256 of both vocabularies'
bytes, read back with ``allow_pickle=False``. A changed vocabulary has a new hash, hence a new file: stale
maps are never read; a corrupt file is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist
from tqdm.auto import tqdm

from kdviz.align.dtw import MARKERS
from kdviz.align.tokens import vocab_bytes

FORMAT = 2
CHUNK = 512


@dataclass(frozen=True)
class VocabMap:
    """``ids[t]``: the student id teacher id ``t`` maps to; ``exact[t]``: whether both stand for identical bytes.

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
        """Share of teacher tokens mapped to a student token of identical bytes."""
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


def vocab_hash(tokens: Sequence[str] | Sequence[bytes]) -> str:
    """SHA-256 of a vocabulary (its strings, or byte strings, in id order)."""
    h = hashlib.sha256()
    for token in tokens:
        raw = token if isinstance(token, bytes) else token.encode()
        h.update(len(raw).to_bytes(4, "little") + raw)
    return h.hexdigest()


def list_bytes(tokens: Sequence[str], markers: Sequence[str] = MARKERS) -> list[bytes]:
    """A vocabulary given as strings: UTF-8 bytes, each word marker (``▁``, ``Ġ``) standing for a space."""
    out = []
    for token in tokens:
        for marker in markers:
            token = token.replace(marker, " ")
        out.append(token.encode())
    return out


def _nearest(queries: list[str], choices: list[str], workers: int) -> np.ndarray:
    """Index of the choice nearest each query by Levenshtein distance (lowest index on ties)."""
    best = np.empty(len(queries), dtype=np.int64)
    for start in tqdm(range(0, len(queries), CHUNK), desc="vocabulary map", unit="chunk", leave=False):
        chunk = queries[start : start + CHUNK]
        dist = cdist(chunk, choices, scorer=Levenshtein.distance, dtype=np.int32, workers=workers)
        best[start : start + len(chunk)] = dist.argmin(axis=1)
    return best


def build_vocab_map(
    teacher_tokens: Sequence[bytes] | Sequence[str],
    student_tokens: Sequence[bytes] | Sequence[str],
    markers: Sequence[str] = MARKERS,
    workers: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [V_t] int64, exact [V_t] bool)``: the map of the module docstring, without caching.

    Tokens are byte strings (what each token stands for); strings are converted with :func:`list_bytes`.
    """
    if not student_tokens:
        raise ValueError("the student vocabulary is empty; a vocabulary map needs at least one student token")
    t_bytes, s_bytes = (
        list(t) if isinstance(t[0], bytes) else list_bytes(t, markers) if t else []
        for t in (teacher_tokens, student_tokens)
    )
    by_bytes: dict[bytes, int] = {}  # each byte string's lowest id, in id order
    for index, token in enumerate(s_bytes):
        by_bytes.setdefault(token, index)
    ids = np.array([by_bytes.get(t, -1) for t in t_bytes], dtype=np.int64)
    exact = ids >= 0
    choices = list(by_bytes)
    choice_ids = np.asarray([by_bytes[c] for c in choices], dtype=np.int64)
    queries: dict[str, list[int]] = {}
    for index in np.flatnonzero(~exact).tolist():
        queries.setdefault(t_bytes[index].decode("latin-1"), []).append(index)  # one character per byte
    strings = list(queries)
    if strings:
        nearest = choice_ids[_nearest(strings, [c.decode("latin-1") for c in choices], workers)]
        for query, best in zip(strings, nearest.tolist(), strict=True):
            ids[queries[query]] = best
    return ids, exact


def default_cache_dir() -> Path:
    """kdviz's cache root: ``$KDVIZ_CACHE``, else ``~/.cache/kdviz`` (vocabulary maps go to ``vocab_maps/``)."""
    return Path(os.environ.get("KDVIZ_CACHE") or Path.home() / ".cache" / "kdviz")


def _cache_path(cache_dir: Path, teacher_hash: str, student_hash: str) -> Path:
    key = hashlib.sha256(f"{FORMAT}|{teacher_hash}|{student_hash}".encode()).hexdigest()
    return cache_dir / "vocab_maps" / f"vocab_map-{key[:32]}.npz"


def _load(path: Path, teacher_hash: str, student_hash: str, v_t: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached map, or None when it is missing, stale or unreadable (a corrupt file gets a warning)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["teacher_hash"]) != teacher_hash or str(data["student_hash"]) != student_hash:
                return None
            ids, exact = data["ids"].astype(np.int64), data["exact"].astype(bool)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"vocabulary map cache {path} is unreadable ({err}); rebuilding it", stacklevel=3)
        return None
    if len(ids) == v_t == len(exact):
        return ids, exact
    warnings.warn(f"vocabulary map cache {path} has the wrong size; rebuilding it", stacklevel=3)
    return None


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


def token_bytes(vocab, markers: Sequence[str] = MARKERS) -> list[bytes]:
    """What each token of a vocabulary stands for, as bytes: a tokenizer's decoded pieces (byte-level
    alphabet, ``<0x..>`` byte fallback, ``▁``), or a list of strings with :func:`list_bytes`."""
    return list_bytes(list(vocab), markers) if _is_token_list(vocab) else vocab_bytes(vocab)


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

    ``cache_dir`` is kdviz's cache root (default :func:`default_cache_dir`); the map is stored under its
    ``vocab_maps/`` folder, read back when an entry for exactly these two vocabularies exists, else computed
    and stored (``use_cache=False`` neither reads nor writes). A corrupt cache file is rebuilt with a
    warning. ``markers``: the word markers that stand for a space in a list of strings. ``workers`` is
    rapidfuzz's thread count (-1: all cores).
    """
    t_bytes, s_bytes = token_bytes(teacher, markers), token_bytes(student, markers)
    t_hash, s_hash = vocab_hash(t_bytes), vocab_hash(s_bytes)
    path = None
    if use_cache:
        path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), t_hash, s_hash)
        cached = _load(path, t_hash, s_hash, len(t_bytes))
        if cached is not None:
            return VocabMap(*cached, t_hash, s_hash, from_cache=True, path=path)
    ids, exact = build_vocab_map(t_bytes, s_bytes, markers, workers)
    if path is not None:
        _save(path, ids, exact, t_hash, s_hash)
    return VocabMap(ids, exact, t_hash, s_hash, from_cache=False, path=path)


def _is_token_list(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and all(isinstance(t, str) for t in x[:8])
