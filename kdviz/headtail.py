"""Head/tail statistics of a teacher/student pair (docs/methods.md#akl), shared by AKL and the probe.

For each token the teacher distribution ``p`` is sorted in descending order with cumulative sums
``c_k``. The *head* ``H`` is every sorted position with ``c_k <= mu`` plus the argmax (always in the
head); the token whose cumulative sum crosses ``mu`` belongs to the tail, unless
``crossing_in_head=True``. Ties in ``p`` at the head boundary are broken towards the lower vocabulary
id, so the split is deterministic.

The head is found with one ``topk`` whose ``k`` comes from a one-pass histogram of the probabilities
(buckets of a factor 2), so a 150k vocabulary is not sorted per token; sums over the head gather its ids
instead of masking the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from kdviz.ops import Rows, Scratch, check_finite, check_pair, check_tau, make_rows, rows_per_chunk, scatter_rows

FALLBACK_EPS = 1e-12  # g_head + g_tail below this: student equals teacher, weights are 0.5 / 0.5
_BUCKETS = 64  # probability buckets of a factor 2 each, below the row's maximum


def check_mu(mu: float) -> None:
    if not (isinstance(mu, (int, float)) and 0.0 < mu < 1.0):
        raise ValueError(f"mu must be a number strictly between 0 and 1, got {mu!r}")


def _candidates(p: torch.Tensor, mu: float, scratch: Scratch | None = None) -> torch.Tensor:
    """Per row, a ``k`` such that the top-``k`` entries of ``p`` hold more than ``mu`` (so the head and the
    crossing token are among them): entries are bucketed by ``floor(-log2 p)`` (zeros and anything below
    ``2**-63`` in the last bucket) in one pass, and the buckets taken in order until their mass passes ``mu``.
    ``scratch``: the chunked engine's work buffers for the ``[N, V]`` buckets, when ``p`` is its chunk."""
    n, v = p.shape
    log2 = torch.log2(p, out=None if scratch is None else scratch.take())
    bucket = log2.neg_().clamp_(max=_BUCKETS - 1)  # non-increasing in p
    bucket = bucket.long() if scratch is None else scratch.take(torch.long).copy_(bucket)
    mass = torch.zeros(n, _BUCKETS, dtype=p.dtype, device=p.device).scatter_add_(1, bucket, p)
    one = torch.ones((1, 1), device=p.device).expand_as(bucket)  # float32 counts: exact up to 2**24 entries
    count = torch.zeros(n, _BUCKETS, device=p.device).scatter_add_(1, bucket, one)
    last = (mass.cumsum(-1) <= mu).sum(-1, keepdim=True)  # the bucket where the mass passes mu
    k = count.cumsum(-1).gather(-1, last.clamp(max=_BUCKETS - 1)).squeeze(-1).long()
    return torch.where(last.squeeze(-1) >= _BUCKETS, v, k)


def _bound(p: torch.Tensor, mu: float, scratch: Scratch | None = None) -> int:
    """Entries a ``topk`` of ``p`` ``[N, V]`` keeps to hold every row's head and the entry after it."""
    return min(int(_candidates(p, mu, scratch).max()) + 1, p.shape[-1]) if p.shape[0] else p.shape[-1]


def _ranked_heads(
    p: torch.Tensor, mu: float, crossing_in_head: bool, guess: int | None = None, scratch: Scratch | None = None
):
    """Yield ``(rows, size, top, ids)`` until every row of ``p`` ``[N, V]`` is covered: the head size ``|H|``
    of each of ``rows`` and that row's largest entries ``top`` (descending) and their ids, of which the first
    ``size`` hold the head. One ``topk`` of ``guess`` entries when given (e.g. from similar rows), else of
    the ``k`` of :func:`_candidates`; the rows it leaves unresolved are ranked again with that bound, and a
    full sort for the rows whose rounding leaves the crossing outside it."""
    n, v = p.shape
    todo, chosen = torch.arange(n, device=p.device), p
    guessed = guess is not None and guess < v
    k = guess if guessed else _bound(p, mu, scratch)
    while todo.numel():
        top, ids = chosen.topk(k, dim=-1) if k < v else chosen.sort(dim=-1, descending=True)
        below = (top.cumsum(-1) <= mu).sum(-1)  # c is non-decreasing: the head is a prefix
        resolved = (below + crossing_in_head < k) | (k == v)  # the entry after the head is in view (ties)
        size = below.clamp(min=1)
        if crossing_in_head:
            size = torch.where(below >= 1, below + 1, size).clamp(max=v)
        yield todo[resolved], size[resolved], top[resolved], ids[resolved]
        todo = todo[~resolved]
        chosen = p[todo]
        k = _bound(chosen, mu) if guessed else v  # after the bound itself: a full sort
        guessed = False


def head_sizes(p: torch.Tensor, mu: float, crossing_in_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Head size ``|H|`` per row of ``p`` ``[N, V]`` and the smallest teacher probability in the head."""
    size = torch.ones(p.shape[0], dtype=torch.long, device=p.device)
    smallest = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    for rows, h, top, _ in _ranked_heads(p, mu, crossing_in_head):
        size[rows], smallest[rows] = h, top.gather(-1, h[:, None] - 1).squeeze(-1)
    return size, smallest


def head_sums(
    p: torch.Tensor,
    mu: float,
    crossing_in_head: bool,
    heads: tuple[torch.Tensor, ...],
    tails: tuple[torch.Tensor, ...] = (),
    guess: int | None = None,
    scratch: Scratch | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``(|H|, head sums, tail sums)`` per row: the sum over the head of each ``[N, V]`` tensor of ``heads`` and
    over the tail of each of ``tails``, without a ``[N, V]`` head mask. The head is the first ``|H|`` ids of
    the ranking (gathered), the tail every entry below its smallest probability, except in rows where ties
    straddle the boundary (there :func:`head_mask` decides which of the tied ids are in). Tails are summed,
    not subtracted from a total, so a tail mass of 1e-9 keeps its digits. ``guess``: see :func:`_ranked_heads`;
    ``scratch``: the chunked engine's work buffers, when ``p`` is its chunk."""
    n = p.shape[0]
    sizes = torch.ones(n, dtype=torch.long, device=p.device)
    smallest = torch.zeros(n, dtype=p.dtype, device=p.device)
    tied = torch.zeros(n, dtype=torch.bool, device=p.device)
    head_out = [x.new_zeros(n) for x in heads]
    for rows, size, top, ids in _ranked_heads(p, mu, crossing_in_head, guess, scratch):
        width = top.shape[-1]
        sizes[rows] = size
        smallest[rows] = top.gather(-1, size[:, None] - 1).squeeze(-1)
        tied[rows] = (size < width) & (smallest[rows] == top.gather(-1, size.clamp(max=width - 1)[:, None]).squeeze(-1))
        in_head = torch.arange(width, device=p.device) < size[:, None]
        for total, x in zip(head_out, heads, strict=True):
            total[rows] = (x[rows[:, None], ids] * in_head).sum(-1)  # gathers [rows, width], not whole rows
    tail_out = []
    if tails:
        below = (p < smallest[:, None]).to(p.dtype)
        tail_out = [torch.linalg.vecdot(below, x) for x in tails]
    if bool(tied.any()):
        mixed = tied.nonzero().squeeze(-1)
        head = head_mask(p[mixed], mu, crossing_in_head)
        for total, x in zip(head_out, heads, strict=True):
            total[mixed] = torch.where(head, x[mixed], 0.0).sum(-1)
        for total, x in zip(tail_out, tails, strict=True):
            total[mixed] = torch.where(head, 0.0, x[mixed]).sum(-1)
    return sizes, head_out, tail_out


def head_mask(p: torch.Tensor, mu: float, crossing_in_head: bool = False) -> torch.Tensor:
    """Boolean ``[N, V]``: membership of each vocabulary entry in the teacher's head."""
    size, smallest = head_sizes(p, mu, crossing_in_head)
    above = p > smallest[:, None]
    at = p == smallest[:, None]
    needed = size - above.sum(-1)  # how many entries equal to the boundary value belong to the head
    tied = (at.sum(-1) > needed).nonzero().squeeze(-1)  # rows where only some of the ties are in the head
    head = above | at
    if tied.numel():
        head[tied] = above[tied] | (at[tied] & (at[tied].cumsum(-1) <= needed[tied, None]))
    return head


def _weights(g_head: torch.Tensor, g_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fallback = g_all < FALLBACK_EPS
    return torch.where(fallback, 0.5, g_head / torch.where(fallback, 1.0, g_all)), fallback


def head_weights(rows: Rows, mu: float, crossing_in_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """AKL's detached head weight ``w_head = g_head / (g_head + g_tail)`` per row, and the 0/0 fallbacks.

    Returns ``(w_head, fallback)``; where ``g_head + g_tail < 1e-12`` the weight is 0.5 and ``fallback``
    is True.
    """
    with torch.no_grad():
        detached = rows.detach()  # a fresh Rows: never fill the caller's cached p, q without their graph
        p, q = detached.p, detached.q
        gap = torch.sub(p, q, out=detached.out()).abs_()
        _, (g_head,), _ = head_sums(p, mu, crossing_in_head, (gap,), scratch=detached.scratch)
        return _weights(g_head, gap.sum(-1))


@dataclass
class HeadTail:
    """Per-token head/tail statistics, each a float tensor of the logits' leading shape.

    Masked positions hold NaN (``mask`` tells which are valid). ``argmax_agree`` and
    ``weight_fallback`` are 1.0 / 0.0 on valid positions.

    Fields: ``head_size`` |H|; ``p_head``, ``q_head`` teacher and student mass on the teacher's head;
    ``p_tail``, ``q_tail`` the masses on the rest; ``g_head = sum_H |p - q|``, ``g_tail`` the same over the tail;
    ``d_head = sum_H (p - q)`` the signed head gap; ``w_head = g_head / (g_head + g_tail)`` (0.5 when
    both are 0, flagged in ``weight_fallback``); ``fkl``, ``rkl``; ``entropy_p``, ``entropy_q``;
    ``argmax_agree``.
    """

    mask: torch.Tensor
    head_size: torch.Tensor
    p_head: torch.Tensor
    q_head: torch.Tensor
    p_tail: torch.Tensor
    q_tail: torch.Tensor
    g_head: torch.Tensor
    g_tail: torch.Tensor
    d_head: torch.Tensor
    w_head: torch.Tensor
    weight_fallback: torch.Tensor
    fkl: torch.Tensor
    rkl: torch.Tensor
    entropy_p: torch.Tensor
    entropy_q: torch.Tensor
    argmax_agree: torch.Tensor

    @classmethod
    def statistics(cls) -> tuple[str, ...]:
        """Names of the per-token statistics (every field but ``mask``)."""
        return tuple(f.name for f in fields(cls) if f.name != "mask")

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.statistics()}


def head_tail_rows(
    rows: Rows, mu: float = 0.5, crossing_in_head: bool = False, guess: int | None = None
) -> dict[str, torch.Tensor]:
    """The statistics of :class:`HeadTail` for ``[N, V]`` rows, as a dict of ``[N]`` tensors (no grad);
    ``guess``: how many top entries probably hold the heads (see :func:`_ranked_heads`)."""
    check_mu(mu)
    with torch.no_grad():
        rows = rows.detach()
        p, q = rows.p, rows.q
        gap = (p - q).abs()
        head_size, (p_head, q_head, g_head), (p_tail, q_tail) = head_sums(
            p, mu, crossing_in_head, (p, q, gap), (p, q), guess
        )
        g_all = gap.sum(-1)
        w_head, fallback = _weights(g_head, g_all)
        # p and q are 0 outside the support and the logs finite everywhere: plain dot products, no mask
        entropy_p = -torch.linalg.vecdot(p, rows.logp)
        entropy_q = -torch.linalg.vecdot(q, rows.logq)
        return {
            "head_size": head_size.to(p.dtype),
            "p_head": p_head,
            "q_head": q_head,
            "p_tail": p_tail,
            "q_tail": q_tail,
            "g_head": g_head,
            "g_tail": g_all - g_head,
            "d_head": p_head - q_head,
            "w_head": w_head,
            "weight_fallback": fallback.to(p.dtype),
            "fkl": -entropy_p - torch.linalg.vecdot(p, rows.logq),
            "rkl": -entropy_q - torch.linalg.vecdot(q, rows.logp),
            "entropy_p": entropy_p,
            "entropy_q": entropy_q,
            "argmax_agree": (p.argmax(-1) == q.argmax(-1)).to(p.dtype),
        }


def head_tail(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    mu: float = 0.5,
    tau: float = 1.0,
    crossing_in_head: bool = False,
) -> HeadTail:
    """Per-token head/tail statistics of ``p = softmax(teacher/tau)`` vs ``q = softmax(student/tau)``.

    Logits are ``[..., V]``; ``mask`` (bool, leading shape) selects the tokens; masked positions are NaN
    in every statistic. ``-inf`` entries are handled as the divergences' ``support="shared"`` (removed from both
    sides). Rows are processed in chunks of the divergences' size, so memory stays a few chunks above the logits.
    """
    check_mu(mu)
    tau = check_tau(tau)
    student_logits, teacher_logits, mask = check_pair(student_logits, teacher_logits, mask)
    v = student_logits.shape[-1]
    flat_s, flat_t = student_logits.detach().reshape(-1, v), teacher_logits.detach().reshape(-1, v)
    index, positions = mask.reshape(-1).nonzero().squeeze(-1), mask.nonzero()
    step = rows_per_chunk(student_logits.device, v, student_logits.dtype)
    parts, guess = [], None
    with torch.no_grad():
        for start in range(0, max(len(index), 1), step):  # one chunk of rows at a time, like the divergences
            rows = index[start : start + step]
            s, t = flat_s[rows], flat_t[rows]
            check_finite("student_logits", s, positions[start : start + step])
            check_finite("teacher_logits", t, positions[start : start + step])
            parts.append(head_tail_rows(make_rows(s, t, tau), mu, crossing_in_head, guess))
            if len(rows):  # the next chunk's tokens are neighbours of these: their heads are about as large
                guess = int(1.25 * float(parts[-1]["head_size"].max())) + 2
        stats = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        return HeadTail(mask=mask, **{k: scatter_rows(v, mask, float("nan")) for k, v in stats.items()})
