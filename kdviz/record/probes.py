"""Probes: small functions that summarise one training step into rows and matrices for the run store.

Each probe reads a :class:`~kdviz.record.batchview.BatchView` (the batch and the method's ``KDOutput``)
and adds typed records to a :class:`StepRecord`. Probes find what to record by the *type* of each
diagnostic (:mod:`kdviz.methods.diagnostics`), never by its name; plain tensors (masks, ids) are left to
replays. Probes detach, reduce on the tensors' device, and move only the summaries (and the sampled
sequences' slices) to the CPU. A probe whose inputs are absent returns a sentence saying what is missing;
the recorder writes it once into the run metadata. Every matrix is stored with student rows and teacher
columns.

=============  ================  ===================================================================
probe          runs              records
=============  ================  ===================================================================
``terms``      every step        ``loss``, every ``out.terms`` entry, 0-d and per-sequence ``[B]`` plain
                                 tensor diagnostics and a ``Transport``'s ``sequence_cost`` (their batch
                                 mean, ``diag/<name>``, ``diag/<name>_cost``), ``lr``,
                                 ``grad_norm/<group>``, ``tokens_seen`` (scalars)
``numerics``   every step        ``numerics/nonfinite/<term>`` when a term is NaN/inf (and a replay
                                 file of the batch rows, once per term); at recorded steps NaN counts
                                 of ``TokenValues``, ``Alignment`` and ``Transport`` diagnostics
                                 (``numerics/nan/<name>``), ``numerics/empty_masks/<side>`` (rows with
                                 no trained token) and the count of each ``TokenEvents``
                                 (``numerics/<event>``, e.g. AKL's 0/0 weights)
``head_tail``  recorded steps    docs/methods.md#akl statistics between two ``Logits`` of one space:
                                 mean and quantiles over the step's trained tokens (at most 256,
                                 evenly strided; ``count`` is the number of trained tokens) in the
                                 ``head_tail`` table; per token for samples
``alignment``  every step        each ``Alignment``'s scores against the ground truth of its
                                 ``reference`` (``alignment/<name>/<score>``, taken along its
                                 distributions); at recorded steps the samples' matrices cropped to
                                 both responses, with the ground truth
``transport``  every step        each ``Transport`` plan's scores (``alignment/<name>_plan/<score>``);
                                 at recorded steps the samples' plan and cost (``<name>_plan``,
                                 ``<name>_cost``) cropped to both responses, with the ground truth, the
                                 ``sequence_cost`` in their info, and ``RankPairs`` (``vocab_map``)
``token_loss`` recorded steps    every student-side ``TokenValues`` (teacher-side ones too when both
                                 read the same tokens) of the samples, ``token_ce`` from the student's
                                 ``Logits`` when the method gives none, with their text (``texts``
                                 table); the top-5 next tokens of student and teacher
                                 (``student_top5``, ``teacher_top5``: JSON ``[[token, p], ...]``; the
                                 teacher's from its own logits when they have the student's shape,
                                 else from the teacher's logits in the student space)
=============  ================  ===================================================================

Head/tail spaces: ``shared`` compares the student's and the teacher's own logits when they have the same
shape (one tokenization and vocabulary); it is the only space recorded when present. Otherwise every
projected space present is recorded: ``t2s`` compares the student's logits with the teacher's in the
student space (DSKD/CMA's ``t2s_logits``) and ``s2t`` the student's in the teacher space (``s2t_logits``)
with the teacher's own. The per-token columns come from the first space on the student's positions.
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
from kdviz.methods.diagnostics import Alignment, Logits, RankPairs, TokenEvents, TokenValues, Transport
from kdviz.ops import next_token_targets, row_logsumexp
from kdviz.record.batchview import BatchView
from kdviz.record.store import ALIGNMENT_SCALARS, QUANTILES, TOP_K

MAX_AGGREGATE_TOKENS = 256  # head/tail quantiles use at most this many tokens per step (evenly strided)


class Sample(NamedTuple):
    """A sampled sequence at one step: its slot (``sample`` in the store), its batch row and example id."""

    slot: int
    row: int
    example_id: str


@dataclass(frozen=True)
class HeadTailSummary:
    """The head/tail statistics of one space at one step: per statistic the mean ``[S]`` and the
    quantiles ``[S, Q]`` (:data:`~kdviz.record.store.QUANTILES`) over ``count`` trained tokens."""

    space: str
    statistics: list[str]
    count: int
    mean: torch.Tensor
    quantiles: torch.Tensor


@dataclass(frozen=True)
class TopTokens:
    """The top-k next tokens ``ids``/``probs`` ``[T_s, k]`` of one side at every position of a sampled
    sequence; ``vocab`` names the tokenizer that decodes the ids (``"student"`` or ``"teacher"``)."""

    ids: torch.Tensor
    probs: torch.Tensor
    vocab: str


@dataclass(frozen=True)
class MatrixRecord:
    """One sampled sequence's matrix (student rows, teacher columns) with its labels and ground truth."""

    name: str
    sample: Sample
    values: torch.Tensor
    row_tokens: list[str]
    col_tokens: list[str]
    reference: torch.Tensor | None
    info: dict[str, Any]


@dataclass(frozen=True)
class VocabPairs:
    """A sampled sequence's ranked vocabulary map: ``student_ids[i]`` faces ``teacher_ids[i]``."""

    slot: int
    student_ids: np.ndarray
    teacher_ids: np.ndarray


@dataclass(frozen=True)
class Event:
    """A numerical event of the step (``kind`` ``"nonfinite"``: the term ``name`` is NaN or inf)."""

    kind: str
    name: str
    detail: str


@dataclass(frozen=True)
class Replay:
    """Batch rows to save because the term ``term`` went non-finite, with the info stored beside them."""

    term: str
    rows: list[int]
    info: dict[str, Any]


@dataclass
class StepRecord:
    """Everything the probes produce for one step, before it is written."""

    step: int
    samples: list[Sample]
    recorded: bool
    scalars: dict[str, torch.Tensor | float] = field(default_factory=dict)
    head_tail: list[HeadTailSummary] = field(default_factory=list)
    tokens: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    top: dict[int, dict[str, TopTokens]] = field(default_factory=dict)
    matrices: list[MatrixRecord] = field(default_factory=list)
    vocab_map: list[VocabPairs] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    replays: list[Replay] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def token_column(self, sample: Sample, name: str, values: torch.Tensor) -> None:
        """A per-position quantity ``[T_s]`` of a sampled sequence (cropped to the response on write)."""
        self.tokens.setdefault(sample.slot, {})[name] = values.detach()

    def token_top(self, sample: Sample, side: str, top: TopTokens) -> None:
        """The top-k next tokens of ``side`` at every position of a sampled sequence."""
        self.top.setdefault(sample.slot, {})[side] = top


def typed(view: BatchView, kind: type) -> dict[str, Any]:
    """The diagnostics of type ``kind``, by name."""
    return {name: value for name, value in view.diagnostics.items() if isinstance(value, kind)}


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
        if isinstance(value, Transport) and value.sequence_cost is not None:
            rec.scalars[f"diag/{name}_cost"] = value.sequence_cost.detach().float().mean()
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
                rec.events.append(Event("nonfinite", name, f"term {name!r} is not finite"))
                rec.replays.append(Replay(name, _offending_rows(view), {"term": name}))
    if not rec.recorded:
        return None if named else "the output has no floating-point terms"
    for name, value in _checked_tensors(view).items():
        if value.is_floating_point():
            rec.scalars[f"numerics/nan/{name}"] = torch.isnan(value.detach()).sum().float()
    for events in typed(view, TokenEvents).values():
        key = f"numerics/{events.event}"
        rec.scalars[key] = rec.scalars.get(key, 0.0) + events.flags.detach().float().nansum()
    for side in ("student", "teacher"):
        mask = view.mask(side)
        if mask is not None:
            rec.scalars[f"numerics/empty_masks/{side}"] = (~mask.any(-1)).sum().float()
    return None


def _checked_tensors(view: BatchView) -> dict[str, torch.Tensor]:
    """The per-token and per-pair tensors whose NaNs are counted, by the name they are counted under."""
    out = {name: v.values for name, v in typed(view, TokenValues).items()}
    out.update({name: v.weights for name, v in typed(view, Alignment).items()})
    for name, v in typed(view, Transport).items():
        out[f"{name}_plan"], out[f"{name}_cost"] = v.plan, v.cost
    return out


def _offending_rows(view: BatchView) -> list[int]:
    """Batch rows where a per-token value is not finite, or every row when that cannot be told."""
    n = view.batch_size or 0
    bad = torch.zeros(n, dtype=torch.bool)
    for value in typed(view, TokenValues).values():
        if value.values.shape[0] == n and value.values.is_floating_point():
            bad |= (~torch.isfinite(value.values.detach())).any(-1).cpu()
    rows = bad.nonzero().flatten().tolist()
    return rows or list(range(n))


# recorded steps --------------------------------------------------------------------------------------
def _logits(view: BatchView, model: str, space: str) -> torch.Tensor | None:
    """The first ``Logits`` of ``model`` in ``space``."""
    return next((v.logits for v in typed(view, Logits).values() if (v.model, v.space) == (model, space)), None)


def _logit_pairs(view: BatchView) -> list[tuple[str, torch.Tensor, torch.Tensor, str]]:
    """The head/tail spaces present, ``(space, student-side logits, teacher-side logits, positions)``:
    ``shared`` alone when it exists, else the projected ones."""
    own_s, own_t = _logits(view, "student", "student"), _logits(view, "teacher", "teacher")
    spaces = (
        ("shared", own_s, own_t, "student"),
        ("t2s", own_s, _logits(view, "teacher", "student"), "student"),
        ("s2t", _logits(view, "student", "teacher"), own_t, "teacher"),
    )
    found = [
        (space, s.detach(), t.detach(), side)
        for space, s, t, side in spaces
        if s is not None and t is not None and s.shape == t.shape
    ]
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
            rec.head_tail.append(HeadTailSummary(space, names, int(mask.sum()), table.nanmean(1), quantiles.T))
        for sample in rec.samples if rows else []:
            for name, values in stats.items():
                rec.token_column(sample, name, values[sample.row])
        if rows:
            rec.notes["head_tail_token_space"] = space
            per_token_done = True
    if rec.head_tail:
        return None
    return "no pair of Logits diagnostics of one space with equal shapes (student and teacher logits)"


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


def _side_mask(view: BatchView, side: str, shape: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    mask = view.mask(side)
    return mask.to(device) if mask is not None and tuple(mask.shape) == shape else None


def _ground_truth(view: BatchView, kind: str, weights: torch.Tensor) -> torch.Tensor | None:
    """The ``[B, T_s, T_t]`` ground truth of ``kind`` for ``weights``, when the batch has one of that shape
    and the weights are finite (the numerics probe reports non-finite ones; scores would be meaningless)."""
    reference = view.reference(kind)
    if reference is None or reference.shape != weights.shape or not bool(torch.isfinite(weights).all()):
        return None
    return reference.to(weights.device)


def _score(view: BatchView, rec: StepRecord, name: str, weights: torch.Tensor, reference: torch.Tensor | None,
           over: str) -> None:
    """``alignment/<name>/<score>`` of ``weights [B, T_s, T_t]`` along its distributions (student rows for
    ``over="teacher"``, teacher columns for ``"student"``) against ``reference`` restricted to the other
    side's response; a score with no row to judge (NaN) is left out, ``scored_rows`` (0) says why."""
    if reference is None:
        return
    b, t_s, t_t = weights.shape
    mask_s = _side_mask(view, "student", (b, t_s), weights.device)
    mask_t = _side_mask(view, "teacher", (b, t_t), weights.device)
    if over == "student":
        weights, reference, (row_mask, col_mask) = weights.transpose(1, 2), reference.transpose(1, 2), (mask_t, mask_s)
    else:
        row_mask, col_mask = mask_s, mask_t
    if col_mask is not None:
        reference = reference & col_mask[:, None, :]
    for score, value in alignment_scores(weights, reference, row_mask).items():
        if bool(torch.isfinite(value)):
            rec.scalars[f"{ALIGNMENT_SCALARS}{name}/{score}"] = value


def _crop(view: BatchView, row: int, matrix: torch.Tensor) -> tuple[list[int], list[int], torch.Tensor]:
    """Student (row) and teacher (column) response positions of batch row ``row`` and the matrix there."""
    rows = positions(view, "student", row, matrix.shape[1])
    cols = positions(view, "teacher", row, matrix.shape[2])
    return rows, cols, matrix[row][rows][:, cols]


def probe_alignment(view: BatchView, rec: StepRecord) -> str | None:
    alignments = typed(view, Alignment)
    for name, alignment in alignments.items():
        weights = alignment.weights.detach().float()  # hard alignments (MinED's path) are boolean
        reference = _ground_truth(view, alignment.reference, weights)
        _score(view, rec, name, weights, reference, alignment.over)
        for sample in rec.samples:
            rows, cols, values = _crop(view, sample.row, weights)
            cropped = None if reference is None else reference[sample.row][rows][:, cols]
            info: dict[str, Any] = {"rows": rows, "cols": cols, "over": alignment.over}
            if cropped is not None and len(rows) and len(cols):
                along = (values, cropped) if alignment.over == "teacher" else (values.T, cropped.T)
                scores = row_scores(*along)
                scored = scores["scored"]
                for key in ("argmax_overlap", "overlap_mass"):
                    info[key] = float(scores[key][scored].mean()) if bool(scored.any()) else None
            _matrix(view, rec, name, sample, values, rows, cols, cropped, info)
    return None if alignments else "the output has no Alignment diagnostics (t2s_weight, pairing, dtw_path, ...)"


def _matrix(
    view: BatchView,
    rec: StepRecord,
    name: str,
    sample: Sample,
    values: torch.Tensor,
    rows: list[int],
    cols: list[int],
    reference: torch.Tensor | None,
    info: dict[str, Any],
) -> None:
    row_tokens, _ = view.labels_for("student", sample.row, rows)
    col_tokens, _ = view.labels_for("teacher", sample.row, cols)
    info = {"example_id": sample.example_id, **info}
    rec.matrices.append(MatrixRecord(name, sample, values.float(), row_tokens, col_tokens, reference, info))


def probe_transport(view: BatchView, rec: StepRecord) -> str | None:
    transports, rank_pairs = typed(view, Transport), typed(view, RankPairs)
    lengths = (_length(view, "student"), _length(view, "teacher"))
    for name, transport in transports.items():
        plan, cost = transport.plan.detach().float(), transport.cost.detach().float()
        if tuple(plan.shape[1:]) != lengths:
            return f"transport {name!r} has shape {tuple(plan.shape)}, expected [B, T_s, T_t] = [B, {lengths}]"
        reference = _ground_truth(view, "target", plan)
        _score(view, rec, f"{name}_plan", plan, reference, "teacher")
        for sample in rec.samples:
            rows, cols, values = _crop(view, sample.row, plan)
            cropped = None if reference is None else reference[sample.row][rows][:, cols]
            info: dict[str, Any] = {"rows": rows, "cols": cols}
            if transport.sequence_cost is not None:
                info["sequence_cost"] = float(transport.sequence_cost[sample.row])
            _matrix(view, rec, f"{name}_plan", sample, values, rows, cols, cropped, info)
            _matrix(view, rec, f"{name}_cost", sample, _crop(view, sample.row, cost)[2], rows, cols, cropped, info)
    for pairs in rank_pairs.values():
        for sample in rec.samples:
            student, teacher = pairs.student_ids[sample.row], pairs.teacher_ids[sample.row]
            rec.vocab_map.append(VocabPairs(sample.slot, student.cpu().numpy(), teacher.cpu().numpy()))
    return None if transports or rank_pairs else "the output has no Transport or RankPairs diagnostics"


def _length(view: BatchView, side: str) -> int:
    ids = view.ids(side)
    return 0 if ids is None else ids.shape[1]


def probe_token_loss(view: BatchView, rec: StepRecord) -> str | None:
    n, length = (view.batch_size or 0), _length(view, "student")
    sides = ("student", "teacher") if view.shares_positions() else ("student",)
    found = False
    for name, token in typed(view, TokenValues).items():
        value = token.values
        if token.side in sides and value.shape == (n, length) and value.is_floating_point():
            found = True
            for sample in rec.samples:
                rec.token_column(sample, name, value[sample.row].float())
    logits = _logits(view, "student", "student")
    have_ce = any("token_ce" in rec.tokens.get(s.slot, {}) for s in rec.samples)
    if not have_ce and logits is not None and view.ids("student") is not None:
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
    for side, source, vocab in _top_sources(view):
        for sample in rec.samples:
            logits = source.detach()[sample.row]  # a view: no [T, V] copy per sample
            top, ids = logits.topk(min(TOP_K, source.shape[-1]), -1)  # the softmax's order, without a softmax
            lse = row_logsumexp(logits, torch.arange(logits.shape[0], device=logits.device), 1.0)  # in chunks
            rec.token_top(sample, side, TopTokens(ids, (top.float() - lse[:, None]).exp(), vocab))
    if view.texts:
        for sample in rec.samples:
            rec.texts[sample.example_id] = view.texts[sample.row]
    return None if found else "the output has no student TokenValues ([B, T_s]) and no student Logits"


def _top_sources(view: BatchView) -> list[tuple[str, torch.Tensor, str]]:
    """``(side, logits [B, T_s, V], vocabulary)`` for the top-k hover: the student's own logits; the
    teacher's own when they have the student's shape, else the teacher's in the student space (DSKD/CMA's
    ``t2s_logits``)."""
    student = _logits(view, "student", "student")
    if student is None or student.shape[0] != view.batch_size:
        return []
    sources = [("student", student, "student")]
    for teacher, vocab in ((_logits(view, "teacher", "teacher"), "teacher"), (_logits(view, "teacher", "student"),
                                                                               "student")):
        if teacher is not None and teacher.shape == student.shape:
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
# the alignment and transport probes score every step, and record matrices at recorded steps only
EVERY_STEP = ("terms", "numerics", "alignment", "transport")
