"""Probes: small functions that summarise one training step into rows and matrices for the run store.

Each probe reads a :class:`~kdviz.record.batchview.BatchView` (the batch and the method's ``KDOutput``)
and adds to a :class:`StepRecord`. Probes detach, reduce on the tensors' device, and move only the
summaries (and the sampled sequences' slices) to the CPU. A probe whose inputs are absent returns a
sentence saying what is missing; the recorder writes it once into the run metadata.

=============  ================  ===================================================================
probe          runs              records
=============  ================  ===================================================================
``terms``      every step        ``loss``, every ``out.terms`` entry, 0-d and per-sequence ``[B]``
                                 diagnostics (their batch mean, ``diag/<name>``),
                                 ``lr``, ``grad_norm/<group>``, ``tokens_seen`` (scalars)
``numerics``   every step        ``numerics/nonfinite/<term>`` when a term is NaN/inf (and a replay
                                 file of the batch rows, once per term); at recorded steps NaN counts
                                 of per-token diagnostics, ``numerics/empty_masks`` (rows with no
                                 trained token) and ``numerics/akl_fallbacks`` (AKL 0/0 weights)
``head_tail``  recorded steps    docs/methods.md#akl statistics: mean and quantiles over the step's
                                 trained tokens (at most 256, evenly strided; ``count`` is the number
                                 of trained tokens) in the ``head_tail`` table; per token for samples
``alignment``  recorded steps    ``t2s_weight`` / ``s2t_weight`` (CMA's attentions), ``pairing``
                                 (ULD's student -> teacher positions) and ``dtw_path`` (MinED's
                                 token alignment) of the samples, cropped to
                                 response rows and columns, with the ground truth and its scores
``transport``  recorded steps    the samples' plan ``transport_plan`` and cost matrix (stored as
                                 ``transport_cost``, read from ``cost_matrix`` or a 3-d
                                 ``transport_cost``), teacher rows x student columns cropped to both
                                 responses, with the ground truth; a per-sequence ``transport_cost``
                                 ``[B]`` goes to the matrices' info; top-k id maps (``vocab_map``)
``token_loss`` recorded steps    every per-token diagnostic ``[B, T_s]`` (``token_kd``, ...) and
                                 ``token_ce`` of the samples, with their text (``texts`` table); the
                                 top-5 next tokens of student and teacher (``student_top5``,
                                 ``teacher_top5``: JSON ``[[token, p], ...]``; the teacher's from
                                 ``teacher_logits`` of the same shape, else ``t2s_logits``)
=============  ================  ===================================================================

Head/tail spaces: ``shared`` compares ``student_logits`` with ``teacher_logits`` when the vocabularies
are the same (the teacher's head in the common vocabulary); it is the only space recorded when present.
Otherwise (different vocabularies) every projected space present is recorded: ``t2s`` compares
``student_logits`` with ``t2s_logits`` (DSKD/CMA's teacher projected into the student vocabulary) and
``s2t`` compares ``s2t_logits`` with ``teacher_logits`` (the student projected into the teacher
vocabulary). The per-token columns come from the first space on the student's positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from kdviz.align.scores import alignment_scores, row_scores
from kdviz.headtail import head_tail
from kdviz.ops import next_token_targets
from kdviz.record.batchview import BatchView
from kdviz.record.store import QUANTILES

HEAD_TAIL_SPACES = (
    ("shared", "student_logits", "teacher_logits", "student"),
    ("t2s", "student_logits", "t2s_logits", "student"),
    ("s2t", "s2t_logits", "teacher_logits", "teacher"),
)
# soft alignments (DSKD/CMA's attentions) and hard ones (ULD's position pairing, MinED's DTW path), as
# [rows, columns]
ALIGNMENTS = (
    ("t2s_weight", "student", "teacher"),
    ("s2t_weight", "teacher", "student"),
    ("pairing", "student", "teacher"),
    ("dtw_path", "student", "teacher"),
)
# store name -> diagnostics it is read from (the first present): MultiLevelOT calls its cost matrix
# "cost_matrix" and keeps "transport_cost" for the per-sequence cost <P, C> [B]
TRANSPORTS = (("transport_plan", ("transport_plan",)), ("transport_cost", ("cost_matrix", "transport_cost")))
TOPK_IDS = ("teacher_topk_ids", "student_topk_ids")
MAX_AGGREGATE_TOKENS = 256  # head/tail quantiles use at most this many tokens per step (evenly strided)


class Sample(NamedTuple):
    """A sampled sequence at one step: its slot (``sample`` in the store), its batch row and example id."""

    slot: int
    row: int
    example_id: str


@dataclass
class StepRecord:
    """Everything the probes produce for one step, before it is written."""

    step: int
    samples: list[Sample]
    recorded: bool
    scalars: dict[str, torch.Tensor | float] = field(default_factory=dict)
    head_tail: list[tuple[str, list[str], int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    tokens: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    top: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor, str]]] = field(default_factory=dict)
    matrices: list[dict[str, Any]] = field(default_factory=list)
    vocab_map: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    replays: list[tuple[str, list[int], dict[str, Any]]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def token_column(self, sample: Sample, name: str, values: torch.Tensor) -> None:
        """A per-position quantity ``[T_s]`` of a sampled sequence (cropped to the response on write)."""
        self.tokens.setdefault(sample.slot, {})[name] = values.detach()

    def token_top(self, sample: Sample, side: str, ids: torch.Tensor, probs: torch.Tensor, vocab: str) -> None:
        """The top-k next tokens ``ids``/``probs`` ``[T_s, k]`` of ``side`` at every position of a sampled
        sequence; ``vocab`` names the tokenizer that decodes the ids (``"student"`` or ``"teacher"``)."""
        self.top.setdefault(sample.slot, {})[side] = (ids, probs, vocab)


def positions(view: BatchView, side: str, row: int, length: int) -> list[int]:
    """Trained (response) positions of ``row`` on ``side``; every position when the batch has no mask."""
    mask = view.mask(side)
    if mask is None or mask.shape[-1] != length:
        return list(range(length))
    return mask[row].nonzero().flatten().tolist()


# every step ------------------------------------------------------------------------------------------
def probe_terms(view: BatchView, rec: StepRecord) -> str | None:
    loss = getattr(view.out, "loss", None)
    if isinstance(loss, torch.Tensor):
        rec.scalars["loss"] = loss.detach().float().mean()
    for name, value in view.terms.items():
        if isinstance(value, torch.Tensor):
            rec.scalars[name] = value.detach().float().mean()
        elif isinstance(value, (int, float)):
            rec.scalars[name] = float(value)
    n = view.batch_size
    for name, value in view.diagnostics.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        if value.dim() == 0 or (value.dim() == 1 and value.shape[0] == n):  # per step or per sequence: the mean
            rec.scalars[f"diag/{name}"] = value.detach().float().mean()
    mask = view.mask("student")
    if mask is not None:
        rec.scalars["tokens"] = mask.sum().float()
    return None if rec.scalars else "the output has no loss and no terms"


def probe_numerics(view: BatchView, rec: StepRecord) -> str | None:
    named = {n: v for n, v in view.terms.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if named:
        flags = torch.stack([~torch.isfinite(v.detach()).all() for v in named.values()]).cpu().tolist()
        for name, bad in zip(named, flags, strict=True):
            if bad:
                rec.scalars[f"numerics/nonfinite/{name}"] = 1.0
                rec.events.append(("nonfinite", name, f"term {name!r} is not finite"))
                rec.replays.append((name, _offending_rows(view), {"term": name}))
    if not rec.recorded:
        return None if named else "the output has no floating-point terms"
    for name, value in view.diagnostics.items():
        if _per_token(value) and not name.endswith("_logits"):
            rec.scalars[f"numerics/nan/{name}"] = torch.isnan(value.detach()).sum().float()
        if "fallback" in name and isinstance(value, torch.Tensor):
            count = value.detach().float().nansum()
            rec.scalars["numerics/akl_fallbacks"] = rec.scalars.get("numerics/akl_fallbacks", 0.0) + count
    for side in ("student", "teacher"):
        mask = view.mask(side)
        if mask is not None:
            rec.scalars[f"numerics/empty_masks/{side}"] = (~mask.any(-1)).sum().float()
    return None


def _per_token(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2


def _offending_rows(view: BatchView) -> list[int]:
    """Batch rows whose per-token loss is not finite, or every row when that cannot be told."""
    token_kd = view.diagnostics.get("token_kd")
    n = view.batch_size or 0
    if isinstance(token_kd, torch.Tensor) and token_kd.dim() == 2 and token_kd.shape[0] == n:
        rows = (~torch.isfinite(token_kd.detach())).any(-1).nonzero().flatten().tolist()
        if rows:
            return rows
    return list(range(n))


# recorded steps --------------------------------------------------------------------------------------
def _logit_pairs(view: BatchView) -> list[tuple[str, torch.Tensor, torch.Tensor, str]]:
    """The head/tail spaces present: ``shared`` alone when it exists, else the projected ones."""
    found = []
    for space, s_name, t_name, side in HEAD_TAIL_SPACES:
        s, t = view.diagnostics.get(s_name), view.diagnostics.get(t_name)
        if isinstance(s, torch.Tensor) and isinstance(t, torch.Tensor) and s.shape == t.shape and s.dim() == 3:
            found.append((space, s.detach(), t.detach(), side))
    return found[:1] if found and found[0][0] == "shared" else found


def probe_head_tail(view: BatchView, rec: StepRecord) -> str | None:
    per_token_done = False
    for space, s, t, side in _logit_pairs(view):
        mask = view.mask(side)
        if mask is None or mask.shape != s.shape[:2]:
            mask = torch.ones(s.shape[:2], dtype=torch.bool)
        mask = mask.to(s.device)
        chosen = _strided(mask, MAX_AGGREGATE_TOKENS)
        wanted = chosen.clone()
        rows = [x.row for x in rec.samples] if not per_token_done and side == "student" else []
        wanted[rows] |= mask[rows]
        # one pass over the aggregated tokens and the sampled sequences' tokens
        stats = head_tail(s, t, wanted).as_dict()
        if bool(chosen.any()):
            names = list(stats)
            table = torch.stack([stats[n][chosen].float() for n in names])  # [S, N]
            levels = torch.tensor(QUANTILES, device=table.device)
            quantiles = torch.nanquantile(table, levels, dim=1)  # [Q, S]
            rec.head_tail.append((space, names, int(mask.sum()), table.nanmean(1), quantiles.T))
        for sample in rec.samples if rows else []:
            for name, values in stats.items():
                rec.token_column(sample, name, values[sample.row])
        if rows:
            rec.notes["head_tail_token_space"] = space
            per_token_done = True
    if rec.head_tail:
        return None
    return "no pair of logits with equal shapes among student_logits, teacher_logits, t2s_logits, s2t_logits"


def _strided(mask: torch.Tensor, limit: int) -> torch.Tensor:
    """``mask`` thinned to at most ``limit`` True entries, evenly spaced in row-major order."""
    count = int(mask.sum())
    if count <= limit:
        return mask.clone()
    flat = mask.flatten().nonzero().flatten()
    keep = flat[torch.linspace(0, count - 1, limit, device=mask.device).long()]
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    out[keep] = True
    return out.view_as(mask)


def probe_alignment(view: BatchView, rec: StepRecord) -> str | None:
    reference = view.reference()
    found = False
    for name, row_side, col_side in ALIGNMENTS:
        weights = view.diagnostics.get(name)
        if not isinstance(weights, torch.Tensor) or weights.dim() != 3:
            continue
        found = True
        weights = weights.detach().float()  # hard alignments (MinED's path) are boolean
        ref = None
        if reference is not None:
            ref = reference if row_side == "student" else reference.transpose(1, 2)
            ref = ref.to(weights.device) if ref.shape == weights.shape else None
        if ref is not None and not bool(torch.isfinite(weights).all()):
            ref = None  # the numerics probe reports the non-finite values; scores would be meaningless
        if ref is not None:
            row_mask = view.mask(row_side)
            if row_mask is not None:
                row_mask = row_mask.to(weights.device) if row_mask.shape == weights.shape[:2] else None
            for score, value in alignment_scores(weights, ref, row_mask).items():
                rec.scalars[f"alignment/{name}/{score}"] = value
        for sample in rec.samples:
            rows = positions(view, row_side, sample.row, weights.shape[1])
            cols = positions(view, col_side, sample.row, weights.shape[2])
            values = weights[sample.row][rows][:, cols]
            cropped = None if ref is None else ref[sample.row][rows][:, cols]
            info = {"rows": rows, "cols": cols}
            if cropped is not None and len(rows) and len(cols):
                scores = row_scores(values, cropped)
                scored = scores["scored"]
                for key in ("argmax_overlap", "overlap_mass"):
                    info[key] = float(scores[key][scored].mean()) if bool(scored.any()) else None
            _matrix(view, rec, name, sample, values, (row_side, rows), (col_side, cols), cropped, info)
    return None if found else f"the output has no {' / '.join(name for name, _, _ in ALIGNMENTS)} diagnostics"


def _matrix(
    view: BatchView,
    rec: StepRecord,
    name: str,
    sample: Sample,
    values: torch.Tensor,
    rows: tuple[str, list[int]],
    cols: tuple[str, list[int]],
    reference: torch.Tensor | None,
    info: dict[str, Any],
) -> None:
    row_tokens, _ = view.labels_for(rows[0], sample.row, rows[1])
    col_tokens, _ = view.labels_for(cols[0], sample.row, cols[1])
    rec.matrices.append(
        {
            "name": name,
            "sample": sample,
            "values": values.float(),
            "row_tokens": row_tokens,
            "col_tokens": col_tokens,
            "reference": reference,
            "info": {"example_id": sample.example_id, "row_side": rows[0], "col_side": cols[0], **info},
        }
    )


def probe_transport(view: BatchView, rec: StepRecord) -> str | None:
    found = False
    reference = view.reference()
    for store_name, sources in TRANSPORTS:
        plans = next((view.diagnostics[n] for n in sources if _per_pair(view.diagnostics.get(n))), None)
        if plans is None:
            continue
        found = True
        for sample in rec.samples:
            values, rows, cols, ref = _transport_crop(view, sample.row, plans[sample.row].detach(), reference)
            info = {"rows": rows, "cols": cols}
            sequence_cost = view.diagnostics.get("transport_cost")
            if isinstance(sequence_cost, torch.Tensor) and sequence_cost.dim() == 1:
                info["sequence_cost"] = float(sequence_cost[sample.row])
            _matrix(view, rec, store_name, sample, values, ("teacher", rows), ("student", cols), ref, info)
    ids = [view.diagnostics.get(n) for n in TOPK_IDS]
    if all(isinstance(x, torch.Tensor) and x.dim() == 2 for x in ids):
        found = True
        for sample in rec.samples:
            pair = ids[0][sample.row].cpu().numpy(), ids[1][sample.row].cpu().numpy()
            rec.vocab_map.append((sample.slot, *pair))
    return None if found else "the output has no transport_plan / cost_matrix / top-k id diagnostics"


def _per_pair(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 3


def _transport_crop(
    view: BatchView, row: int, plan: torch.Tensor, reference: torch.Tensor | None
) -> tuple[torch.Tensor, list[int], list[int], torch.Tensor | None]:
    """A plan ``[R, C]`` (teacher rows, student columns) as stored: values, the teacher and student
    positions of its rows and columns, and its reference.

    A plan over every position (``[T_t, T_s]``) is cropped to both responses; a smaller one covers the
    first ``R`` / ``C`` response positions (answer spans aligned by index, docs/methods.md#multilevelot); a plan
    that fits neither keeps its own indices and has no reference.
    """
    t_len, s_len = _length(view, "teacher"), _length(view, "student")
    rows, cols = positions(view, "teacher", row, t_len), positions(view, "student", row, s_len)
    if tuple(plan.shape) == (t_len, s_len):
        values = plan[rows][:, cols]
    else:
        rows, cols, values = rows[: plan.shape[0]], cols[: plan.shape[1]], plan
        if (len(rows), len(cols)) != tuple(plan.shape):
            return plan, list(range(plan.shape[0])), list(range(plan.shape[1])), None
    if reference is None or reference.shape[1:] != (s_len, t_len):
        return values, rows, cols, None
    return values, rows, cols, reference[row].transpose(0, 1)[rows][:, cols]


def _length(view: BatchView, side: str) -> int:
    ids = view.ids(side)
    return 0 if ids is None else ids.shape[1]


def probe_token_loss(view: BatchView, rec: StepRecord) -> str | None:
    student_ids = view.ids("student")
    n, length = (view.batch_size or 0), (student_ids.shape[1] if student_ids is not None else None)
    found = False
    for name, value in view.diagnostics.items():
        if not (_per_token(value) and value.dim() == 2 and value.shape[0] == n) or name.endswith("mask"):
            continue
        if length is None or value.shape[1] == length:
            found = True
            for sample in rec.samples:
                rec.token_column(sample, name, value[sample.row].float())
    logits = view.diagnostics.get("student_logits")
    if "token_ce" not in view.diagnostics and isinstance(logits, torch.Tensor) and student_ids is not None:
        labels = getattr(view.batch, "student_labels", None)
        if isinstance(labels, torch.Tensor) and logits.shape[:2] == labels.shape:
            rows = [s.row for s in rec.samples]
            targets = next_token_targets(labels[rows])
            ce = F.cross_entropy(
                logits.detach()[rows].float().transpose(1, 2), targets.to(logits.device), reduction="none"
            )
            for k, sample in enumerate(rec.samples):
                rec.token_column(sample, "token_ce", ce[k])
            found = True
    rows = [s.row for s in rec.samples]
    for side, source, vocab in _top_sources(view):
        logits = source.detach()[rows]
        top, ids = logits.topk(min(TOP_K, source.shape[-1]), -1)  # the softmax's order, without the [., V] softmax
        probs = (top.float() - torch.logsumexp(logits.float(), -1, keepdim=True)).exp()
        for k, sample in enumerate(rec.samples):
            rec.token_top(sample, side, ids[k], probs[k], vocab)
    if view.texts:
        for sample in rec.samples:
            rec.texts[sample.example_id] = view.texts[sample.row]
    return None if found else "the output has no per-token diagnostics ([B, T_s]) and no student_logits"


TOP_K = 5  # next tokens kept per position and side for the per-token view's hover


def _top_sources(view: BatchView) -> list[tuple[str, torch.Tensor, str]]:
    """``(side, logits [B, T_s, V], vocabulary)`` for the top-k hover: the student's own logits; the
    teacher's when they share the student's positions and vocabulary, else DSKD/CMA's teacher projected
    into the student vocabulary (``t2s_logits``)."""
    student = view.diagnostics.get("student_logits")
    if not (isinstance(student, torch.Tensor) and student.dim() == 3 and student.shape[0] == view.batch_size):
        return []
    sources = [("student", student, "student")]
    for name, vocab in (("teacher_logits", "teacher"), ("t2s_logits", "student")):
        teacher = view.diagnostics.get(name)
        if isinstance(teacher, torch.Tensor) and teacher.shape == student.shape:
            sources.append(("teacher", teacher, vocab))
            break
    return sources


PROBES: dict[str, Callable[[BatchView, StepRecord], str | None]] = {
    "terms": probe_terms,
    "numerics": probe_numerics,
    "head_tail": probe_head_tail,
    "alignment": probe_alignment,
    "transport": probe_transport,
    "token_loss": probe_token_loss,
}
EVERY_STEP = ("terms", "numerics")
