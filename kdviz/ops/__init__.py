"""The public internals every loss is built on, one job per module.

- :mod:`kdviz.ops.targets`: :data:`IGNORE` (-100, the label of a position that is not trained) and the
  next-token shift (:func:`shift_left`, :func:`next_token_targets`, :func:`shift_alignment`).
- :mod:`kdviz.ops.checks`: argument checks (:func:`real_number`, :func:`positive_number`, :func:`check_tau`,
  :func:`check_pair`, :func:`check_options`, ...) and non-finite values named by index.
- :mod:`kdviz.ops.rows`: :class:`Rows`, the valid token rows of a logit pair in log space over a support,
  :class:`Scratch` (the engine's work buffers, reused chunk after chunk) and :func:`masked_exp`.
- :mod:`kdviz.ops.budget`: :func:`rows_per_chunk`, the rows of one chunk from a byte budget per device.
- :mod:`kdviz.ops.engine`: :func:`chunked`, the chunked engine with the gradient computed in the forward
  (closed form when the formula has one, :func:`has_closed_form`, else autograd per chunk).
- :mod:`kdviz.ops.reductions`: row reductions in chunks (:func:`row_logsumexp`, :func:`log_softmax_at`,
  :func:`column_mass`) and the one cross-entropy (:func:`cross_entropy`, :func:`chunk_cross_entropy`).
"""

from kdviz.ops.budget import CHUNK_BUDGETS, ChunkBudget, compute_dtype, rows_per_chunk
from kdviz.ops.checks import (
    check_finite,
    check_options,
    check_pair,
    check_support,
    check_tau,
    check_values,
    positive_number,
    real_number,
)
from kdviz.ops.engine import chunk_value_and_grad, chunked, first_order_only, has_closed_form
from kdviz.ops.reductions import (
    chunk_cross_entropy,
    column_mass,
    cross_entropy,
    log_softmax_at,
    row_cross_entropy,
    row_logsumexp,
)
from kdviz.ops.rows import Rows, Scratch, gather_rows, log_softmax, make_rows, masked_exp, reduce, scatter_rows
from kdviz.ops.targets import IGNORE, next_token_targets, shift_alignment, shift_left

__all__ = [
    "CHUNK_BUDGETS",
    "IGNORE",
    "ChunkBudget",
    "Rows",
    "Scratch",
    "check_finite",
    "check_options",
    "check_pair",
    "check_support",
    "check_tau",
    "check_values",
    "chunk_cross_entropy",
    "chunk_value_and_grad",
    "chunked",
    "column_mass",
    "compute_dtype",
    "cross_entropy",
    "first_order_only",
    "gather_rows",
    "has_closed_form",
    "log_softmax",
    "log_softmax_at",
    "make_rows",
    "masked_exp",
    "next_token_targets",
    "positive_number",
    "real_number",
    "reduce",
    "row_cross_entropy",
    "row_logsumexp",
    "rows_per_chunk",
    "scatter_rows",
    "shift_alignment",
    "shift_left",
]
