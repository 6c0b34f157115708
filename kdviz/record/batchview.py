"""Duck-typed access to a batch and a method's output, as the probes need them.

The recorder reads a :class:`kdviz.KDBatch`-like object by attribute name and never requires a field:
a missing field makes the probe that needs it record nothing (and say so once in the run metadata).
Fields used, per side ``student`` / ``teacher``: ``<side>_input_ids``, ``<side>_labels`` (Hugging Face,
unshifted) or ``<side>_mask`` (next-token mask, as :class:`KDBatch` provides), ``<side>_tokens``
(vocabulary strings); and ``texts``, ``example_ids``, ``target_alignment()`` / ``alignment``.

Positions follow docs/methods.md#conventions: position ``t`` predicts token ``t + 1``. Each position is
labelled with the token it predicts; ``input_token`` is the token it reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from kdviz.ops import IGNORE, next_token_targets, shift_alignment

SIDES = ("student", "teacher")


@dataclass
class RecordBatch:
    """The fields of a :class:`kdviz.KDBatch` that the probes read, for a training loop with its own batch
    type: build one per logged step and pass it to :meth:`kdviz.Recorder.log` (``alignment`` is the
    ``[B, T_s, T_t]`` ground truth between input tokens, or an identity for one tokenizer)."""

    student_input_ids: torch.Tensor
    student_labels: torch.Tensor
    teacher_input_ids: torch.Tensor
    teacher_labels: torch.Tensor
    alignment: torch.Tensor | None = None
    texts: list[str] = field(default_factory=list)
    student_tokens: list[list[str]] = field(default_factory=list)
    teacher_tokens: list[list[str]] = field(default_factory=list)
    example_ids: list[str] = field(default_factory=list)


def _tensor(value: Any) -> torch.Tensor | None:
    return value if isinstance(value, torch.Tensor) else None


class BatchView:
    """Cached, tolerant accessors over one ``(batch, out)`` pair."""

    def __init__(self, batch: Any, out: Any):
        self.batch = batch
        self.out = out
        self.terms: dict[str, torch.Tensor] = dict(getattr(out, "terms", None) or {})
        self.diagnostics: dict[str, Any] = dict(getattr(out, "diagnostics", None) or {})
        self._masks: dict[str, torch.Tensor | None] = {}

    @cached_property
    def batch_size(self) -> int | None:
        for side in SIDES:
            ids = self.ids(side)
            if ids is not None:
                return ids.shape[0]
        texts = self.texts
        return len(texts) if texts else None

    def ids(self, side: str) -> torch.Tensor | None:
        return _tensor(getattr(self.batch, f"{side}_input_ids", None))

    def mask(self, side: str) -> torch.Tensor | None:
        """``[B, T]`` bool: positions whose next-token prediction is trained (the response)."""
        if side not in self._masks:
            self._masks[side] = self._find_mask(side)
        return self._masks[side]

    def _find_mask(self, side: str) -> torch.Tensor | None:
        mask = _tensor(getattr(self.batch, f"{side}_mask", None))
        if mask is not None:
            return mask.bool()
        labels = _tensor(getattr(self.batch, f"{side}_labels", None))
        if labels is None:
            return None
        return next_token_targets(labels) != IGNORE

    @cached_property
    def texts(self) -> list[str] | None:
        texts = getattr(self.batch, "texts", None)
        return [str(t) for t in texts] if texts else None

    @cached_property
    def example_ids(self) -> list[str] | None:
        """One stable id per row: ``batch.example_ids`` when present, else a hash of the row's text."""
        ids = getattr(self.batch, "example_ids", None)
        if ids is not None:
            return [str(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        if self.texts:
            return [hashlib.sha1(t.encode()).hexdigest()[:12] for t in self.texts]
        return None

    def token_strings(self, side: str, row: int) -> list[str] | None:
        """Strings of the input tokens of ``row`` (unpadded length may be shorter than ``T``)."""
        tokens = getattr(self.batch, f"{side}_tokens", None)
        if tokens and row < len(tokens) and tokens[row] is not None:
            return [str(t) for t in tokens[row]]
        ids = self.ids(side)
        return None if ids is None else [str(i) for i in ids[row].tolist()]

    def labels_for(self, side: str, row: int, positions: list[int]) -> tuple[list[str], list[str]]:
        """``(predicted, read)`` token strings at ``positions`` of ``row``: tokens ``t + 1`` and ``t``."""
        strings = self.token_strings(side, row) or []

        def at(k: int) -> str:
            return strings[k] if 0 <= k < len(strings) else ""

        return [at(t + 1) for t in positions], [at(t) for t in positions]

    def reference(self, kind: str = "target") -> torch.Tensor | None:
        """``[B, T_s, T_t]`` ground truth, when the batch carries it: between predicted tokens
        (``kind="target"``) or between input tokens (``"input"``)."""
        raw = _tensor(getattr(self.batch, "alignment", None))
        if kind == "input":
            return raw
        shifted = getattr(self.batch, "target_alignment", None)
        if callable(shifted):
            return _tensor(shifted())
        return None if raw is None else shift_alignment(raw)

    def shares_positions(self) -> bool:
        """True when the teacher reads the student's tokens (one tokenization): teacher positions are student
        positions."""
        s, t = self.ids("student"), self.ids("teacher")
        return s is not None and t is not None and s.shape == t.shape and torch.equal(s, t.to(s.device))

    def tensors(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """Every tensor field of the batch, sliced to ``rows`` (for a replay file)."""
        names = getattr(type(self.batch), "__dataclass_fields__", None) or vars(self.batch)
        out = {}
        for name in names:
            value = getattr(self.batch, name, None)
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == self.batch_size:
                out[name] = value[rows]
        return out
