"""Read a run directory into pandas and numpy, also while the run is still being written.

``open_run(path)`` returns a :class:`Run`. Tables come back as tidy DataFrames, matrices as
:class:`Matrix` (values plus row and column token labels plus the ground-truth reference). ``refresh()``
reads only what was appended since the last read, so a dashboard can poll a live run cheaply.

Damage policy: a frame that does not verify (a torn last frame after a crash, a flipped byte), or that
verifies but does not hold a well-formed table or matrix, is skipped with a :class:`TornRecordWarning`
naming the file, the byte offset and the reason, once per frame; everything else reads normally. No
partial row is ever returned. A missing directory, a directory that is not a run, a damaged ``meta.json``
(not UTF-8, not JSON, too deeply nested, not a run's metadata, an invalid or newer format version) raise
an error naming the path.

Sessions: a resumed run may write a key (``step, name`` of a scalar, ...) again. The tables keep the
last row written per key; ``run.table(stream, history=True)`` returns every row ever written, with the
``session`` that wrote it (an index into ``meta["sessions"]``), so nothing on disk is hidden.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from kdviz.headtail import HeadTail
from kdviz.record.frames import Frame, scan
from kdviz.record.store import (
    HEAD_TAIL,
    MATRICES,
    META_FILE,
    REPLAY_DIR,
    SCALARS,
    SCHEMAS,
    SUFFIX,
    TEXTS,
    TOKENS,
    MalformedRecord,
    read_meta,
    table_columns,
)


class TornRecordWarning(UserWarning):
    """A frame of a run file could not be verified (torn by a crash, or damaged) and was skipped."""


@dataclass(frozen=True)
class Matrix:
    """One recorded matrix: ``values [R, C]``, its row and column token labels, and the reference.

    ``reference`` is the ground-truth matrix of the same shape (character-span overlap for alignments)
    or None. ``info`` holds what the probe stored alongside (example id, scores, the response crop).
    """

    values: np.ndarray
    row_tokens: list[str]
    col_tokens: list[str]
    reference: np.ndarray | None
    name: str = ""
    step: int = 0
    sample: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class _StreamFile:
    """Incremental reader of one ``*.kdr`` file: remembers how far it has read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self._warned: set[tuple[int, str]] = set()

    def warn(self, offset: int, state: str, reason: str) -> None:
        """Warn once per (offset, reason) about a record that is skipped."""
        if (offset, reason) not in self._warned:
            self._warned.add((offset, reason))
            warnings.warn(f"{self.path}: skipped a {state} record at byte {offset}: {reason}", TornRecordWarning,
                          stacklevel=5)

    def read_new(self) -> list[Frame]:
        """Frames appended since the last call (offsets absolute), warning once about each bad stretch."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        base, frames = self.offset, []
        for item in scan(data):
            if isinstance(item, Frame):
                frames.append(Frame(item.attrs, item.arrays, base + item.offset, item.size))
                self.offset = base + item.offset + item.size
            else:
                state = "incomplete (torn by a crash, or still being written)" if item.incomplete else "damaged"
                self.warn(base + item.offset, state, item.reason)
        return frames

    def read_at(self, offset: int, size: int) -> Frame:
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        item = next(scan(data), None)
        if not isinstance(item, Frame):
            raise ValueError(f"{self.path}: the record at byte {offset} changed since it was indexed")
        return item


def _table(frame: Frame) -> pd.DataFrame:
    """The rows of a table frame, with the ``session`` that wrote them."""
    columns, session = table_columns(frame)
    df = pd.DataFrame(columns)
    df["session"] = session
    return df


def _matrix_key(frame: Frame) -> tuple[str, int, int]:
    """``(name, step, sample)`` of a matrix frame, checked."""
    a, values = frame.attrs, frame.arrays.get("values")
    key = (a.get("name"), a.get("step"), a.get("sample"))
    if not isinstance(key[0], str) or type(key[1]) is not int or type(key[2]) is not int:
        raise MalformedRecord("not a matrix record")
    rows, cols = a.get("row_tokens"), a.get("col_tokens")
    labelled = isinstance(rows, list) and isinstance(cols, list)
    if values is None or not labelled or values.shape != (len(rows), len(cols)):
        raise MalformedRecord(f"matrix {key[0]!r} does not match its row and column labels")
    reference = frame.arrays.get("reference")
    if reference is not None and reference.shape != values.shape:
        raise MalformedRecord(f"matrix {key[0]!r} has a reference of another shape")
    if not isinstance(a.get("info", {}), dict):
        raise MalformedRecord(f"matrix {key[0]!r} has invalid info")
    return key


class Run:
    """A recorded run. Use :func:`open_run`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no run directory at {self.path}")
        if not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} is a file, not a run directory")
        if not (self.path / META_FILE).exists():
            raise FileNotFoundError(f"{self.path} is not a kdviz run: it has no {META_FILE}")
        self.meta: dict[str, Any] = read_meta(self.path)
        self._files: dict[str, _StreamFile] = {}
        self._parts: dict[str, list[pd.DataFrame]] = {}
        self._tables: dict[str, pd.DataFrame] = {}
        self._matrices: dict[tuple[str, int, int], tuple[int, int, dict[str, Any]]] = {}
        self.refresh()

    def refresh(self) -> Run:
        """Read what was appended since the last read (and the current metadata). Returns the run."""
        self.meta = read_meta(self.path)
        for file in sorted(self.path.glob(f"*{SUFFIX}")):
            stream = self._files.setdefault(file.stem, _StreamFile(file))
            frames = stream.read_new()
            if not frames:
                continue
            for frame in frames:
                try:
                    if file.stem == MATRICES:
                        self._matrices[_matrix_key(frame)] = (frame.offset, frame.size, frame.attrs)
                    else:
                        self._parts.setdefault(file.stem, []).append(_table(frame))
                        self._tables.pop(file.stem, None)
                except MalformedRecord as error:
                    stream.warn(frame.offset, "malformed", str(error))
        return self

    # tables ---------------------------------------------------------------------------------------
    def streams(self) -> list[str]:
        """Names of the table streams present in the run (``scalars``, ``head_tail``, ``tokens``, ...)."""
        return sorted(self._parts)

    def table(self, stream: str, history: bool = False) -> pd.DataFrame:
        """The whole table ``stream`` as a DataFrame (empty, with its columns, when nothing was recorded).

        A key written twice (a resumed run re-recording a step) keeps its last row. ``history=True``:
        every row ever written, in writing order, with a ``session`` column (the writing session's index
        in ``meta["sessions"]``).
        """
        columns, key = SCHEMAS.get(stream, ((), ()))
        parts = self._parts.get(stream)
        if history:
            if not parts:
                return pd.DataFrame({c: pd.Series(dtype=float) for c in (*columns, "session")})
            return pd.concat(parts, ignore_index=True)
        if stream not in self._tables:
            if not parts:
                df = pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
            else:
                df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].copy()
                if key and set(key) <= set(df.columns):
                    df = df.drop_duplicates(list(key), keep="last")
                if "step" in df.columns:
                    df = df.sort_values("step", kind="stable")
                df = df.drop(columns="session").reset_index(drop=True)
            self._tables[stream] = df
        return self._tables[stream].copy()

    @property
    def scalars(self) -> pd.DataFrame:
        """Tidy scalars: ``step, name, value, wall_time`` (loss terms, lr, grad norms, counts...)."""
        return self.table(SCALARS)

    def head_tail(self, per_token: bool = False) -> pd.DataFrame:
        """Head/tail statistics (docs/methods.md#akl).

        Aggregated (default): one row per ``step, space, statistic`` with ``count, mean`` and quantiles
        ``q05 ... q95`` over the step's masked tokens. ``per_token=True``: the sampled sequences' tokens,
        ``step, sample, example_id, position, token`` and one column per statistic.
        """
        if not per_token:
            return self.table(HEAD_TAIL)
        tokens = self.tokens()
        keep = [c for c in tokens.columns if c in SCHEMAS[TOKENS][0] or c in HeadTail.statistics()]
        stats = [c for c in keep if c in HeadTail.statistics()]
        return tokens[keep].dropna(subset=stats, how="all").reset_index(drop=True) if stats else tokens[keep]

    def tokens(self) -> pd.DataFrame:
        """Per-token rows of the sampled sequences: ``step, sample, example_id, position, token`` plus
        every per-token quantity recorded (``token_kd``, ``token_ce``, head/tail statistics, ...)."""
        return self.table(TOKENS)

    def texts(self) -> pd.DataFrame:
        """The raw text of each sampled example: ``example_id, side, text``."""
        return self.table(TEXTS)

    # matrices -------------------------------------------------------------------------------------
    def matrix_names(self) -> list[str]:
        """Names of the recorded matrices (``t2s_weight``, ``transport_plan``, ...)."""
        return sorted({name for name, _, _ in self._matrices})

    def matrix_steps(self, name: str) -> list[int]:
        """Steps at which matrix ``name`` was recorded, ascending."""
        return sorted({step for n, step, _ in self._matrices if n == name})

    def steps(self, kind: str) -> list[int]:
        """Recorded steps of ``kind``: a matrix name, a table stream, or a scalar name."""
        if any(n == kind for n, _, _ in self._matrices):
            return self.matrix_steps(kind)
        if kind in self._parts:
            df = self.table(kind)
            return sorted(int(s) for s in df["step"].unique()) if "step" in df.columns else []
        scalars = self.scalars
        found = scalars.loc[scalars["name"] == kind, "step"]
        if found.empty:
            raise KeyError(
                f"nothing called {kind!r} in {self.path}; matrices: {self.matrix_names()}, tables: {self.streams()}"
            )
        return sorted(int(s) for s in found.unique())

    def matrix(self, name: str, step: int | None = None, sample: int = 0) -> Matrix:
        """Matrix ``name`` of sampled sequence ``sample`` at ``step`` (default: the latest step)."""
        steps = self.matrix_steps(name)
        if not steps:
            raise KeyError(f"no matrix {name!r} in {self.path}; recorded: {self.matrix_names()}")
        step = steps[-1] if step is None else int(step)
        key = (name, step, int(sample))
        if key not in self._matrices:
            samples = sorted(s for n, st, s in self._matrices if n == name and st == step)
            raise KeyError(
                f"no matrix {name!r} at step {step} sample {sample} in {self.path}; "
                f"steps: {steps[:5]}{'...' if len(steps) > 5 else ''}, samples at that step: {samples}"
            )
        offset, size, attrs = self._matrices[key]
        frame = self._files[MATRICES].read_at(offset, size)
        return Matrix(
            values=frame.arrays["values"],
            row_tokens=list(attrs["row_tokens"]),
            col_tokens=list(attrs["col_tokens"]),
            reference=frame.arrays.get("reference"),
            name=name,
            step=step,
            sample=int(sample),
            info=dict(attrs.get("info", {})),
        )

    # files ----------------------------------------------------------------------------------------
    def replays(self) -> list[Path]:
        """Batch slices saved when a loss term went non-finite (safetensors files)."""
        return sorted((self.path / REPLAY_DIR).glob("*.safetensors"))

    @property
    def size_bytes(self) -> int:
        """Bytes the run occupies on disk (all its files)."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, streams={self.streams()}, matrices={self.matrix_names()})"


def open_run(path: str | os.PathLike) -> Run:
    """Open the run directory ``path`` for reading (works while a writer is still appending)."""
    return Run(path)


def load_replay(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a replay file (:meth:`Run.replays`): the batch rows' tensors (``out.<name>`` for the method's
    diagnostics) and the info saved with them (step, term, rows, texts, term values)."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        info = json.loads((f.metadata() or {}).get("info", "{}"))
    return tensors, info
