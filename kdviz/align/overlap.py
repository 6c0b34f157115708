"""Ground-truth alignment between two tokenisations of one text (docs/methods.md#ground-truth-alignment).

Token ``i`` of side A and token ``j`` of side B are aligned when their spans overlap. Spans are
character offsets into a ``str``, or UTF-8 byte offsets into ``bytes``: byte offsets are the exact
ground truth, since byte pieces of one character (``<0xF0>``, byte-level ``ðŁ``) each cover only their
own bytes of it. Two details keep the matrix honest:

- **Whitespace.** Tokenizers disagree about which token owns a space (``Ġworld`` vs ``hello▁``). Spans
  are compared after trimming their leading and trailing whitespace, so a space never links two words.
  A token made only of whitespace (``Ġ``, ``Ċ``) keeps its raw span and overlaps the raw spans of the
  other side, so it is still aligned to whatever holds the same whitespace.
- **Special tokens** have empty spans (``start == end``) and overlap nothing.

The overlap graph splits into connected regions, each labelled by its shape (:func:`regions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

KINDS = ("one-to-one", "one-to-many", "many-to-one", "many-to-many", "unmatched")


def _as_offsets(offsets) -> torch.Tensor:
    t = torch.as_tensor(offsets, dtype=torch.long)
    if t.numel() == 0:
        return t.reshape(0, 2)
    if t.dim() != 2 or t.shape[1] != 2:
        raise ValueError(f"offsets must have shape [T, 2] (start, end), got {tuple(t.shape)}")
    return t


def _space_units(text: str | bytes) -> list[bool]:
    """Per character of a ``str`` (per byte of UTF-8 ``bytes``): whether it is (part of) whitespace."""
    if isinstance(text, str):
        return [c.isspace() for c in text]
    return [c.isspace() for c in text.decode("utf-8", errors="replace") for _ in range(len(c.encode()))]


def trimmed_spans(offsets, text: str | bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spans, blank)``: spans with surrounding whitespace removed, and which tokens are all whitespace.

    ``offsets`` index characters of a ``str`` or bytes of ``bytes``. A blank token (only whitespace) keeps
    its raw span. Empty spans stay empty.
    """
    raw = _as_offsets(offsets)
    spans = raw.clone()
    blank = torch.zeros(len(raw), dtype=torch.bool)
    space = _space_units(text)
    for k, (s, e) in enumerate(raw.tolist()):
        if s >= e:
            continue
        lo, hi = s, min(e, len(space))
        while lo < hi and space[lo]:
            lo += 1
        while hi > lo and space[hi - 1]:
            hi -= 1
        if lo == hi:
            blank[k] = True
        else:
            spans[k] = torch.tensor([lo, hi])
    return spans, blank


def _intersects(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[T_a, T_b]``: non-empty spans ``a_i`` and ``b_j`` share at least one character."""
    a_s, a_e = a[:, 0, None], a[:, 1, None]
    b_s, b_e = b[None, :, 0], b[None, :, 1]
    return (a_s < b_e) & (b_s < a_e) & (a_s < a_e) & (b_s < b_e)


def overlap_matrix(offsets_a, offsets_b, text: str | bytes) -> torch.Tensor:
    """Boolean ``[T_a, T_b]`` ground truth: token ``i`` of A and ``j`` of B cover a common character (byte).

    ``offsets_*`` are ``[T, 2]`` spans into ``text``, characters of a ``str`` or bytes of UTF-8 ``bytes``
    (``start == end`` for special tokens).
    Spans are compared whitespace-trimmed; an all-whitespace token is compared by its raw span against the
    raw spans of the other side.
    """
    raw_a, raw_b = _as_offsets(offsets_a), _as_offsets(offsets_b)
    trim_a, blank_a = trimmed_spans(raw_a, text)
    trim_b, blank_b = trimmed_spans(raw_b, text)
    core = _intersects(trim_a, trim_b)
    via_blank = _intersects(raw_a, raw_b) & (blank_a[:, None] | blank_b[None, :])
    return core | via_blank


@dataclass(frozen=True)
class Region:
    """A connected group of the overlap graph.

    ``rows`` are token indices of side A (the student in a :class:`~kdviz.methods.KDBatch`), ``cols`` of
    side B; ``start``/``end`` the characters (bytes, for byte offsets) the region covers. ``kind``:
    ``one-to-one`` (1 A token, 1 B token), ``one-to-many`` (B splits what A keeps whole),
    ``many-to-one`` (B merges what A splits), ``many-to-many`` (boundaries cross),
    ``unmatched`` (tokens of one side only, e.g. text the other tokenizer normalised away).
    """

    kind: str
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    start: int
    end: int


def _kind(n_rows: int, n_cols: int) -> str:
    if n_rows == 0 or n_cols == 0:
        return "unmatched"
    if n_rows == 1:
        return "one-to-one" if n_cols == 1 else "one-to-many"
    return "many-to-one" if n_cols == 1 else "many-to-many"


def regions(offsets_a, offsets_b, text: str | bytes, overlap: torch.Tensor | None = None) -> list[Region]:
    """Group the tokens of both sides into connected regions of the overlap graph, in text order.

    Tokens with empty spans (special tokens) belong to no region. ``overlap`` may be passed if already
    computed with :func:`overlap_matrix`.
    """
    raw_a, raw_b = _as_offsets(offsets_a), _as_offsets(offsets_b)
    if overlap is None:
        overlap = overlap_matrix(raw_a, raw_b, text)
    n_a = len(raw_a)
    parent = list(range(n_a + len(raw_b)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in overlap.nonzero().tolist():
        ri, rj = find(i), find(n_a + j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for k, (s, e) in enumerate(torch.cat([raw_a, raw_b]).tolist()):
        if s >= e:
            continue
        rows, cols = groups.setdefault(find(k), ([], []))
        (rows if k < n_a else cols).append(k if k < n_a else k - n_a)
    out = []
    for rows, cols in groups.values():
        spans = [raw_a[i].tolist() for i in rows] + [raw_b[j].tolist() for j in cols]
        start, end = min(s for s, _ in spans), max(e for _, e in spans)
        out.append(Region(_kind(len(rows), len(cols)), tuple(rows), tuple(cols), start, end))
    return sorted(out, key=lambda r: (r.start, r.end))


def kind_counts(found: Sequence[Region]) -> dict[str, int]:
    """How many regions of each kind (every kind present as a key)."""
    counts = dict.fromkeys(KINDS, 0)
    for r in found:
        counts[r.kind] += 1
    return counts
