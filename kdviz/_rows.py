"""Token rows: the checks and the preparation every same-vocabulary loss shares (docs/methods.md#conventions).

A loss sees two logit tensors ``[..., V]`` and a mask over their leading shape. This module turns them
into *rows*: the valid tokens only, upcast to float32 (float64 stays float64), at temperature ``tau``,
as log-probabilities over a *support* chosen by ``support``:

- ``"full"`` (the true divergence): each side is normalised over its own finite entries. An entry that is
  ``-inf`` on both sides is dropped; one that is ``-inf`` on one side only has probability exactly 0 on
  that side and stays in the other side's distribution, so that, e.g., the student's mass outside a
  top-k teacher's support is penalised. Divergences that take the log of that zero are infinite there.
- ``"shared"`` (renormalised): every entry that is ``-inf`` on either side is removed from both
  distributions, and both are renormalised over the entries finite on both sides.

Log-probabilities are computed as ``(z - max z) / tau - LSE`` (so ``z / tau`` cannot overflow at a small
temperature) and clamped to the dtype's most negative finite value: a probability that underflows is
exactly 0, with a finite logarithm, so ``0 * log 0`` terms are exactly 0 and no NaN reaches a gradient.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cached_property

import torch

REDUCTIONS = ("mean", "sum", "none")
SUPPORTS = ("full", "shared")


def _plain_number(value):
    """A one-element tensor's Python number; anything else unchanged."""
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def real_number(name: str, value) -> float:
    """``value`` as a float: a finite real number (Python, NumPy or a one-element tensor), else a
    ``ValueError`` naming ``name``."""
    value = _plain_number(value)
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_tau(tau) -> float:
    """The temperature as a float: a positive finite number (Python, NumPy or a one-element tensor)."""
    value = _plain_number(tau)
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    return float(value)


def check_support(support: str) -> str:
    if support not in SUPPORTS:
        raise ValueError(
            f"support must be one of {SUPPORTS} ('full': the true divergence, 'shared': both sides renormalised "
            f"over the entries finite on both), got {support!r}"
        )
    return support


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every input dtype except float64, which is kept (gradcheck needs it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_pair(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None,
    trim_vocab: bool | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the shapes, dtypes and devices of a same-vocabulary pair; return ``(s, t, mask)``.

    ``trim_vocab=True`` drops the trailing columns of the larger vocabulary (padded LM-head rows, e.g.
    151936 vs 152064); an integer keeps the first ``trim_vocab`` columns of both.
    """
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 1 or x.shape[-1] == 0:
            raise ValueError(f"{name} must have shape [..., V] with V >= 1, got {tuple(x.shape)}")
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"student_logits is on {student_logits.device} but teacher_logits is on "
            f"{teacher_logits.device}; move both to the same device"
        )
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    if trim_vocab is True:
        trim_vocab = min(v_s, v_t)
    elif trim_vocab is not None and trim_vocab is not False:
        if not (isinstance(trim_vocab, numbers.Integral) and trim_vocab > 0):
            raise ValueError(
                f"trim_vocab must be None, True (drop the larger vocabulary's extra columns) or a positive "
                f"number of columns to keep, got {trim_vocab!r}"
            )
        trim_vocab = int(trim_vocab)
    if trim_vocab:
        if trim_vocab > min(v_s, v_t):
            raise ValueError(f"trim_vocab={trim_vocab} exceeds the vocabularies (student {v_s}, teacher {v_t})")
        student_logits, teacher_logits = student_logits[..., :trim_vocab], teacher_logits[..., :trim_vocab]
    elif v_s != v_t:
        raise ValueError(
            f"vocabulary sizes differ: student_logits has V={v_s}, teacher_logits has V={v_t}. "
            "If the difference is only padded LM-head rows, pass trim_vocab=True (or trim_vocab=<n>); "
            "if the tokenizers differ, use a cross-tokenizer method (kdviz.align, kdviz.methods)."
        )
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must share their leading (token) shape"
        )
    lead = student_logits.shape[:-1]
    if mask is None:
        mask = torch.ones(lead, dtype=torch.bool, device=student_logits.device)
    else:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.shape != lead:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected the logits' leading shape {tuple(lead)}")
        if mask.device != student_logits.device:
            raise ValueError(f"mask is on {mask.device}, the logits on {student_logits.device}")
        if mask.dtype != torch.bool:
            if mask.is_floating_point() or ((mask != 0) & (mask != 1)).any():
                raise ValueError("mask must be boolean (or integers 0/1), e.g. labels != -100")
            mask = mask.bool()
    return student_logits, teacher_logits, mask


def check_options(
    tau, reduction: str, num_items: int | float | torch.Tensor | None, reductions: tuple[str, ...] = REDUCTIONS
) -> float:
    """Validate the shared options; return ``tau`` as a float."""
    tau = check_tau(tau)
    if reduction not in reductions:
        raise ValueError(f"reduction must be one of {reductions}, got {reduction!r}")
    if num_items is not None and reduction != "mean":
        raise ValueError(f"num_items is the denominator of reduction='mean'; it means nothing with {reduction!r}")
    if num_items is not None:
        value = _plain_number(num_items)
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
            raise ValueError(
                f"num_items must be a positive finite number (the global count of valid tokens), got {num_items!r}"
            )
    return tau


def check_finite(name: str, rows: torch.Tensor, positions: torch.Tensor) -> None:
    """Raise on NaN or +inf among the valid rows, naming the first bad index in the caller's shape.

    ``positions[i]`` is the index (in the caller's leading shape) of row ``i``.
    """
    if rows.numel() == 0 or bool(rows.amax() < float("inf")):  # one pass; a NaN makes the maximum NaN
        return
    bad = torch.isnan(rows) | (rows == float("inf"))
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        kind = "NaN" if torch.isnan(rows[row, col]) else "+inf"
        index = (*positions[row].tolist(), col)
        raise ValueError(f"{name} contains {kind} at index {index}; logits must be finite or -inf")


def check_values(values: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor) -> None:
    """Raise when a per-row value is not finite: first for a NaN/+inf input, else as an infinite divergence."""
    if bool(torch.isfinite(values).all()):
        return
    check_finite("student_logits", student.detach(), positions)
    check_finite("teacher_logits", teacher.detach(), positions)
    row = int((~torch.isfinite(values)).nonzero()[0])
    value, index = float(values[row].detach()), tuple(positions[row].tolist())
    raise ValueError(
        f"the divergence is {value} at the token with index {index}: one side "
        "gives probability 0 (a -inf logit, or one so far below the others that it underflows) to an entry "
        "the other side does not, and this divergence takes the logarithm of that 0. For a top-k or filtered "
        "teacher pass support='shared' (both distributions renormalised over the entries finite on both "
        "sides), or use a divergence that stays finite there (fkl for a filtered teacher, js, tvd, sfkl, "
        "srkl with a > 0); mask the position out if it should not be trained; float64 logits if the values "
        "only overflow float32"
    )


@dataclass
class Rows:
    """Valid token rows of a teacher/student pair, in log space, ready for a divergence formula.

    ``logp`` (teacher) and ``logq`` (student) are log-softmax at temperature ``tau`` over the support
    (module docstring), clamped to the dtype's most negative finite value where a probability is 0.
    Entries outside the support (``keep`` False) hold 0 so that any arithmetic on them is finite, and
    every sum over the vocabulary goes through :meth:`vsum`, which drops them. ``keep`` is None when
    every entry is in the support. Under ``support="full"``, ``teacher_only`` marks the entries where
    only the teacher's logit is ``-inf`` (``p = 0 < q``) and ``student_only`` the converse (None when
    there are none): divergences that take ``log p`` (or ``log q``) there are infinite.

    ``want_grad`` asks a formula for its closed-form gradient with respect to the scaled student logits
    ``z / tau`` next to its value (the chunked engine's fast path); the plain path leaves it False and
    lets autograd differentiate.
    """

    logp: torch.Tensor
    logq: torch.Tensor
    keep: torch.Tensor | None
    want_grad: bool = False
    teacher_only: torch.Tensor | None = None
    student_only: torch.Tensor | None = None

    @cached_property
    def p(self) -> torch.Tensor:
        return self._exp(self.logp)

    @cached_property
    def q(self) -> torch.Tensor:
        return self._exp(self.logq)

    def _exp(self, log: torch.Tensor) -> torch.Tensor:
        return log.exp() if self.keep is None else torch.where(self.keep, log.exp(), 0.0)

    def through_softmax(self, grad_logq: torch.Tensor) -> torch.Tensor:
        """Chain ``g = dL/d(log q)`` through ``log q = log_softmax(u)``: ``dL/du = g - q sum_v g``."""
        return torch.addcmul(grad_logq, self.q, grad_logq.sum(-1, keepdim=True), value=-1.0)

    def vsum(self, term: torch.Tensor) -> torch.Tensor:
        """Sum a per-entry term over the vocabulary, counting only entries in the support."""
        return (term if self.keep is None else torch.where(self.keep, term, 0.0)).sum(-1)

    def detach(self) -> Rows:
        return Rows(
            self.logp.detach(), self.logq.detach(), self.keep, self.want_grad, self.teacher_only, self.student_only
        )


def _has_neg_inf(x: torch.Tensor) -> bool:
    """One reduction pass, no boolean temporary (NaN gives False: it is reported from the values)."""
    return x.numel() > 0 and bool(x.detach().min() == float("-inf"))


def log_softmax(z: torch.Tensor, tau: float) -> torch.Tensor:
    """``log softmax(z / tau)`` over the last axis, clamped to the dtype's most negative finite value.

    At ``tau < 1`` the logits are shifted by their (detached) row maximum before the division, so a large
    finite logit cannot overflow to ``-inf`` (and be mistaken for padding) or to ``+inf`` (NaN).
    """
    if tau < 1:
        top = z.detach().amax(-1, keepdim=True)
        z = (z - torch.where(torch.isfinite(top), top, 0.0)) / tau
    elif tau != 1:
        z = z / tau
    out = torch.log_softmax(z, -1)
    lowest = torch.finfo(out.dtype).min
    return out.clamp(min=lowest) if out.requires_grad else out.clamp_(min=lowest)  # in place: no extra buffer


def _check_nonempty(keep: torch.Tensor, what: str) -> None:
    empty = ~keep.any(-1)
    if bool(empty.any()):
        raise ValueError(f"valid row {int(empty.nonzero()[0])} has no vocabulary entry that is finite in {what}; "
                         "mask that position out")


def make_rows(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, want_grad: bool = False, support: str = "shared"
) -> Rows:
    """Build :class:`Rows` from already-checked ``[N, V]`` logits of valid tokens (any float dtype)."""
    dtype = compute_dtype(student.dtype)
    zs, zt = student.to(dtype), teacher.to(dtype)
    if not (_has_neg_inf(zs) or _has_neg_inf(zt)):  # the common case: no support mask at all
        return Rows(log_softmax(zt, tau), log_softmax(zs, tau), None, want_grad)
    neg_s, neg_t = torch.isneginf(zs), torch.isneginf(zt)
    if support == "shared":
        keep = ~(neg_s | neg_t)
        _check_nonempty(keep, "both student_logits and teacher_logits")
        neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=zs.device)
        logq = log_softmax(torch.where(keep, zs, neg_inf), tau)
        logp = log_softmax(torch.where(keep, zt, neg_inf), tau)
        return Rows(torch.where(keep, logp, 0.0), torch.where(keep, logq, 0.0), keep, want_grad)
    _check_nonempty(~neg_s, "student_logits")
    _check_nonempty(~neg_t, "teacher_logits")
    both = neg_s & neg_t
    keep = ~both if bool(both.any()) else None
    logp, logq = log_softmax(zt, tau), log_softmax(zs, tau)
    if keep is not None:
        logp, logq = torch.where(keep, logp, 0.0), torch.where(keep, logq, 0.0)
    teacher_only, student_only = neg_t & ~neg_s, neg_s & ~neg_t
    return Rows(
        logp, logq, keep, want_grad,
        teacher_only if bool(teacher_only.any()) else None,
        student_only if bool(student_only.any()) else None,
    )


def gather_rows(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The valid rows ``[N, V]`` of both sides, after the NaN/+inf check, and their positions ``[N, ndim-1]``."""
    v = student_logits.shape[-1]
    positions = mask.nonzero()
    s = student_logits[mask].reshape(-1, v)
    t = teacher_logits[mask].reshape(-1, v)
    check_finite("student_logits", s.detach(), positions)
    check_finite("teacher_logits", t.detach(), positions)
    return s, t, positions


def scatter_rows(values: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Put per-row values back into the mask's shape; positions outside the mask get ``fill``."""
    out = torch.full(mask.shape, fill, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask, values)


def reduce(
    per_token: torch.Tensor, mask: torch.Tensor, reduction: str, num_items: int | float | torch.Tensor | None
) -> torch.Tensor:
    """``mean``: sum / max(count, 1) (or / num_items); ``sum``; ``none``: the per-token tensor (0 where masked)."""
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    count = num_items if num_items is not None else mask.sum().clamp(min=1)
    return total / count
