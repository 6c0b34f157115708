"""The data a KD method consumes (:class:`KDBatch`), what it returns (:class:`KDOutput`) and the
:class:`Method` protocol. Batches are built by :class:`kdviz.methods.KDCollator` (``kdviz/methods/collate.py``).

Conventions (docs/methods.md#conventions): labels follow Hugging Face -- ``labels[b, t] == input_ids[b, t]`` on
trained tokens, ``-100`` elsewhere -- and logits at position ``t`` predict token ``t + 1``. Methods work
on *next-token targets* ``targets[b, t] = labels[b, t + 1]`` (``-100`` in the last column), which have the
shape of the logits; :func:`next_token_targets` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Protocol, runtime_checkable

import torch

from kdviz.ops import IGNORE, next_token_targets, shift_alignment


@dataclass
class KDBatch:
    """A batch of (prompt, response) examples tokenised for a student and a teacher.

    ``B`` examples, right-padded to ``T_s`` student tokens and ``T_t`` teacher tokens. With one tokenizer
    the teacher fields are the student's tensors and ``T_t == T_s``.

    Tensors (all on one device; :meth:`to` moves them):

    - ``student_input_ids`` ``[B, T_s]`` long: the prompt tokens (preceded by the tokenizer's BOS, or
      rendered with its chat template), then the response tokens, then EOS, then padding.
    - ``student_attention_mask`` ``[B, T_s]`` long: 1 on real tokens, 0 on padding.
    - ``student_labels`` ``[B, T_s]`` long, Hugging Face convention (unshifted): equal to
      ``student_input_ids`` on response tokens (EOS included), ``-100`` on the prompt, its special tokens,
      padding, and response tokens cut by truncation (see :class:`KDCollator`). Next-token targets:
      :attr:`student_targets`.
    - ``student_offsets`` ``[B, T_s, 2]`` long: character span ``[start, end)`` of each token in
      ``texts[b]``; ``start == end`` (stored as ``(0, 0)``) for tokens without characters: BOS, EOS,
      chat-template scaffolding, padding. Byte pieces of one character (``<0xF0>``, byte-level ``ðŁ``)
      share that character's span.
    - ``teacher_input_ids``, ``teacher_attention_mask``, ``teacher_labels``, ``teacher_offsets``: the same
      for the teacher tokenizer, ``[B, T_t]`` (``[B, T_t, 2]``).
    - ``alignment`` ``[B, T_s, T_t]`` bool: the ground truth (docs/methods.md#ground-truth-alignment) between
      *input tokens*:
      ``alignment[b, i, j]`` is True when student token ``i`` and teacher token ``j`` share a
      (non-whitespace) UTF-8 byte of ``texts[b]`` (:func:`kdviz.align.overlap_matrix` on byte offsets, so
      byte pieces align with the pieces that cover the same bytes). False on padding and special tokens.
      Between *predicted tokens* (the rows/columns of logits and of CMA attention) use
      :meth:`target_alignment`.

    Display (Python lists, not moved by :meth:`to`):

    - ``texts[b]``: ``prompt + response``, the string the offsets index.
    - ``response_starts[b]``: the character where the response begins (``len(prompt)``).
    - ``student_tokens[b]`` / ``teacher_tokens[b]``: vocabulary strings of the unpadded tokens.
    - ``same_tokenizer``: True when the collator had one tokenizer.
    """

    student_input_ids: torch.Tensor
    student_attention_mask: torch.Tensor
    student_labels: torch.Tensor
    student_offsets: torch.Tensor
    teacher_input_ids: torch.Tensor
    teacher_attention_mask: torch.Tensor
    teacher_labels: torch.Tensor
    teacher_offsets: torch.Tensor
    alignment: torch.Tensor
    texts: list[str] = field(default_factory=list)
    response_starts: list[int] = field(default_factory=list)
    student_tokens: list[list[str]] = field(default_factory=list)
    teacher_tokens: list[list[str]] = field(default_factory=list)
    same_tokenizer: bool = False

    def __post_init__(self) -> None:
        for side in ("student", "teacher"):
            ids = getattr(self, f"{side}_input_ids")
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                raise ValueError(f"{side}_input_ids must be a [B, T] tensor, got {_describe(ids)}")
            if ids.is_floating_point() or ids.dtype == torch.bool:
                raise TypeError(f"{side}_input_ids must hold integer token ids, got dtype {ids.dtype}")
            for name, shape in (
                (f"{side}_attention_mask", ids.shape),
                (f"{side}_labels", ids.shape),
                (f"{side}_offsets", (*ids.shape, 2)),
            ):
                value = getattr(self, name)
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
                    raise ValueError(f"{name} must have shape {tuple(shape)}, got {_describe(value)}")
                if value.is_floating_point():
                    raise TypeError(f"{name} must be an integer tensor, got dtype {value.dtype}")
                if value.device != ids.device:
                    raise ValueError(f"{name} is on {value.device} but {side}_input_ids on {ids.device}")
        b, t_s = self.student_input_ids.shape
        b_t, t_t = self.teacher_input_ids.shape
        if b_t != b:
            raise ValueError(f"student has {b} examples but teacher has {b_t}")
        if tuple(self.alignment.shape) != (b, t_s, t_t) or self.alignment.dtype != torch.bool:
            raise ValueError(
                f"alignment must be a bool tensor of shape {(b, t_s, t_t)}, got {_describe(self.alignment)}"
            )
        for name in ("teacher_input_ids", "alignment"):
            device = getattr(self, name).device
            if device != self.student_input_ids.device:
                raise ValueError(
                    f"{name} is on {device}, the student tensors on {self.student_input_ids.device}; "
                    "build the batch on one device and move it with batch.to()"
                )

    @property
    def batch_size(self) -> int:
        return self.student_input_ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.student_input_ids.device

    @property
    def student_targets(self) -> torch.Tensor:
        """``[B, T_s]``: the token each student position predicts (``-100`` where not trained)."""
        return next_token_targets(self.student_labels)

    @property
    def teacher_targets(self) -> torch.Tensor:
        """``[B, T_t]``: the token each teacher position predicts (``-100`` where not trained)."""
        return next_token_targets(self.teacher_labels)

    @property
    def student_mask(self) -> torch.Tensor:
        """``[B, T_s]`` bool: student positions whose prediction is trained (the response)."""
        return self.student_targets != IGNORE

    @property
    def teacher_mask(self) -> torch.Tensor:
        """``[B, T_t]`` bool: teacher positions whose prediction is trained (the response)."""
        return self.teacher_targets != IGNORE

    def target_alignment(self) -> torch.Tensor:
        """``[B, T_s, T_t]`` ground truth between predicted tokens: ``alignment`` shifted by one on both axes.

        Entry ``[b, i, j]`` says whether the token student position ``i`` predicts (token ``i + 1``)
        overlaps the token teacher position ``j`` predicts. This is the reference for CMA's
        ``t2s_weight`` and for position-level transport plans.
        """
        return shift_alignment(self.alignment)

    def shares_tokenization(self) -> bool:
        """True when student and teacher tokens are identical (one tokenizer, or two identical ones)."""
        return self.same_tokenizer or (
            self.student_input_ids.shape == self.teacher_input_ids.shape
            and torch.equal(self.student_input_ids, self.teacher_input_ids)
            and torch.equal(self.student_labels, self.teacher_labels)
        )

    def to(self, device: torch.device | str) -> KDBatch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


@dataclass
class KDOutput:
    """What every method returns.

    - ``loss``: the scalar to backpropagate.
    - ``terms``: ``dict[str, Tensor]`` of detached scalars: every loss part and logged metric.
    - ``diagnostics``: detached per-token / per-pair data by name, each a typed record of
      :mod:`kdviz.methods.diagnostics` (e.g. ``t2s_weight``, an ``Alignment`` ``[B, T_s, T_t]``;
      ``token_kd``, ``TokenValues`` ``[B, T_s]``; the logits, ``Logits``) or a plain tensor (masks, token
      ids). Every matrix has student rows and teacher columns. The recorder's probes dispatch on the
      records' types. Logits appear as references, not copies.
    - ``parts``: the loss parts as scalars still attached to the graph (same names as in ``terms``), to
      backpropagate or differentiate one part on its own, e.g. to see which parameters it trains.
      Optional for a method; never store them (they keep the graph alive).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    diagnostics: dict[str, object]
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """A KD method: an ``nn.Module`` called as ``method(batch, student_outputs=None, teacher_outputs=None)``.

    Without outputs it runs the student (with gradients) and the teacher (eval mode, no gradients) on the
    batch itself; given Hugging Face outputs (``.logits``, and ``.hidden_states`` where the method needs
    them) computed elsewhere, it uses them instead. ``method.parameters()`` holds only the method's own
    parameters (projectors), never the models', so give them their own optimizer parameter group.
    """

    def __call__(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput: ...
