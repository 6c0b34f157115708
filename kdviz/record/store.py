"""The run store writer: one directory per run, append-only stream files, metadata as JSON.

Layout of a run directory (format version :data:`FORMAT_VERSION`)::

    meta.json          format, format_version, kdviz_version, created, method, models, recorder, notes
    <stream>.kdr       tables (scalars, head_tail, tokens, texts, ...): one frame per flushed batch of rows
    matrices.kdr       one frame per matrix: values, optional reference, row/column token labels
    replay/*.safetensors   batch slices saved when a loss term went non-finite

``*.kdr`` files hold the checksummed frames of :mod:`kdviz.record.frames`; they are only ever appended
to, so a crash (even ``SIGKILL``) loses at most what was not yet flushed, and a torn last frame is
detected by the reader. ``meta.json`` is replaced atomically (write to a temporary file, then rename).
Each table frame carries the index of the writing session (``meta["sessions"]``).

A write that fails (disk full, ...) raises :class:`RecordWriteError` naming the run directory; the bytes
of the failed frame are cut off again, so what was written before stays readable without warnings, and
what was buffered stays buffered for the next flush. The writer never writes through a symbolic link
inside the run directory (the run directory itself may be one).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from kdviz.record.frames import Frame, encode, scan

FORMAT = "kdviz-run"
FORMAT_VERSION = 1
META_FILE = "meta.json"
SUFFIX = ".kdr"
MATRICES = "matrices"
REPLAY_DIR = "replay"
RESERVED = ("format", "format_version", "kdviz_version", "created", "sessions")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # the head_tail table's quantile levels (columns q05 ... q95)
TOP_K = 5  # next tokens kept per position and side in the tokens table (columns student_top5, teacher_top5)

# the table streams
SCALARS, HEAD_TAIL, TOKENS, TEXTS, VOCAB_MAP, EVENTS = "scalars", "head_tail", "tokens", "texts", "vocab_map", "events"


def quantile_column(level: float) -> str:
    """The head_tail column of a quantile level: ``0.05 -> "q05"``."""
    return f"q{round(level * 100):02d}"


# The table streams the recorder writes: their columns (when empty) and the key that identifies a row.
# A resumed run may write a key twice; readers keep the last row written.
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    SCALARS: (("step", "name", "value", "wall_time"), ("step", "name")),
    HEAD_TAIL: (
        ("step", "space", "statistic", "count", "mean", *map(quantile_column, QUANTILES)),
        ("step", "space", "statistic"),
    ),
    TOKENS: (("step", "sample", "example_id", "position", "token"), ("step", "sample", "position")),
    TEXTS: (("example_id", "side", "text"), ("example_id", "side")),
    VOCAB_MAP: (("step", "sample", "rank", "teacher_id", "student_id"), ("step", "sample", "rank")),
    EVENTS: (("step", "kind", "name", "detail"), ()),
}

# Matrix names. Every matrix is stored with student rows and teacher columns. Alignments are stored under
# their diagnostic's name (kdviz's methods: CMA's two attentions, ULD's pairing, MinED's DTW path); a
# transport diagnostic ``<name>`` as ``<name>_plan`` and ``<name>_cost`` (MultiLevelOT: ``transport``).
ALIGNMENT_MATRICES = ("t2s_weight", "s2t_weight", "pairing", "dtw_path")
TRANSPORT_PLAN, TRANSPORT_COST = "transport_plan", "transport_cost"
ALIGNMENT_SCALARS = "alignment/"  # scores: ``alignment/<matrix>/<score>`` (:func:`kdviz.align.alignment_scores`)


class MalformedRecord(ValueError):
    """A verified frame whose content is not a table or matrix record."""


def table_columns(frame: Frame) -> tuple[dict[str, Any], int]:
    """``(columns, session)`` of a table frame: name -> 1-d array or list of strings, and the index of the
    session that wrote it (0 for files written before sessions were recorded)."""
    a = frame.attrs
    names, text, session = a.get("columns"), a.get("text", {}), a.get("session", 0)
    if not isinstance(names, list) or not isinstance(text, dict) or type(session) is not int:
        raise MalformedRecord("not a table record")
    columns: dict[str, Any] = {}
    for name in names:
        values = frame.arrays.get(name) if isinstance(name, str) else None
        if values is None and isinstance(name, str) and isinstance(text.get(name), list):
            values = text[name]
        if values is None or (isinstance(values, np.ndarray) and values.ndim != 1):
            raise MalformedRecord(f"table column {name!r} is missing or not one-dimensional")
        columns[name] = values
    if len({len(v) for v in columns.values()}) > 1:
        raise MalformedRecord("table columns have different lengths")
    return columns, session


def resume_point(path: Path) -> tuple[int, float]:
    """``(next step, tokens seen)`` of the run at ``path`` from its scalars stream: one past the largest
    step (0 for none) and the ``tokens_seen`` of the latest step that has one (the last written wins).
    Frames that do not verify are skipped (the reader warns about them)."""
    file = path / f"{SCALARS}{SUFFIX}"
    last_step, seen = -1, (-1, 0.0)
    data = file.read_bytes() if file.exists() else b""
    for frame in scan(data):
        try:
            columns, _ = table_columns(frame) if isinstance(frame, Frame) else ({}, 0)
        except MalformedRecord:
            continue
        if not {"step", "name", "value"} <= set(columns):
            continue
        for step, name, value in zip(columns["step"], columns["name"], columns["value"], strict=True):
            last_step = max(last_step, int(step))
            if name == "tokens_seen" and int(step) >= seen[0]:
                seen = (int(step), float(value))
    return last_step + 1, seen[1]


def _json_default(value: Any) -> Any:
    """JSON for the objects users put in metadata: models and tokenizers by name or path, tensors as lists."""
    name = getattr(value, "name_or_path", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


class RecordWriteError(OSError):
    """The run store could not write to its run directory (disk full, permissions, ...)."""


def _write_failed(path: Path, what: str, error: Exception) -> RecordWriteError:
    code = getattr(error, "errno", None)
    full = code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)  # safetensors' errors have no errno
    reason = "the disk is full" if full else getattr(error, "strerror", None) or str(error)
    failure = RecordWriteError(
        f"kdviz could not write {what} to the run directory {path}: {reason}. Records flushed before are "
        "intact; free space (or choose another directory) to record more"
    )
    failure.errno = errno.ENOSPC if full else code
    return failure


def _open_new(path: Path, flags: int) -> int:
    """A file descriptor for ``path``, never following a symbolic link."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP or path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; kdviz never writes through links in a run directory") \
                from None
        raise


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON so a reader sees the old or the new file, never half of one."""
    text = json.dumps(data, indent=1, default=_json_default).encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = _open_new(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with open(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise _write_failed(path.parent, path.name, error) from error


def read_meta(path: Path) -> dict[str, Any]:
    """Load and check ``meta.json`` of a run directory; errors name the file and the problem."""
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{meta_path} is damaged (not UTF-8: {error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path} is damaged (not valid JSON: {error})") from None
    except RecursionError:
        raise ValueError(f"{meta_path} is damaged (JSON nested too deeply)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a kdviz run's metadata (no 'format': {FORMAT!r})")
    version = meta.get("format_version")
    if type(version) is not int or version < 1:
        raise ValueError(f"{meta_path} has an invalid format_version {version!r}; expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {version!r}; this kdviz reads versions up to {FORMAT_VERSION}. "
            "Upgrade kdviz to read this run."
        )
    return meta


def _prepare(path: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Make ``path`` ready for writing; return the existing metadata when resuming."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True exclude each other: continue the run or replace it")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"run directory {path} exists and is a file")
    if (path / META_FILE).exists() or (path / META_FILE).is_symlink():
        _refuse_links(path)
        meta = read_meta(path)
        if resume:
            return meta
        if not overwrite:
            raise FileExistsError(
                f"{path} already holds a kdviz run (created {meta.get('created')}); pass resume=True to "
                "append to it or overwrite=True to replace it"
            )
        _empty(path)
    elif path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty and holds no kdviz run; choose an empty or new directory")
    path.mkdir(parents=True, exist_ok=True)
    return None


def _refuse_links(path: Path) -> None:
    """Refuse a run whose metadata, stream files or replay folder are symbolic links."""
    entries = [path / META_FILE, path / REPLAY_DIR, *path.glob(f"*{SUFFIX}")]
    links = [p.name for p in entries if p.is_symlink()]
    if links:
        raise ValueError(f"{path} holds symbolic links {links}; kdviz never writes through links in a run directory")


def _empty(path: Path) -> None:
    """Remove what ``path`` holds (not ``path`` itself, which may be a link to the run directory)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _column(name: str, values: Any) -> tuple[str, Any]:
    """Classify one column: ``("array", 1-d ndarray)`` for numbers and booleans, ``("text", list)`` else."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind in "fiub":
        if array.ndim != 1:
            raise ValueError(f"column {name!r} must be one-dimensional, got shape {array.shape}")
        return "array", array
    return "text", [None if v is None else str(v) for v in values]


class RunWriter:
    """Append tables and matrices to a run directory.

    Rows and matrices are buffered in memory and written by :meth:`flush` (one ``write`` per frame, so
    the data is in the operating system's hands as soon as ``flush`` returns and survives the process
    being killed; ``fsync=True`` also forces it to the disk on every flush).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        fsync: bool = False,
    ):
        self.path = Path(path)
        self.fsync = fsync
        existing = _prepare(self.path, resume, overwrite)
        session = {"started": _now(), "pid": os.getpid(), "resumed": existing is not None}
        if existing is None:
            import kdviz

            bad = sorted(set(meta or {}) & set(RESERVED))
            if bad:
                raise ValueError(f"meta keys {bad} are reserved by the run store; rename them")
            self.meta: dict[str, Any] = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kdviz_version": kdviz.__version__,
                "created": session["started"],
                "sessions": [session],
                **(meta or {}),
            }
        else:
            self.meta = {**existing, **(meta or {}), "sessions": [*existing.get("sessions", []), session]}
        self.session = len(self.meta["sessions"]) - 1
        write_json_atomic(self.path / META_FILE, self.meta)
        self._rows: dict[str, list[dict[str, tuple[str, Any]]]] = {}
        self._frames: dict[str, list[bytes]] = {}
        self._files: dict[str, Any] = {}
        self.bytes_written = 0
        self.closed = False

    def append_rows(self, stream: str, columns: Mapping[str, Any]) -> None:
        """Buffer rows for table ``stream``: ``columns`` maps names to equal-length sequences/arrays."""
        self.check_open()
        if not stream.isidentifier() or stream == MATRICES:
            raise ValueError(f"stream name {stream!r} must be an identifier other than {MATRICES!r}")
        typed = {name: _column(name, values) for name, values in columns.items()}
        lengths = {name: len(v) for name, (_, v) in typed.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns of {stream!r} have different lengths: {lengths}")
        if typed and next(iter(lengths.values())) > 0:
            self._rows.setdefault(stream, []).append(typed)

    def append_matrix(
        self,
        name: str,
        step: int,
        sample: int,
        values: np.ndarray,
        row_tokens: Sequence[str],
        col_tokens: Sequence[str],
        reference: np.ndarray | None = None,
        **info: Any,
    ) -> None:
        """Buffer one matrix ``[R, C]`` with its row and column labels and optional reference ``[R, C]``."""
        self.check_open()
        values = np.asarray(values)
        if values.ndim != 2 or values.shape != (len(row_tokens), len(col_tokens)):
            raise ValueError(
                f"matrix {name!r} has shape {values.shape} but {len(row_tokens)} row and "
                f"{len(col_tokens)} column labels"
            )
        arrays = {"values": values}
        if reference is not None:
            reference = np.asarray(reference)
            if reference.shape != values.shape:
                raise ValueError(f"reference of {name!r} has shape {reference.shape}, values {values.shape}")
            arrays["reference"] = reference
        attrs = {
            "name": name,
            "step": int(step),
            "sample": int(sample),
            "row_tokens": [str(t) for t in row_tokens],
            "col_tokens": [str(t) for t in col_tokens],
            "info": json.loads(json.dumps(info, default=_json_default)),
        }
        self._frames.setdefault(MATRICES, []).append(encode(attrs, arrays))

    def update_meta(self, **fields: Any) -> None:
        """Merge ``fields`` into ``meta.json`` (rewritten atomically)."""
        self.meta.update(fields)
        write_json_atomic(self.path / META_FILE, self.meta)

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Path:
        """Save tensors as ``replay/<name>.safetensors`` (atomically), ``info`` in its JSON metadata."""
        folder = self.path / REPLAY_DIR
        if folder.is_symlink():
            raise ValueError(f"{folder} is a symbolic link; kdviz never writes through links in a run directory")
        target = folder / f"{name}.safetensors"
        tmp = folder / f".{name}.tmp"
        flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        try:
            folder.mkdir(exist_ok=True)
            tmp.unlink(missing_ok=True)
            save_file(flat, str(tmp), metadata={"info": json.dumps(dict(info), default=_json_default)})
            os.replace(tmp, target)
        except (OSError, SafetensorError) as error:
            tmp.unlink(missing_ok=True)
            raise _write_failed(self.path, f"the replay {target.name}", error) from error
        return target

    def flush(self) -> None:
        """Write everything buffered: one frame per table batch (per column set) and per matrix."""
        if self.closed:
            return
        for stream, chunks in self._rows.items():
            frames = self._frames.setdefault(stream, [])
            groups: dict[tuple, list] = {}
            for chunk in chunks:
                groups.setdefault(tuple((k, kind) for k, (kind, _) in chunk.items()), []).append(chunk)
            for key, group in groups.items():
                frames.append(_table_frame(key, group, self.session))
        self._rows.clear()
        for stream in list(self._frames):
            if self._frames[stream]:
                self._write(stream, b"".join(self._frames[stream]))
            del self._frames[stream]  # only once written: a failed write keeps it for the next flush

    def _write(self, stream: str, data: bytes) -> None:
        path = self.path / f"{stream}{SUFFIX}"
        f = self._files.get(stream)
        try:
            if f is None:
                fd = _open_new(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                f = self._files[stream] = open(fd, "ab", buffering=0)
            end = os.fstat(f.fileno()).st_size
            view = memoryview(data)
            try:
                while view:
                    view = view[f.write(view) :]
                if self.fsync:
                    os.fsync(f.fileno())
            except OSError:
                os.ftruncate(f.fileno(), end)  # no torn frame left behind
                raise
        except OSError as error:
            raise _write_failed(self.path, path.name, error) from error
        self.bytes_written += len(data)

    def close(self) -> None:
        """Flush, sync the stream files to disk and close them. Idempotent; a failed last write warns."""
        if self.closed:
            return
        try:
            self.flush()
        except RecordWriteError as error:
            warnings.warn(f"{error} (records buffered since the last flush are lost)", RuntimeWarning, stacklevel=2)
        for f in self._files.values():
            try:
                os.fsync(f.fileno())
            except OSError:
                pass  # the data reached the operating system; only the sync to disk failed
            f.close()
        self._files.clear()
        self._rows.clear()
        self._frames.clear()
        self.closed = True

    def check_open(self) -> None:
        """Raise ``RuntimeError`` if the writer was closed."""
        if self.closed:
            raise RuntimeError(f"the run writer for {self.path} is closed")


def _table_frame(key: tuple, chunks: list[dict[str, tuple[str, Any]]], session: int) -> bytes:
    arrays, text = {}, {}
    for name, kind in key:
        parts = [chunk[name][1] for chunk in chunks]
        if kind == "array":
            arrays[name] = np.concatenate(parts)
        else:
            text[name] = [v for part in parts for v in part]
    return encode({"kind": "table", "columns": [name for name, _ in key], "text": text, "session": session}, arrays)


def _now() -> str:
    return datetime.fromtimestamp(time.time(), tz=timezone.utc).isoformat(timespec="milliseconds")
