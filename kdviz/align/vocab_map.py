"""The teacher -> student vocabulary map of MinED (docs/methods.md#mined), resolved on demand and cached on disk.

Tokens are compared by the bytes they stand for (byte-level alphabet decoded, ``<0x..>`` byte fallback
as its byte, ``▁`` as a space), so ``Ġthe`` and ``▁the`` are both ``b" the"``, and whitespace-only tokens
differ by length. Each teacher token ``t`` maps to one student token:

1. *exact* (a dictionary look-up, for the whole vocabulary at once): the lowest student id with identical
   bytes -- exact ⇔ identical bytes;
2. otherwise the student token of minimum Levenshtein distance between the byte strings (lowest id on
   ties), found by :class:`kdviz.align.nearest.NearestIndex` without computing every pair.

Step 2 still takes tens of seconds for the largest real vocabularies (Gemma-3's 262k teacher tokens against
Llama-3's 128k), so a map can be resolved *on demand*: :meth:`VocabMap.lookup` computes the nearest student
token of the teacher ids it is asked for (MinED asks for the teacher's top-k ids of each batch), and
:meth:`VocabMap.complete` resolves the whole vocabulary.

The map is cached per tokenizer pair under ``<cache_dir>/vocab_maps/`` (``cache_dir`` defaults to
``$KDVIZ_CACHE``, else ``~/.cache/kdviz``) as an ``.npz`` file named by the SHA-256 of both vocabularies'
bytes, read back with ``allow_pickle=False``; entries resolved later are added to the same file. A changed
vocabulary has a new hash, hence a new file: stale maps are never read; a corrupt file is rebuilt with a
warning.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
import weakref
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from kdviz.align.dtw import MARKERS
from kdviz.align.tokens import vocab_bytes

if TYPE_CHECKING:  # numba is imported when a map first needs the search, not with kdviz
    from kdviz.align.nearest import NearestIndex

FORMAT = 3
CHUNK = 4096  # queries per progress-bar step
UNRESOLVED = -1
SAVE_EVERY_S = 2.0  # a lookup rewrites the cache file at most this often (complete() always does; the rest is
# saved when the map is garbage-collected or the process exits)


class VocabMap:
    """The teacher -> student map: ``exact[t]`` (identical bytes) for every teacher id ``t``, and ``ids[t]``
    (the student id) where resolved -- exact entries at once, nearest ones on demand (``UNRESOLVED`` = -1
    until then). :meth:`lookup` resolves the ids it is given, :meth:`complete` all of them.

    ``from_cache`` says whether this map was read from disk; ``path`` is its cache file (None if uncached).
    """

    def __init__(
        self,
        ids: np.ndarray,
        exact: np.ndarray,
        student_hash: str,
        teacher_hash: str,
        *,
        from_cache: bool = False,
        path: Path | None = None,
        student_bytes: Sequence[bytes] | None = None,
        teacher_bytes: Sequence[bytes] | None = None,
    ) -> None:
        self.ids, self.exact = np.asarray(ids, dtype=np.int64), np.asarray(exact, dtype=bool)
        if self.ids.shape != self.exact.shape:
            raise ValueError(f"ids and exact must have one entry per teacher id, got {self.ids.shape} and "
                             f"{self.exact.shape}")
        self.student_hash, self.teacher_hash = student_hash, teacher_hash
        self.from_cache, self.path = from_cache, path
        self._student_bytes = student_bytes
        self._teacher_bytes = teacher_bytes
        self._index: NearestIndex | None = None
        self._saved_at = time.monotonic()
        self._unsaved = [False]  # shared with the finalizer, which must not hold the map itself
        if path is not None:
            weakref.finalize(self, _save_if_unsaved, self._unsaved, path, self.ids, self.exact, student_hash,
                             teacher_hash)

    @property
    def exact_share(self) -> float:
        """Share of teacher tokens mapped to a student token of identical bytes."""
        return float(self.exact.mean()) if len(self.exact) else 0.0

    @property
    def resolved_share(self) -> float:
        """Share of teacher ids whose student id is known (1.0 once :meth:`complete` ran)."""
        return float((self.ids != UNRESOLVED).mean()) if len(self.ids) else 1.0

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, teacher_ids) -> np.ndarray:
        """The student ids of ``teacher_ids`` (any integer array), resolving the missing ones first."""
        teacher_ids = np.asarray(teacher_ids, dtype=np.int64)
        if teacher_ids.size and (teacher_ids.min() < 0 or teacher_ids.max() >= len(self.ids)):
            raise ValueError(f"teacher_ids must lie in [0, {len(self.ids)}), got ids from {teacher_ids.min()} "
                             f"to {teacher_ids.max()}")
        missing = np.unique(teacher_ids[self.ids[teacher_ids] == UNRESOLVED])
        if missing.size:
            self._resolve(missing, progress=False)
            self._unsaved[0] = True
            if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                self.save()
        return self.ids[teacher_ids]

    def complete(self, progress: bool = True) -> VocabMap:
        """Resolve every teacher id (the whole minimum-edit-distance search), save, and return the map."""
        missing = np.flatnonzero(self.ids == UNRESOLVED)
        if missing.size:
            self._resolve(missing, progress=progress)
        if missing.size or (self.path is not None and not self.path.exists()):
            self.save()
        return self

    def save(self) -> None:
        """Write the map (what is resolved so far) to its cache file, if it has one."""
        if self.path is not None:
            _save(self.path, self.ids, self.exact, self.student_hash, self.teacher_hash)
        self._saved_at, self._unsaved[0] = time.monotonic(), False

    def _resolve(self, teacher_ids: np.ndarray, progress: bool) -> None:
        if self._teacher_bytes is None or self._student_bytes is None:
            raise ValueError("this VocabMap was built from arrays alone and cannot resolve new entries; build it "
                             "with kdviz.align.vocab_map(student, teacher)")
        queries = [self._teacher_bytes[t] for t in teacher_ids.tolist()]
        if self._index is None:
            self._index = student_index(self._student_bytes)
        self.ids[teacher_ids] = nearest_ids(queries, self._index, progress)


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


def _as_bytes(tokens: Sequence[bytes] | Sequence[str], markers: Sequence[str]) -> list[bytes]:
    return list(tokens) if tokens and isinstance(tokens[0], bytes) else list_bytes(tokens, markers)


def _first_ids(student_bytes: Sequence[bytes]) -> dict[bytes, int]:
    """Each distinct student byte string's lowest id."""
    by_bytes: dict[bytes, int] = {}
    for index, token in enumerate(student_bytes):
        by_bytes.setdefault(token, index)
    return by_bytes


def exact_ids(student_bytes: Sequence[bytes], teacher_bytes: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, exact)``: the lowest student id of identical bytes where there is one, else ``UNRESOLVED``."""
    if not student_bytes:
        raise ValueError("the student vocabulary is empty; a vocabulary map needs at least one student token")
    by_bytes = _first_ids(student_bytes)
    ids = np.array([by_bytes.get(t, UNRESOLVED) for t in teacher_bytes], dtype=np.int64)
    return ids, ids != UNRESOLVED


def student_index(student_bytes: Sequence[bytes]) -> NearestIndex:
    """The distinct student byte strings, each with its lowest id, indexed for :func:`nearest_ids`."""
    from kdviz.align.nearest import NearestIndex

    by_bytes = _first_ids(student_bytes)
    return NearestIndex(list(by_bytes), np.fromiter(by_bytes.values(), dtype=np.int64, count=len(by_bytes)))


def nearest_ids(queries: Sequence[bytes], index: NearestIndex, progress: bool = True) -> np.ndarray:
    """The student id of minimum Levenshtein distance to each query's bytes (lowest id on ties) in ``index``
    (:func:`student_index`)."""
    distinct = list(dict.fromkeys(queries))
    best = np.empty(len(distinct), dtype=np.int64)
    starts = range(0, len(distinct), CHUNK)
    for start in tqdm(starts, desc="vocabulary map", unit="chunk", leave=False, disable=not progress):
        best[start : start + CHUNK] = index.nearest(distinct[start : start + CHUNK])[0]
    found = dict(zip(distinct, best.tolist(), strict=True))
    return np.array([found[q] for q in queries], dtype=np.int64)


def build_vocab_map(
    student_tokens: Sequence[bytes] | Sequence[str],
    teacher_tokens: Sequence[bytes] | Sequence[str],
    markers: Sequence[str] = MARKERS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [V_t] int64, exact [V_t] bool)``: the complete map of the module docstring, without caching.

    Tokens are byte strings (what each token stands for); strings are converted with :func:`list_bytes`.
    """
    s_bytes, t_bytes = _as_bytes(student_tokens, markers), _as_bytes(teacher_tokens, markers)
    found = VocabMap(*exact_ids(s_bytes, t_bytes), vocab_hash(s_bytes), vocab_hash(t_bytes), student_bytes=s_bytes,
                     teacher_bytes=t_bytes).complete()
    return found.ids, found.exact


def default_cache_dir() -> Path:
    """kdviz's cache root: ``$KDVIZ_CACHE``, else ``~/.cache/kdviz`` (vocabulary maps go to ``vocab_maps/``)."""
    return Path(os.environ.get("KDVIZ_CACHE") or Path.home() / ".cache" / "kdviz")


def _cache_path(cache_dir: Path, student_hash: str, teacher_hash: str) -> Path:
    key = hashlib.sha256(f"{FORMAT}|{teacher_hash}|{student_hash}".encode()).hexdigest()  # the files' names since v3
    return cache_dir / "vocab_maps" / f"vocab_map-{key[:32]}.npz"


def _load(path: Path, student_hash: str, teacher_hash: str, exact: np.ndarray) -> np.ndarray | None:
    """The cached ids (``UNRESOLVED`` where not yet resolved), or None when the file is missing, stale or
    unreadable (a corrupt file gets a warning). ``exact`` is the dictionary step's, to check the file with."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["teacher_hash"]) != teacher_hash or str(data["student_hash"]) != student_hash:
                return None
            ids, cached_exact = data["ids"].astype(np.int64), data["exact"].astype(bool)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"vocabulary map cache {path} is unreadable ({err}); rebuilding it", stacklevel=3)
        return None
    if ids.shape != exact.shape or not np.array_equal(cached_exact, exact):
        warnings.warn(f"vocabulary map cache {path} does not match the vocabularies; rebuilding it", stacklevel=3)
        return None
    return ids


def _save(path: Path, ids: np.ndarray, exact: np.ndarray, student_hash: str, teacher_hash: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, ids=ids, exact=exact, teacher_hash=np.str_(teacher_hash), student_hash=np.str_(student_hash))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_if_unsaved(unsaved: list[bool], path: Path, *entries) -> None:
    """The finalizer of a :class:`VocabMap`: write the entries resolved since the last save."""
    if unsaved[0]:
        try:
            _save(path, *entries)
        except OSError as err:  # at exit there is no one to raise to; the entries are recomputed next time
            warnings.warn(f"could not save the vocabulary map cache {path} ({err})", stacklevel=1)


def token_bytes(vocab, markers: Sequence[str] = MARKERS) -> list[bytes]:
    """What each token of a vocabulary stands for, as bytes: a tokenizer's decoded pieces (byte-level
    alphabet, ``<0x..>`` byte fallback, ``▁``), or a list of strings with :func:`list_bytes`."""
    return list_bytes(list(vocab), markers) if _is_token_list(vocab) else vocab_bytes(vocab)


def vocab_map(
    student,
    teacher,
    *,
    complete: bool = True,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    markers: Sequence[str] = MARKERS,
) -> VocabMap:
    """The teacher -> student :class:`VocabMap` of a student and a teacher tokenizer (or two vocabularies: lists of
    strings by id), student first as everywhere in kdviz.

    ``complete=True`` resolves every teacher id before returning (tens of seconds for the largest vocabularies the
    first time); ``complete=False`` returns at once with the exact entries, the others resolved by
    :meth:`VocabMap.lookup` when asked for. ``cache_dir`` is kdviz's cache root (default
    :func:`default_cache_dir`); the map is stored under its ``vocab_maps/`` folder and read back (with the
    entries resolved so far) when an entry for exactly these two vocabularies exists (``use_cache=False``
    neither reads nor writes). A corrupt cache file is rebuilt with a warning. ``markers``: the word markers
    that stand for a space in a list of strings. The search runs on every core (``NUMBA_NUM_THREADS`` sets how many).
    """
    s_bytes, t_bytes = token_bytes(student, markers), token_bytes(teacher, markers)
    s_hash, t_hash = vocab_hash(s_bytes), vocab_hash(t_bytes)
    ids, exact = exact_ids(s_bytes, t_bytes)
    path = cached = None
    if use_cache:
        path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), s_hash, t_hash)
        cached = _load(path, s_hash, t_hash, exact)
    found = VocabMap(ids if cached is None else cached, exact, s_hash, t_hash, from_cache=cached is not None,
                     path=path, student_bytes=s_bytes, teacher_bytes=t_bytes)
    if complete:
        found.complete()
    elif cached is None:
        found.save()
    return found


def _is_token_list(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and all(isinstance(t, str) for t in x[:8])
