"""Argument checks shared by the losses: numbers, options, logit pairs, and non-finite values named by index.

Every check raises a ``ValueError`` (or ``TypeError``) naming the argument and what was expected.
"""

from __future__ import annotations

import math
import numbers

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


def positive_number(name: str, value, what: str = "a positive number") -> float:
    """``value`` as a float: a positive finite real number (Python, NumPy or a one-element tensor), else a
    ``ValueError`` saying that ``name`` must be ``what``."""
    plain = _plain_number(value)
    if not (isinstance(plain, numbers.Real) and not isinstance(plain, bool) and math.isfinite(plain) and plain > 0):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(plain)


def check_tau(tau) -> float:
    """The temperature as a float: a positive finite number (Python, NumPy or a one-element tensor)."""
    return positive_number("tau", tau)


def check_support(support: str) -> str:
    if support not in SUPPORTS:
        raise ValueError(
            f"support must be one of {SUPPORTS} ('full': the true divergence, 'shared': both sides renormalised "
            f"over the entries finite on both), got {support!r}"
        )
    return support



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
        positive_number("num_items", num_items, "a positive finite number (the global count of valid tokens)")
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

