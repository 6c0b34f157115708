"""The Recorder: runs the probes on each training step and appends their summaries to a run store.

>>> rec = Recorder("runs/my-run", every=10, samples=2)          # doctest: +SKIP
>>> for step, batch in enumerate(loader):                        # doctest: +SKIP
...     out = method(batch); out.loss.backward()
...     rec.log(step, batch, out, optimizer=opt); opt.step(); opt.zero_grad()
>>> rec.close()                                                  # doctest: +SKIP

Cheap probes (``terms``, ``numerics``, and the alignment scores of ``alignment`` and ``transport``) run
every step; the rest at steps divisible by ``every``.
The sampled sequences are chosen at the first step by example id (``batch.example_ids``, else a hash of
the text) and followed: at each recorded step, sample slot ``k`` holds its example when the batch
contains it, otherwise another row of the batch (the ``example_id`` column and matrix info say which).

Under gradient accumulation, pass every micro-batch but the last to :meth:`Recorder.add_micro_batch` and
the last to :meth:`Recorder.log`: the step's terms are then the token-weighted means over all its
micro-batches, its trained tokens their sum, and a non-finite term is replayed from the micro-batch
where it occurred. The expensive probes look at the last micro-batch.
"""

from __future__ import annotations

import atexit
import json
import numbers
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdviz.methods.diagnostics import diagnostic_tensors
from kdviz.record.batchview import BatchView
from kdviz.record.probes import EVERY_STEP, PROBES, Sample, StepRecord, TopTokens, positions
from kdviz.record.store import (
    EVENTS,
    HEAD_TAIL,
    QUANTILES,
    SCALARS,
    TEXTS,
    TOKENS,
    TOP_K,
    VOCAB_MAP,
    RecordWriteError,
    RunWriter,
    quantile_column,
    resume_point,
)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _fold(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One step's scalars from its micro-batches' (in order; the last has every per-step extra).

    ``tokens`` add up, ``numerics/*`` flags take the maximum, every other scalar is the mean weighted by
    each micro-batch's trained tokens (equal weights when a micro-batch has no token count).
    """
    if len(parts) == 1:
        return parts[0]
    weights = [float(p["tokens"]) if "tokens" in p else None for p in parts]
    if any(w is None for w in weights) or sum(weights) <= 0:
        weights = [1.0] * len(parts)
    folded: dict[str, Any] = {}
    for name in dict.fromkeys(n for p in parts for n in p):
        present = [(float(p[name]), w) for p, w in zip(parts, weights, strict=True) if name in p]
        values = [v for v, _ in present]
        if name == "tokens":
            folded[name] = sum(values)
        elif name.startswith("numerics/"):
            folded[name] = max(values)
        elif len(present) < len(parts):
            folded[name] = parts[-1][name]  # recorded on the last micro-batch only
        else:
            folded[name] = sum(v * w for v, w in present) / sum(w for _, w in present)
    return folded


class Recorder:
    """Record a distillation run into the run directory ``run_dir`` (see :mod:`kdviz.record.store`).

    - ``every``: run the per-step-expensive probes at steps divisible by ``every`` (>= 1).
    - ``samples``: how many sequences to follow per recorded step (per-token rows and matrices).
    - ``probes``: names to enable (default: all of :data:`kdviz.record.probes.PROBES`).
    - ``meta``: JSON-able run description (method name and parameters, model and tokenizer names or
      paths; model/tokenizer objects are stored by their ``name_or_path``).
    - ``resume`` / ``overwrite``: what to do when ``run_dir`` already holds a run (default: refuse).
    - ``flush_every``: write buffered records every this many :meth:`log` calls (and at exit).
    - ``optimizer``: read learning rates and gradient norms (per parameter group) from it at each step.
    - ``fsync``: also force each flush to disk (slower; the default already survives a killed process).
    - ``tokenizers``: ``{"student": ..., "teacher": ...}`` to store the per-token top-5 next tokens as
      strings (``tokenizer.convert_ids_to_tokens``); without them the ids are stored (``#123``).

    Use as a context manager, or call :meth:`close`; an ``atexit`` hook closes it otherwise.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        every: int = 10,
        samples: int = 2,
        probes: Iterable[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        flush_every: int = 10,
        optimizer: torch.optim.Optimizer | None = None,
        fsync: bool = False,
        tokenizers: Mapping[str, Any] | None = None,
    ):
        self.every = _check_int("every", every, 1)
        self.samples = _check_int("samples", samples, 0)
        self.flush_every = _check_int("flush_every", flush_every, 1)
        chosen = list(PROBES) if probes is None else [probes] if isinstance(probes, str) else list(probes)
        unknown = [p for p in chosen if p not in PROBES]
        if unknown:
            raise ValueError(f"unknown probe(s) {unknown}; valid probes are {list(PROBES)}")
        self.probes = tuple(p for p in PROBES if p in chosen)
        self.optimizer = optimizer
        self.tokenizers = dict(tokenizers or {})
        unknown_sides = set(self.tokenizers) - {"student", "teacher"}
        if unknown_sides:
            raise ValueError(f"tokenizers keys must be 'student' and/or 'teacher', got {sorted(unknown_sides)}")
        config = {"every": every, "samples": samples, "probes": list(self.probes), "flush_every": flush_every}
        self.store = RunWriter(run_dir, {**(meta or {}), "recorder": config}, resume, overwrite, fsync)
        self.path = self.store.path
        self.sample_ids: list[str] | None = self.store.meta.get("sample_ids")
        self._notes: dict[str, str] = dict(self.store.meta.get("notes", {}))
        self._replayed: set[str] = set(self.store.meta.get("replays", {}))
        self._texts_written: set[str] = set()
        self._replays_written: list[Path] = []
        self.next_step, self._tokens_seen = resume_point(self.path) if resume else (0, 0.0)
        self._since_flush = 0
        self._micro: list[tuple[int, dict[str, Any]]] = []  # (step, scalars) of the pending micro-batches
        self.steps_logged = 0
        self.steps_recorded = 0
        atexit.register(self.close)

    # public ---------------------------------------------------------------------------------------
    def log(
        self,
        step: int,
        batch: Any,
        out: Any,
        *,
        lr: float | None = None,
        grad_norms: Mapping[str, float | torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        tokens: int | None = None,
    ) -> list[Path]:
        """Record training step ``step`` from its (last) batch and the method's output (``KDOutput``-like).

        Call it after ``backward()`` and before ``zero_grad()`` to get gradient norms from ``optimizer``.
        Micro-batches given to :meth:`add_micro_batch` for the same step are folded in. ``tokens``: the
        trained tokens this call accounts for in ``tokens_seen`` (default: those of the step's
        micro-batches); a loop that logs only every n-th step passes the tokens of every step since its
        previous call. Returns the replay files written for this step (non-finite terms).
        """
        step = _check_int("step", step, 0)
        self.store.check_open()
        recorded = step % self.every == 0
        view = BatchView(batch, out)
        rec = StepRecord(step, self._choose(view) if recorded else [], recorded)
        for name in self.probes:
            if recorded or name in EVERY_STEP:
                self._run_probe(name, view, rec)
        earlier = [scalars for s, scalars in self._micro if s == step]
        self._micro.clear()
        rec.scalars = _fold([*earlier, rec.scalars])
        if tokens is not None:
            rec.scalars["tokens"] = float(_check_int("tokens", tokens, 0))
        if "terms" in self.probes:
            self._optimizer_scalars(rec, lr, grad_norms, optimizer or self.optimizer)
        self._write(view, rec)
        self.next_step = max(self.next_step, step + 1)
        self.steps_logged += 1
        self.steps_recorded += recorded
        self._since_flush += 1
        if self._since_flush >= self.flush_every:
            self.flush()
        written, self._replays_written = self._replays_written, []
        return written

    def add_micro_batch(self, step: int, batch: Any, out: Any) -> list[Path]:
        """Fold one micro-batch of step ``step`` into that step's record (gradient accumulation).

        Its terms and trained tokens join the step's token-weighted terms and token count when
        :meth:`log` records the step's last micro-batch; a non-finite term is reported and replayed from
        this micro-batch at once. Returns the replay files written.
        """
        step = _check_int("step", step, 0)
        self.store.check_open()
        view = BatchView(batch, out)
        rec = StepRecord(step, [], False)
        for name in ("terms", "numerics"):
            if name in self.probes:
                self._run_probe(name, view, rec)
        self._micro = [(s, scalars) for s, scalars in self._micro if s == step]
        self._micro.append((step, rec.scalars))
        rec.scalars = {}
        self._write(view, rec)
        written, self._replays_written = self._replays_written, []
        return written

    def flush(self) -> None:
        """Write everything buffered to the run directory."""
        self.store.flush()
        self._since_flush = 0

    def close(self) -> None:
        """Flush, record the run's size in its metadata and close the files. Idempotent; never raises a
        write error (disk full): it warns, naming the run directory."""
        if self.store.closed:
            return
        atexit.unregister(self.close)
        try:
            self.store.flush()
            self.store.update_meta(stats=self.stats)
        except RecordWriteError as error:  # reported once more by store.close if the records are lost
            warnings.warn(f"{error} (the run's stats were not saved)", RuntimeWarning, stacklevel=2)
        self.store.close()

    @property
    def stats(self) -> dict[str, float]:
        """Steps logged and recorded, bytes written by this session and bytes per logged step."""
        written = self.store.bytes_written
        return {
            "steps_logged": self.steps_logged,
            "steps_recorded": self.steps_recorded,
            "bytes_written": written,
            "bytes_per_step": written / max(self.steps_logged, 1),
        }

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals ------------------------------------------------------------------------------------
    def _run_probe(self, name: str, view: BatchView, rec: StepRecord) -> None:
        """Run one probe; a probe that cannot record or that fails never stops training."""
        try:
            missing = PROBES[name](view, rec)
        except Exception as error:  # instrumentation must not kill a training run
            missing = f"failed at step {rec.step}: {type(error).__name__}: {error}"
            if name not in self._notes:
                warnings.warn(f"kdviz Recorder: probe {name!r} {missing}", RuntimeWarning, stacklevel=3)
        if missing and name not in self._notes:
            self._notes[name] = missing
            self.store.update_meta(notes=self._notes)

    def _choose(self, view: BatchView) -> list[Sample]:
        n = view.batch_size or 0
        ids = view.example_ids or [f"row{k}" for k in range(n)]
        if self.sample_ids is None:
            self.sample_ids = list(dict.fromkeys(ids))[: self.samples]
            self.store.update_meta(sample_ids=self.sample_ids)
        rows: list[int | None] = [ids.index(i) if i in ids else None for i in self.sample_ids]
        spare = iter(r for r in range(n) if r not in rows)
        chosen = [row if row is not None else next(spare, None) for row in rows]
        return [Sample(slot, row, ids[row]) for slot, row in enumerate(chosen) if row is not None]

    def _optimizer_scalars(self, rec: StepRecord, lr, grad_norms, optimizer) -> None:
        if lr is not None:
            rec.scalars["lr"] = float(lr)
        for name, value in (grad_norms or {}).items():
            rec.scalars[f"grad_norm/{name}"] = value if isinstance(value, torch.Tensor) else float(value)
        if optimizer is None:
            return
        groups = optimizer.param_groups
        for k, group in enumerate(groups):
            label = str(group.get("name", f"group{k}"))
            if lr is None:
                rec.scalars["lr" if len(groups) == 1 else f"lr/{label}"] = float(group["lr"])
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if grads and not grad_norms:
                rec.scalars[f"grad_norm/{label}"] = torch.nn.utils.get_total_norm(grads).float()

    def _write(self, view: BatchView, rec: StepRecord) -> None:
        now = time.time()
        self._write_scalars(rec, now)
        store, step = self.store, rec.step
        for summary in rec.head_tail:
            names, q = summary.statistics, summary.quantiles.cpu().numpy()
            columns = {
                "step": [step] * len(names),
                "space": [summary.space] * len(names),
                "statistic": names,
                "count": [summary.count] * len(names),
                "mean": summary.mean.cpu().numpy(),
            }
            for j, level in enumerate(QUANTILES):
                columns[quantile_column(level)] = q[:, j]
            store.append_rows(HEAD_TAIL, columns)
        for sample in rec.samples:
            self._write_tokens(view, rec, sample)
            if sample.example_id in rec.texts and sample.example_id not in self._texts_written:
                self._texts_written.add(sample.example_id)
                store.append_rows(
                    TEXTS,
                    {"example_id": [sample.example_id], "side": ["text"], "text": [rec.texts[sample.example_id]]},
                )
        for m in rec.matrices:
            reference = None if m.reference is None else m.reference.cpu().numpy()
            store.append_matrix(
                m.name, step, m.sample.slot, m.values.cpu().numpy(), m.row_tokens, m.col_tokens, reference, **m.info
            )
        for pairs in rec.vocab_map:
            k = min(len(pairs.teacher_ids), len(pairs.student_ids))
            columns = {
                "step": np.full(k, step),
                "sample": np.full(k, pairs.slot),
                "rank": np.arange(k),
                "teacher_id": pairs.teacher_ids[:k],
                "student_id": pairs.student_ids[:k],
            }
            for side, ids in (("teacher", pairs.teacher_ids[:k]), ("student", pairs.student_ids[:k])):
                if side in self.tokenizers:
                    columns[f"{side}_token"] = self.tokenizers[side].convert_ids_to_tokens([int(i) for i in ids])
            store.append_rows(VOCAB_MAP, columns)
        if rec.events:
            store.append_rows(
                EVENTS,
                {
                    "step": [step] * len(rec.events),
                    "kind": [e.kind for e in rec.events],
                    "name": [e.name for e in rec.events],
                    "detail": [e.detail for e in rec.events],
                },
            )
        for replay in rec.replays:
            self._save_replay(view, step, replay.term, replay.rows, replay.info)
        if rec.notes and any(self._notes.get(k) != v for k, v in rec.notes.items()):
            self._notes.update(rec.notes)
            store.update_meta(notes=self._notes)

    def _write_scalars(self, rec: StepRecord, now: float) -> None:
        if not rec.scalars:
            return
        names = list(rec.scalars)
        tensors = [n for n in names if isinstance(rec.scalars[n], torch.Tensor)]
        values = {n: rec.scalars[n] for n in names}
        if tensors:
            stacked = torch.stack([values[n].reshape(()).float().cpu() for n in tensors]).tolist()
            values.update(zip(tensors, stacked, strict=True))
        if "tokens" in values:
            self._tokens_seen += values.pop("tokens")
            values["tokens_seen"] = self._tokens_seen
        n = len(values)
        self.store.append_rows(
            SCALARS,
            {
                "step": np.full(n, rec.step),
                "name": list(values),
                "value": np.array(list(values.values()), dtype=np.float64),
                "wall_time": np.full(n, now),
            },
        )

    def _write_tokens(self, view: BatchView, rec: StepRecord, sample: Sample) -> None:
        columns = rec.tokens.get(sample.slot)
        if not columns:
            return
        length = next(iter(columns.values())).shape[-1]
        where = positions(view, "student", sample.row, length)
        predicted, read = view.labels_for("student", sample.row, where)
        index = torch.tensor(where, dtype=torch.long)
        table: dict[str, Any] = {
            "step": np.full(len(where), rec.step),
            "sample": np.full(len(where), sample.slot),
            "example_id": [sample.example_id] * len(where),
            "position": np.asarray(where),
            "token": predicted,
            "input_token": read,
        }
        for name, values in columns.items():
            table[name] = values.float().cpu()[index].numpy()
        for side, top in rec.top.get(sample.slot, {}).items():
            table[f"{side}_top{TOP_K}"] = self._top_json(top, index)
        self.store.append_rows(TOKENS, table)

    def _top_json(self, top: TopTokens, index: torch.Tensor) -> list[str]:
        """Per position of ``index``, ``[[token, p], ...]`` as JSON; ids stand in for tokens without a
        tokenizer."""
        ids, probs = top.ids.cpu()[index], top.probs.cpu()[index]
        tokenizer = self.tokenizers.get(top.vocab)
        flat = ids.flatten().tolist()
        names = tokenizer.convert_ids_to_tokens(flat) if tokenizer is not None else [f"#{i}" for i in flat]
        width = ids.shape[-1]
        return [
            json.dumps([[names[k * width + j], round(float(p), 4)] for j, p in enumerate(row)], ensure_ascii=False)
            for k, row in enumerate(probs.tolist())
        ]

    def _save_replay(self, view: BatchView, step: int, term: str, rows: list[int], info: dict) -> None:
        if term in self._replayed:
            return
        self._replayed.add(term)
        tensors = view.tensors(rows)
        for name, value in view.diagnostics.items():
            for key, tensor in diagnostic_tensors(name, value).items():
                if tensor.dim() >= 1 and tensor.shape[0] == view.batch_size:
                    tensors[f"out.{key}"] = tensor.detach()[rows]
        texts = [view.texts[r] for r in rows] if view.texts else []
        terms = {k: float(v.detach().float().mean()) for k, v in view.terms.items() if isinstance(v, torch.Tensor)}
        name = f"step{step:08d}-" + re.sub(r"[^\w.-]", "_", term)
        path = self.store.save_tensors(
            name, tensors, {**info, "step": step, "rows": rows, "texts": texts, "terms": terms}
        )
        self.store.update_meta(replays={**self.store.meta.get("replays", {}), term: path.name})
        self._replays_written.append(path)
