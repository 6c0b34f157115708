"""Token rows: the preparation every same-vocabulary loss shares (docs/methods.md#conventions).

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

from dataclasses import dataclass
from functools import cached_property

import torch

from kdviz.ops.budget import compute_dtype
from kdviz.ops.checks import check_finite


def masked_exp(log: torch.Tensor, keep: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(log)`` where ``keep`` (every entry when None), exactly 0 elsewhere: the probabilities of
    log-probabilities whose entries outside the support hold placeholders (see :class:`Rows`). Written into
    ``out`` when given."""
    e = torch.exp(log, out=out)
    return e if keep is None else torch.where(keep, e, e.new_zeros(()), out=out)


class Scratch:
    """The ``[rows, V]`` work buffers of one chunked call, reused chunk after chunk.

    A chunk takes buffers one after another (:meth:`take`); :meth:`start` makes them all free again for the
    next chunk. A buffer is allocated only the first time a chunk needs that many of its dtype, so a call
    makes a fixed number of large allocations whatever its number of chunks (fresh pages are slow to fault
    in on a CPU, and a GPU's allocator is spared the churn).
    """

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        self.shape, self.dtype, self.device = (rows, vocab), dtype, device
        self.buffers: dict[torch.dtype, list[torch.Tensor]] = {}
        self.used: dict[torch.dtype, int] = {}
        self.rows = 0

    def start(self, rows: int) -> None:
        """Begin a chunk of ``rows`` rows (at most the ``rows`` given at construction)."""
        self.rows, self.used = rows, {}

    def take(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A ``[rows, V]`` buffer of ``dtype`` (the compute dtype by default) that no other tensor of this chunk
        uses (its contents are arbitrary)."""
        dtype = dtype or self.dtype
        buffers, used = self.buffers.setdefault(dtype, []), self.used.get(dtype, 0)
        if used == len(buffers):
            buffers.append(torch.empty(self.shape, dtype=dtype, device=self.device))
        self.used[dtype] = used + 1
        return buffers[used][: self.rows]


def _take(scratch: Scratch | None) -> torch.Tensor | None:
    return None if scratch is None else scratch.take()


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

    ``scratch`` holds the chunked engine's reused work buffers (no autograd graph there); a formula writes
    its ``[N, V]`` temporaries where :meth:`out` says, e.g. ``torch.sub(r.logp, r.logq, out=r.out())``.
    """

    logp: torch.Tensor
    logq: torch.Tensor
    keep: torch.Tensor | None
    want_grad: bool = False
    teacher_only: torch.Tensor | None = None
    student_only: torch.Tensor | None = None
    scratch: Scratch | None = None

    @cached_property
    def p(self) -> torch.Tensor:
        return self.exp(self.logp)

    @cached_property
    def q(self) -> torch.Tensor:
        return self.exp(self.logq)

    def out(self, overwrite: torch.Tensor | None = None) -> torch.Tensor | None:
        """The ``out=`` of a formula's next ``[N, V]`` temporary: under the chunked engine, ``overwrite``
        (a temporary of the formula that is not needed any more) or else a free work buffer; None (a fresh
        tensor, differentiable) on the plain path."""
        if self.scratch is None:
            return None
        return self.scratch.take() if overwrite is None else overwrite

    def exp(self, log: torch.Tensor, overwrite: torch.Tensor | None = None) -> torch.Tensor:
        """``exp`` of a per-entry log-space term, 0 outside the support (:func:`masked_exp`); under the chunked
        engine written over ``overwrite`` when given (e.g. ``log`` itself, when it is not needed any more)."""
        return masked_exp(log, self.keep, out=self.out(overwrite))

    def through_softmax(self, grad_logq: torch.Tensor) -> torch.Tensor:
        """Chain ``g = dL/d(log q)`` through ``log q = log_softmax(u)``: ``dL/du = g - q sum_v g``
        (written over ``g``, a temporary of the formula, under the chunked engine)."""
        total = grad_logq.sum(-1, keepdim=True)
        return torch.addcmul(grad_logq, self.q, total, value=-1.0, out=self.out(grad_logq))

    def vsum(self, term: torch.Tensor) -> torch.Tensor:
        """Sum a per-entry term over the vocabulary, counting only entries in the support."""
        return (term if self.keep is None else torch.where(self.keep, term, 0.0)).sum(-1)

    def detach(self) -> Rows:
        """The same rows without their graph, with nothing cached (the engine's work buffers are shared)."""
        return Rows(
            self.logp.detach(), self.logq.detach(), self.keep, self.want_grad, self.teacher_only, self.student_only,
            self.scratch,
        )


def _has_neg_inf(x: torch.Tensor) -> bool:
    """One reduction pass, no boolean temporary (NaN gives False: it is reported from the values)."""
    return x.numel() > 0 and bool(x.detach().min() == float("-inf"))


def log_softmax(z: torch.Tensor, tau: float, scratch: Scratch | None = None) -> torch.Tensor:
    """``log softmax(z / tau)`` over the last axis, clamped to the dtype's most negative finite value;
    written into ``scratch``'s buffers when given (no autograd).

    At ``tau < 1`` the logits are shifted by their (detached) row maximum before the division, so a large
    finite logit cannot overflow to ``-inf`` (and be mistaken for padding) or to ``+inf`` (NaN).
    """
    out = _unclamped_log_softmax(z, tau, scratch)
    lowest = torch.finfo(out.dtype).min
    return out.clamp(min=lowest) if out.requires_grad else out.clamp_(min=lowest)  # in place: no extra buffer


def _unclamped_log_softmax(z: torch.Tensor, tau: float, scratch: Scratch | None) -> torch.Tensor:
    if tau < 1:
        top = z.detach().amax(-1, keepdim=True)
        shifted = torch.sub(z, torch.where(torch.isfinite(top), top, 0.0), out=_take(scratch))
        z = torch.div(shifted, tau, out=None if scratch is None else shifted)
    elif tau != 1:
        z = torch.div(z, tau, out=_take(scratch))
    return torch.log_softmax(z, -1, out=_take(scratch))


def _all_finite(x: torch.Tensor) -> bool:
    """One reduction pass, no boolean temporary (NaN gives False)."""
    return x.numel() == 0 or bool(torch.isfinite(x.detach().min()))


def _check_nonempty(keep: torch.Tensor, what: str) -> None:
    empty = ~keep.any(-1)
    if bool(empty.any()):
        raise ValueError(f"valid row {int(empty.nonzero()[0])} has no vocabulary entry that is finite in {what}; "
                         "mask that position out")


def _upcast(z: torch.Tensor, dtype: torch.dtype, scratch: Scratch | None) -> torch.Tensor:
    if z.dtype == dtype or scratch is None:
        return z.to(dtype)
    return scratch.take().copy_(z)


def make_rows(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, want_grad: bool = False, support: str = "shared",
    scratch: Scratch | None = None,
) -> Rows:
    """Build :class:`Rows` from already-checked ``[N, V]`` logits of valid tokens (any float dtype).
    ``scratch`` (the chunked engine's, no autograd) starts a chunk: the rows and the formula's temporaries
    are written into its buffers."""
    dtype = compute_dtype(student.dtype)
    if scratch is not None:
        scratch.start(student.shape[0])
    zs, zt = _upcast(student, dtype, scratch), _upcast(teacher, dtype, scratch)
    # The common case: every log-probability is finite (no -inf logit, no underflow), so there is no support
    # mask and nothing to clamp. Otherwise (or on a NaN) the log-softmaxes are taken again below.
    logp, logq = _unclamped_log_softmax(zt, tau, scratch), _unclamped_log_softmax(zs, tau, scratch)
    if _all_finite(logp) and _all_finite(logq):
        return Rows(logp, logq, None, want_grad, scratch=scratch)
    if not (_has_neg_inf(zs) or _has_neg_inf(zt)):  # no support mask: an underflow is clamped (or a NaN reported)
        return Rows(log_softmax(zt, tau, scratch), log_softmax(zs, tau, scratch), None, want_grad, scratch=scratch)
    neg_s, neg_t = torch.isneginf(zs), torch.isneginf(zt)
    if support == "shared":
        keep = ~(neg_s | neg_t)
        _check_nonempty(keep, "both student_logits and teacher_logits")
        neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=zs.device)
        logq = log_softmax(torch.where(keep, zs, neg_inf), tau)
        logp = log_softmax(torch.where(keep, zt, neg_inf), tau)
        return Rows(torch.where(keep, logp, 0.0), torch.where(keep, logq, 0.0), keep, want_grad, scratch=scratch)
    _check_nonempty(~neg_s, "student_logits")
    _check_nonempty(~neg_t, "teacher_logits")
    both = neg_s & neg_t
    keep = ~both if bool(both.any()) else None
    logp, logq = log_softmax(zt, tau, scratch), log_softmax(zs, tau, scratch)
    if keep is not None:
        logp, logq = torch.where(keep, logp, 0.0), torch.where(keep, logq, 0.0)
    teacher_only, student_only = neg_t & ~neg_s, neg_s & ~neg_t
    return Rows(
        logp, logq, keep, want_grad,
        teacher_only if bool(teacher_only.any()) else None,
        student_only if bool(student_only.any()) else None,
        scratch,
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
