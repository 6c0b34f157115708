"""Typed diagnostics: what a method saw, with the schema the recorder's probes dispatch on.

A method's ``KDOutput.diagnostics`` maps names to these frozen records (and to plain tensors, such as masks
and token ids, that the probes leave alone and replays keep). The probes find what to record by the
record's type, never by its name, so a new method is recorded as soon as it returns these types.

**One orientation.** Every matrix is ``[B, T_s, T_t]``: student positions as rows, teacher positions as
columns. A matrix whose distributions run along the other axis says so (``Alignment.over``) instead of
being stored transposed.

- :class:`Logits` ``[B, T, V]``: a model's next-token logits in one side's positions and vocabulary.
- :class:`TokenValues` ``[B, T]``: a per-position quantity (a per-token loss) on one side's positions.
- :class:`TokenEvents` ``[B, T]``: per-position flags the numerics probe counts (e.g. AKL's 0/0 weights).
- :class:`Alignment` ``[B, T_s, T_t]``: a soft (attention) or hard (pairing, DTW path) alignment.
- :class:`Transport` ``[B, T_s, T_t]``: an optimal-transport plan with its cost matrix.
- :class:`RankPairs` ``[B, k]``: rank ``i`` of the student's vocabulary facing rank ``i`` of the teacher's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch

Side = Literal["student", "teacher"]
SIDES = ("student", "teacher")


def _check(record: object, name: str, value: object, dim: int) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != dim:
        got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{type(record).__name__}.{name} must be a {dim}-d tensor, got {got}")


def _choice(record: object, name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{type(record).__name__}.{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class Logits:
    """Next-token logits ``[B, T, V]`` of ``model``, in the positions and vocabulary of ``space``.

    ``Logits(z_s, "student", "student")`` is the student itself; ``Logits(z, "teacher", "student")`` the
    teacher projected into the student's positions and vocabulary (DSKD/CMA's ``t2s_logits``);
    ``Logits(z, "student", "teacher")`` the student projected into the teacher's (``s2t_logits``).
    """

    logits: torch.Tensor
    model: Side
    space: Side

    def __post_init__(self) -> None:
        _check(self, "logits", self.logits, 3)
        _choice(self, "model", self.model, SIDES)
        _choice(self, "space", self.space, SIDES)


@dataclass(frozen=True)
class TokenValues:
    """A per-position quantity ``[B, T]`` (e.g. a per-token loss) on the positions of ``side``."""

    values: torch.Tensor
    side: Side

    def __post_init__(self) -> None:
        _check(self, "values", self.values, 2)
        _choice(self, "side", self.side, SIDES)


@dataclass(frozen=True)
class TokenEvents:
    """Per-position flags ``[B, T]`` on ``side``; the numerics probe records their count as
    ``numerics/<event>``."""

    flags: torch.Tensor
    side: Side
    event: str

    def __post_init__(self) -> None:
        _check(self, "flags", self.flags, 2)
        _choice(self, "side", self.side, SIDES)


@dataclass(frozen=True)
class Alignment:
    """An alignment ``weights [B, T_s, T_t]`` between student rows and teacher columns.

    - ``kind``: ``"soft"`` (attention weights) or ``"hard"`` (0/1: a position pairing, a DTW path).
    - ``reference``: the ground truth it is scored against: ``"target"`` when its positions stand for the
      tokens they predict (:meth:`kdviz.KDBatch.target_alignment`), ``"input"`` when they stand for the
      tokens they read (``KDBatch.alignment``).
    - ``over``: the side each distribution runs over. ``"teacher"`` (default): each student row is a
      distribution over teacher columns (CMA's ``t2s_weight``). ``"student"``: each teacher column is a
      distribution over student rows (CMA's ``s2t_weight``, computed as teacher queries over student keys).
      Scores are taken along the distributions: per student row, or per teacher column.
    """

    weights: torch.Tensor
    kind: Literal["soft", "hard"]
    reference: Literal["target", "input"] = "target"
    over: Side = "teacher"

    def __post_init__(self) -> None:
        _check(self, "weights", self.weights, 3)
        _choice(self, "kind", self.kind, ("soft", "hard"))
        _choice(self, "reference", self.reference, ("target", "input"))
        _choice(self, "over", self.over, SIDES)


@dataclass(frozen=True)
class Transport:
    """An optimal-transport plan ``plan [B, T_s, T_t]`` (student rows, teacher columns, 0 outside the
    transported positions), its cost matrix ``cost`` of the same shape, and optionally the transport cost
    ``<P, C>`` per sequence ``sequence_cost [B]``. A plan is also a soft alignment, scored per student row
    against the predicted tokens' ground truth."""

    plan: torch.Tensor
    cost: torch.Tensor
    sequence_cost: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check(self, "plan", self.plan, 3)
        if tuple(self.cost.shape) != tuple(self.plan.shape):
            raise ValueError(f"Transport.cost has shape {tuple(self.cost.shape)}, plan {tuple(self.plan.shape)}")
        if self.sequence_cost is not None and tuple(self.sequence_cost.shape) != tuple(self.plan.shape[:1]):
            raise ValueError(f"Transport.sequence_cost must be [B] = {tuple(self.plan.shape[:1])}")


@dataclass(frozen=True)
class RankPairs:
    """A soft vocabulary map ``[B, k]``: ``student_ids[b, i]`` (the student's ``i``-th ranked token id)
    faces ``teacher_ids[b, i]``."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor

    def __post_init__(self) -> None:
        _check(self, "student_ids", self.student_ids, 2)
        _check(self, "teacher_ids", self.teacher_ids, 2)


Diagnostic = Logits | TokenValues | TokenEvents | Alignment | Transport | RankPairs


def diagnostic_tensors(name: str, value: object) -> dict[str, torch.Tensor]:
    """The tensors of one diagnostic by name: ``{name: t}`` for a plain tensor or a record with one
    tensor, ``{"name.field": t, ...}`` for a record with several (for replays and ``.to()``-like uses)."""
    if isinstance(value, torch.Tensor):
        return {name: value}
    if not isinstance(value, Diagnostic):
        return {}
    tensors = {f.name: getattr(value, f.name) for f in fields(value)}
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:
        return {name: next(iter(tensors.values()))}
    return {f"{name}.{k}": v for k, v in tensors.items()}
