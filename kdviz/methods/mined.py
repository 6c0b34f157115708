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
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from kdviz._rows import check_finite
from kdviz.align.dtw import MARKERS, align_tokens
from kdviz.align.vocab_map import VocabMap
from kdviz.align.vocab_map import vocab_map as compute_vocab_map
from kdviz.divergences import divergence
from kdviz.methods._common import (
    alignment_terms,
    attach_models,
    check_ids,
    check_weights,
    cross_entropy,
    masked_mean,
    run_models,
)
from kdviz.methods.base import KDBatch, KDOutput


class MinED(nn.Module):
    """Minimum-edit-distance alignment KD between two tokenizers.

    ``MinED(student=None, teacher=None, *, student_tokenizer=None, teacher_tokenizer=None, vocab_map=None,
    top_k=10, ce_weight=0.5, kd_weight=0.5, tau=2.0, tau_squared=False, cache_dir=None, mask_value=-1e5)``

    - The teacher -> student :class:`~kdviz.align.vocab_map.VocabMap` is ``vocab_map`` if given, else
      computed from the two tokenizers (or read from the cache under ``cache_dir``) when the method is built.
    - ``top_k``: teacher logits moved per aligned position (10); it may not exceed the teacher vocabulary.
    - ``ce_weight``, ``kd_weight``, ``tau``: 0.5, 0.5, 2.0 as in the DSKD paper's MinED baseline.
    - ``mask_value``: the logit of ids that receive no teacher logit (finite, so ``0 * log 0`` stays 0).

    Token strings come from the batch (``student_tokens`` / ``teacher_tokens``, filled by
    :class:`~kdviz.methods.KDCollator`), else from the tokenizers. The method has no parameters; the map
    is a non-persistent buffer (``.to(device)`` moves it).

    Terms: ``loss``, ``ce``, ``kd`` (also in ``parts``), ``one_to_one_share`` (share of student response
    positions aligned one-to-one), ``vocab_exact_share`` (share of the teacher vocabulary mapped by exact
    string), ``moved_exact_share`` (share of moved top-k teacher ids whose map is exact), ``student_acc``,
    and the DTW path's scores against the character-overlap ground truth (``align_*``). Diagnostics:
    ``dtw_path`` ``[B, T_s, T_t]`` bool, ``aligned_teacher_position`` ``[B, T_s]`` (one-to-one partner or -1),
    ``one_to_one`` ``[B, T_s]``, ``mapped_teacher_logits`` ``[B, T_s, V_s]`` (the target ``z~``),
    ``token_kd``, ``token_ce``, the masks, ``student_target_ids`` and both logits.
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
    ) -> None:
        super().__init__()
        ce_weight, kd_weight, tau = check_weights(ce_weight, kd_weight, tau)
        if not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if not (isinstance(mask_value, (int, float)) and -1e30 < mask_value < 0):
            raise ValueError(f"mask_value must be a finite negative number (e.g. -1e5), got {mask_value!r}")
        if vocab_map is None:
            if student_tokenizer is None or teacher_tokenizer is None:
                raise ValueError("MinED needs vocab_map=... or both student_tokenizer and teacher_tokenizer")
            vocab_map = compute_vocab_map(teacher_tokenizer, student_tokenizer, cache_dir=cache_dir)
        self.map = vocab_map
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.top_k, self.mask_value, self.tau_squared = top_k, float(mask_value), tau_squared
        self.ce_weight, self.kd_weight, self.tau = ce_weight, kd_weight, tau
        self.register_buffer("map_ids", torch.as_tensor(vocab_map.ids, dtype=torch.long), persistent=False)
        self.register_buffer("map_exact", torch.as_tensor(vocab_map.exact, dtype=torch.bool), persistent=False)
        attach_models(self, student, teacher)

    def extra_repr(self) -> str:
        return (
            f"top_k={self.top_k}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, tau={self.tau}, "
            f"teacher_vocab={len(self.map)}, vocab_exact_share={self.map.exact_share:.3f}"
        )

    def _target_strings(self, batch: KDBatch, side: str, b: int, positions: list[int]) -> list[str]:
        """Strings of the tokens predicted at ``positions`` (token ``i + 1`` for position ``i``)."""
        tokens = getattr(batch, f"{side}_tokens")
        if len(tokens) > b and len(tokens[b]) > max(positions) + 1:
            return [tokens[b][i + 1] for i in positions]
        tokenizer = getattr(self, f"{side}_tokenizer")
        if tokenizer is None:
            raise ValueError(
                f"the batch has no {side}_tokens for example {b}; build it with KDCollator or pass "
                f"{side}_tokenizer= to MinED"
            )
        ids = getattr(batch, f"{side}_input_ids")[b, [i + 1 for i in positions]]
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
            found = align_tokens(
                self._target_strings(batch, "student", k, s_pos),
                self._target_strings(batch, "teacher", k, t_pos),
                MARKERS,
            )
            s_arr, t_arr = np.asarray(s_pos), np.asarray(t_pos)
            path[k, s_arr[found.path[:, 0]], t_arr[found.path[:, 1]]] = True
            single = found.partner >= 0
            partner[k, s_arr[single]] = t_arr[found.partner[single]]
        device = batch.device
        return (
            torch.from_numpy(path).to(device),
            torch.from_numpy(partner).to(device),
            torch.from_numpy(active).to(device),
        )

    def mapped_logits(self, z_t_rows: torch.Tensor, v_s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z~ [N, V_s], exact [N, k])``: teacher rows' top-k logits moved to mapped student ids (max on
        collisions, ``mask_value`` elsewhere), and whether each moved id was mapped by exact string."""
        top = z_t_rows.float().topk(self.top_k, -1)
        known = top.indices < len(self.map_ids)
        ids = self.map_ids[top.indices.clamp(max=len(self.map_ids) - 1)]
        usable = known & (ids >= 0) & (ids < v_s)
        values = torch.where(usable, top.values, self.mask_value)
        out = torch.full((len(z_t_rows), v_s), self.mask_value, device=z_t_rows.device)
        out.scatter_reduce_(-1, torch.where(usable, ids, 0), values, reduce="amax", include_self=True)
        exact = usable & self.map_exact[top.indices.clamp(max=len(self.map_exact) - 1)]
        return out, exact

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
        target = torch.full(z_s.shape, self.mask_value, device=z_s.device, dtype=torch.float32)
        b_idx, s_idx = aligned.nonzero(as_tuple=True)
        moved, moved_exact = self.mapped_logits(z_t[b_idx, partner[b_idx, s_idx]], v_s)
        target[b_idx, s_idx] = moved
        gold_b, gold_s = (kd_mask & ~aligned).nonzero(as_tuple=True)
        target[gold_b, gold_s, targets[gold_b, gold_s]] = 0.0
        token_kd = divergence(
            "fkl", z_s, target, kd_mask, tau=self.tau, reduction="none", tau_squared=self.tau_squared
        )
        kd = token_kd.sum() / kd_mask.sum().clamp(min=1)
        ce, token_ce = cross_entropy(z_s, targets)
        loss = self.ce_weight * ce + self.kd_weight * kd
        parts = {"ce": ce, "kd": kd}
        with torch.no_grad():
            reference = batch.target_alignment() & mask_t[:, None, :]
            terms = {
                "loss": loss.detach(),
                **{name: value.detach() for name, value in parts.items()},
                "one_to_one_share": masked_mean(aligned, mask_s),
                "vocab_exact_share": torch.tensor(self.map.exact_share, device=z_s.device),
                "moved_exact_share": masked_mean(moved_exact, torch.ones_like(moved_exact)),
                "student_acc": masked_mean(z_s.argmax(-1) == targets, mask_s),
                **alignment_terms(path.float(), reference, mask_s),
            }
        diagnostics = {
            "dtw_path": path,
            "aligned_teacher_position": partner,
            "one_to_one": aligned,
            "mapped_teacher_logits": target,
            "token_kd": token_kd.detach(),
            "token_ce": token_ce.detach(),
            "student_mask": mask_s,
            "teacher_mask": mask_t,
            "student_target_ids": targets,
            "student_logits": z_s.detach(),
            "teacher_logits": z_t,
        }
        return KDOutput(loss, terms, diagnostics, parts)
