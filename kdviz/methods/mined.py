"""MinED: cross-tokenizer KD through a minimum-edit-distance token alignment and vocabulary map
(docs/methods.md#mined; Wan et al., arXiv 2401.10491).

Per example, over the response positions of both sides (each labelled by the token it predicts):

1. DTW aligns the two sequences of predicted-token strings on the edit distance of their marker-normalised
   strings (:func:`kdviz.align.dtw.align_tokens`).
2. At a student position paired one-to-one with a teacher position ``j``, the teacher's top-``k`` logits
   at ``j`` move to the student ids the vocabulary map ``M`` gives (:func:`kdviz.align.vocab_map.vocab_map`),
   the maximum on collisions, ``-1e5`` elsewhere::

       z~[v] = max_{u in topk(z_t[j]), M(u) = v} z_t[j, u]     (else -1e5)

   At every other student position the target is one-hot on the gold token (gold 0, every other id -1e5).
3. ``KD = FKL(softmax(z~ / tau) || softmax(z_s / tau))`` per position, token mean over the student
   response; ``loss = ce_weight * CE + kd_weight * KD``.

An example whose response is empty on either side has nothing to align and adds no KD term.

``mode="reference"`` reproduces the DSKD repository's MinED baseline instead: DTW between the *input*
tokens at the response positions (its cost matrix and tie-breaking: :func:`published_dtw`); a student
position counts as aligned only when the DTW gives it exactly one teacher position ``j`` and the map sends
the teacher's input id at ``j`` to the student's input id; there *every* teacher logit moves through the
student -> teacher map that keeps, per student id, the first (lowest) teacher id mapped to it (student ids
without one get ``mask_value``); elsewhere the target is one-hot with logit 100 on the gold token.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from kdviz.align.dtw import MARKERS, align_tokens, edit_costs
from kdviz.align.tokens import vocab_bytes
from kdviz.align.vocab_map import UNRESOLVED, VocabMap
from kdviz.align.vocab_map import vocab_map as compute_vocab_map
from kdviz.divergences import divergence
from kdviz.methods._common import (
    attach_models,
    check_ids,
    check_weights,
    kd_output,
    masked_mean,
    run_models,
)
from kdviz.methods.base import KDBatch, KDOutput
from kdviz.methods.diagnostics import Alignment, Logits, TokenValues
from kdviz.ops import check_finite, cross_entropy

MODES = ("paper", "reference")
REFERENCE_GOLD_LOGIT = 100.0


def published_dtw(student: list[str], teacher: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The DSKD repository's DTW (teacher rows, student columns), as ``(path [P, 2], partner [n_s])``.

    ``D[i, j] = d(i, j) + min(D[i-1, j], D[i, j-1], D[i-1, j-1])`` with ``d`` the marker-free edit distance;
    the path is traced back from the last cell, preferring the diagonal, then up (teacher), then left
    (student), on the first minimum. ``path`` holds ``(student, teacher)`` index pairs; ``partner[j]`` is the
    single teacher index of student token ``j``, or -1 when the path gives it several.
    """
    cost = edit_costs(teacher, student, MARKERS)
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(n):
        for j in range(m):
            acc[i + 1, j + 1] = cost[i, j] + min(acc[i, j + 1], acc[i + 1, j], acc[i, j])
    acc = acc[1:, 1:]
    i, j = n - 1, m - 1
    pairs = []
    while i > 0 or j > 0:
        pairs.append((j, i))
        options = [
            acc[i - 1, j - 1] if i > 0 and j > 0 else np.inf,
            acc[i - 1, j] if i > 0 else np.inf,
            acc[i, j - 1] if j > 0 else np.inf,
        ]
        move = int(np.argmin(options))
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    pairs.append((0, 0))
    path = np.asarray(pairs[::-1], dtype=np.int64)
    counts = np.bincount(path[:, 0], minlength=m)
    partner = np.full(m, -1, dtype=np.int64)
    single = counts[path[:, 0]] == 1
    partner[path[single, 0]] = path[single, 1]
    return path, partner


class MinED(nn.Module):
    """Minimum-edit-distance alignment KD between two tokenizers.

    ``MinED(student=None, teacher=None, *, student_tokenizer=None, teacher_tokenizer=None, vocab_map=None,
    top_k=10, ce_weight=0.5, kd_weight=0.5, tau=2.0, tau_squared=False, cache_dir=None, mask_value=-1e5,
    mode="paper")``

    - The teacher -> student :class:`~kdviz.align.vocab_map.VocabMap` is ``vocab_map`` if given, else
      computed from the two tokenizers (or read from the cache under ``cache_dir``). Exact entries are known
      when the method is built; the nearest student token of the other teacher ids is computed when a batch
      first moves them (``mode="reference"`` needs, and completes, the whole map when built).
    - ``top_k``: teacher logits moved per aligned position (10); it may not exceed the teacher vocabulary.
    - ``ce_weight``, ``kd_weight``, ``tau``: 0.5, 0.5, 2.0 as in the DSKD paper's MinED baseline.
    - ``mask_value``: the logit of ids that receive no teacher logit (finite, so ``0 * log 0`` stays 0).
    - ``mode``: ``"paper"`` (default; predicted tokens, top-k) or ``"reference"`` (the DSKD repository's
      baseline, see the module docstring; ``top_k`` is not used there).

    Token strings come from the batch (``student_tokens`` / ``teacher_tokens``, filled by
    :class:`~kdviz.methods.KDCollator`), else from the tokenizers. The method has no parameters; the map
    is a non-persistent buffer (``.to(device)`` moves it).

    Terms: ``loss``, ``ce``, ``kd`` (also in ``parts``), ``one_to_one_share`` (share of student response
    positions aligned one-to-one), ``vocab_exact_share`` (share of the teacher vocabulary mapped by exact
    string), ``moved_exact_share`` (share of moved top-k teacher ids whose map is exact), ``student_acc``.
    Diagnostics (:mod:`kdviz.methods.diagnostics`): ``dtw_path`` (a hard
    :class:`~kdviz.methods.diagnostics.Alignment` ``[B, T_s, T_t]`` bool, which the recorder scores against
    the character-overlap ground truth, ``alignment/dtw_path/...``: of the predicted tokens in the paper
    mode, of the input tokens in the reference mode), ``aligned_teacher_position`` ``[B, T_s]``
    (one-to-one partner or -1), ``one_to_one`` ``[B, T_s]``, ``mapped_teacher_logits`` ``[B, T_s, V_s]``
    (the target ``z~``, a plain tensor: it is not the teacher's distribution), ``token_kd``, ``token_ce``,
    the masks, ``student_target_ids`` and both logits.
    """

    def __init__(
        self,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        *,
        student_tokenizer=None,
        teacher_tokenizer=None,
        vocab_map: VocabMap | None = None,
        top_k: int = 10,
        ce_weight: float = 0.5,
        kd_weight: float = 0.5,
        tau: float = 2.0,
        tau_squared: bool = False,
        cache_dir: str | os.PathLike | None = None,
        mask_value: float = -1e5,
        mode: str = "paper",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        ce_weight, kd_weight, tau = check_weights(ce_weight, kd_weight, tau)
        if not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if not (isinstance(mask_value, (int, float)) and -1e30 < mask_value < 0):
            raise ValueError(f"mask_value must be a finite negative number (e.g. -1e5), got {mask_value!r}")
        if vocab_map is None:
            if student_tokenizer is None or teacher_tokenizer is None:
                raise ValueError("MinED needs vocab_map=... or both student_tokenizer and teacher_tokenizer")
            vocab_map = compute_vocab_map(student_tokenizer, teacher_tokenizer, cache_dir=cache_dir, complete=False)
        if mode == "reference":  # the student -> teacher inverse below needs every entry
            vocab_map.complete()
        self.map = vocab_map
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.top_k, self.mask_value, self.tau_squared = top_k, float(mask_value), tau_squared
        self.ce_weight, self.kd_weight, self.tau = ce_weight, kd_weight, tau
        self.register_buffer("map_ids", torch.as_tensor(vocab_map.ids, dtype=torch.long), persistent=False)
        self.register_buffer("map_exact", torch.as_tensor(vocab_map.exact, dtype=torch.bool), persistent=False)
        mapped = np.asarray(vocab_map.ids)
        student_ids, first_teacher = np.unique(mapped[mapped >= 0], return_index=True)
        teacher_ids = np.flatnonzero(mapped >= 0)[first_teacher]  # the lowest teacher id of each student id
        self.register_buffer("reference_student_ids", torch.as_tensor(student_ids, dtype=torch.long), persistent=False)
        self.register_buffer("reference_teacher_ids", torch.as_tensor(teacher_ids, dtype=torch.long), persistent=False)
        attach_models(self, student, teacher)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, top_k={self.top_k}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"tau={self.tau}, "
            f"teacher_vocab={len(self.map)}, vocab_exact_share={self.map.exact_share:.3f}"
        )

    def _target_strings(self, batch: KDBatch, side: str, b: int, positions: list[int], shift: int = 1) -> list[str]:
        """Strings of the tokens predicted at ``positions`` (token ``i + 1`` for position ``i``), or with
        ``shift=0`` of the input tokens at those positions.

        In the paper mode with the side's tokenizer at hand, a token's string is the bytes it stands for
        without spaces (one character per byte: the vocabulary map's alphabet), so that ``Ã©`` (byte-level
        é) and ``é`` cost 0; otherwise the vocabulary string, whose markers ``align_tokens`` removes."""
        tokenizer = getattr(self, f"{side}_tokenizer")
        if self.mode == "paper" and tokenizer is not None:
            pieces = vocab_bytes(tokenizer)
            ids = getattr(batch, f"{side}_input_ids")[b, [i + shift for i in positions]].tolist()
            return [pieces[i].replace(b" ", b"").decode("latin-1") if i < len(pieces) else "" for i in ids]
        tokens = getattr(batch, f"{side}_tokens")
        if len(tokens) > b and len(tokens[b]) > max(positions) + shift:
            return [tokens[b][i + shift] for i in positions]
        if tokenizer is None:
            raise ValueError(
                f"the batch has no {side}_tokens for example {b}; build it with KDCollator or pass "
                f"{side}_tokenizer= to MinED"
            )
        ids = getattr(batch, f"{side}_input_ids")[b, [i + shift for i in positions]]
        return list(tokenizer.convert_ids_to_tokens(ids.tolist()))

    def align(self, batch: KDBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dtw_path [B, T_s, T_t] bool, partner [B, T_s] long, active [B] bool)`` of the batch.

        ``partner`` is the one-to-one teacher position of each student position (-1: none); ``active``
        says which examples have a response on both sides.
        """
        mask_s, mask_t = batch.student_mask.cpu(), batch.teacher_mask.cpu()
        b, t_s = mask_s.shape
        path = np.zeros((b, t_s, mask_t.shape[1]), dtype=bool)
        partner = np.full((b, t_s), -1, dtype=np.int64)
        active = np.zeros(b, dtype=bool)
        for k in range(b):
            s_pos = mask_s[k].nonzero().flatten().tolist()
            t_pos = mask_t[k].nonzero().flatten().tolist()
            if not s_pos or not t_pos:
                continue
            active[k] = True
            shift = 0 if self.mode == "reference" else 1
            strings_s = self._target_strings(batch, "student", k, s_pos, shift)
            strings_t = self._target_strings(batch, "teacher", k, t_pos, shift)
            if self.mode == "reference":
                found_path, found_partner = published_dtw(strings_s, strings_t)
            else:
                found = align_tokens(strings_s, strings_t, MARKERS)
                found_path, found_partner = found.path, found.partner
            s_arr, t_arr = np.asarray(s_pos), np.asarray(t_pos)
            path[k, s_arr[found_path[:, 0]], t_arr[found_path[:, 1]]] = True
            single = found_partner >= 0
            partner[k, s_arr[single]] = t_arr[found_partner[single]]
        device = batch.device
        return (
            torch.from_numpy(path).to(device),
            torch.from_numpy(partner).to(device),
            torch.from_numpy(active).to(device),
        )

    def _reference_target(self, batch: KDBatch, z_t: torch.Tensor, aligned: torch.Tensor, partner: torch.Tensor,
                          v_s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The published target: ``(aligned, z~ [B, T_s, V_s], exact)`` (module docstring)."""
        b_idx, s_idx = aligned.nonzero(as_tuple=True)
        t_idx = partner[b_idx, s_idx]
        t_input = batch.teacher_input_ids[b_idx, t_idx]
        known = t_input < len(self.map_ids)
        same = known & (self.map_ids[t_input.clamp(max=len(self.map_ids) - 1)] == batch.student_input_ids[b_idx, s_idx])
        keep = self.reference_student_ids < v_s
        student_ids, teacher_ids = self.reference_student_ids[keep], self.reference_teacher_ids[keep]
        target = torch.full((*aligned.shape, v_s), self.mask_value, device=z_t.device, dtype=torch.float32)
        rows = torch.full((len(b_idx), v_s), self.mask_value, device=z_t.device, dtype=torch.float32)
        rows[:, student_ids] = z_t[b_idx, t_idx][:, teacher_ids].float()
        same = same & (rows.amax(-1) != self.mask_value)
        target[b_idx, s_idx] = rows
        final = torch.zeros_like(aligned)
        final[b_idx, s_idx] = same
        exact = self.map_exact[teacher_ids].expand(int(same.sum()), -1)
        return final, target, exact

    def mapped_logits(self, z_t_rows: torch.Tensor, v_s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z~ [N, V_s], exact [N, k])``: teacher rows' top-k logits moved to mapped student ids (max on
        collisions, ``mask_value`` elsewhere), and whether each moved id was mapped by exact string."""
        top = z_t_rows.float().topk(self.top_k, -1)
        known = top.indices < len(self.map_ids)
        teacher_ids = top.indices.clamp(max=len(self.map_ids) - 1)
        self._resolve(teacher_ids)
        ids = self.map_ids[teacher_ids]
        usable = known & (ids >= 0) & (ids < v_s)
        values = torch.where(usable, top.values, self.mask_value)
        out = torch.full((len(z_t_rows), v_s), self.mask_value, device=z_t_rows.device)
        out.scatter_reduce_(-1, torch.where(usable, ids, 0), values, reduce="amax", include_self=True)
        exact = usable & self.map_exact[top.indices.clamp(max=len(self.map_exact) - 1)]
        return out, exact

    def _resolve(self, teacher_ids: torch.Tensor) -> None:
        """Look up the map entries of ``teacher_ids`` not resolved yet (the map computes them on demand)."""
        missing = teacher_ids[self.map_ids[teacher_ids] == UNRESOLVED].unique()
        if len(missing):
            found = self.map.lookup(missing.cpu().numpy())
            self.map_ids[missing] = torch.as_tensor(found, device=self.map_ids.device)

    def forward(self, batch: KDBatch, student_outputs=None, teacher_outputs=None) -> KDOutput:
        s_out, t_out = run_models(self, batch, student_outputs, teacher_outputs, hidden=False)
        z_s, z_t = s_out.logits, t_out.logits.detach()
        v_s, v_t = z_s.shape[-1], z_t.shape[-1]
        if self.top_k > v_t:
            raise ValueError(f"top_k={self.top_k} is larger than the teacher vocabulary (V_t={v_t}); lower top_k")
        targets, mask_s, mask_t = batch.student_targets, batch.student_mask, batch.teacher_mask
        check_ids("student_targets", targets, mask_s, v_s, "the student's vocabulary")
        check_finite("teacher_logits", z_t[mask_t], mask_t.nonzero())  # named in the teacher's own shape
        path, partner, active = self.align(batch)
        kd_mask = mask_s & active[:, None]
        aligned = partner >= 0
        if self.mode == "reference":
            aligned, target, moved_exact = self._reference_target(batch, z_t, aligned, partner, v_s)
        else:
            target = torch.full(z_s.shape, self.mask_value, device=z_s.device, dtype=torch.float32)
            b_idx, s_idx = aligned.nonzero(as_tuple=True)
            moved, moved_exact = self.mapped_logits(z_t[b_idx, partner[b_idx, s_idx]], v_s)
            target[b_idx, s_idx] = moved
        gold_b, gold_s = (kd_mask & ~aligned).nonzero(as_tuple=True)
        target[gold_b, gold_s] = self.mask_value
        gold_logit = REFERENCE_GOLD_LOGIT if self.mode == "reference" else 0.0
        target[gold_b, gold_s, targets[gold_b, gold_s]] = gold_logit
        token_kd = divergence(
            "fkl", z_s, target, kd_mask, tau=self.tau, reduction="none", tau_squared=self.tau_squared
        )
        kd = token_kd.sum() / kd_mask.sum().clamp(min=1)
        ce, token_ce = cross_entropy(z_s, targets)
        loss = self.ce_weight * ce + self.kd_weight * kd
        metrics = {
            "one_to_one_share": masked_mean(aligned, mask_s),
            "vocab_exact_share": torch.tensor(self.map.exact_share, device=z_s.device),
            "moved_exact_share": masked_mean(moved_exact, torch.ones_like(moved_exact)),
            "student_acc": masked_mean(z_s.detach().argmax(-1) == targets, mask_s),
        }
        # the paper aligns predicted tokens, the published code the tokens read at the response positions
        reference = "input" if self.mode == "reference" else "target"
        diagnostics = {
            "dtw_path": Alignment(path, "hard", reference),
            "aligned_teacher_position": partner,
            "one_to_one": aligned,
            "mapped_teacher_logits": target,
            "token_kd": TokenValues(token_kd.detach(), "student"),
            "token_ce": TokenValues(token_ce.detach(), "student"),
            "student_mask": mask_s,
            "teacher_mask": mask_t,
            "student_target_ids": targets,
            "student_logits": Logits(z_s.detach(), "student", "student"),
            "teacher_logits": Logits(z_t, "teacher", "teacher"),
        }
        return kd_output(loss, {"ce": ce, "kd": kd}, metrics, diagnostics)
