"""Dynamic time warping over two token-string sequences, the cost of a pair being an edit distance.

This is MinED's token alignment. With ``d(i, j)`` the Levenshtein distance between
token ``a_i`` and token ``b_j`` after removing the whitespace markers (``▁``, ``Ġ``)::

    D(i, j) = d(i, j) + min(D(i-1, j-1), D(i-1, j), D(i, j-1)),   D(0, 0) = d(0, 0)

and the alignment is the monotone path from ``(0, 0)`` to ``(n-1, m-1)`` that achieves ``D(n-1, m-1)``.
A token of ``a`` is *one-to-one* when the path pairs it with a single token of ``b`` that the path pairs
with nothing else.

Costs come from rapidfuzz (C++), the recursion runs one row at a time in numpy: with ``S`` the running
sum of row ``i`` of ``d``, ``D(i, j) = S_j + cummin_j(d(i, j) + min(D(i-1, j-1), D(i-1, j)) - S_j)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

MARKERS = ("▁", "Ġ")


def normalize_token(token: str, markers: Sequence[str] = MARKERS) -> str:
    """``token`` without its whitespace markers (``"Ġworld" -> "world"``, ``"▁the" -> "the"``)."""
    for marker in markers:
        token = token.replace(marker, "")
    return token


def edit_costs(a: Sequence[str], b: Sequence[str], markers: Sequence[str] = MARKERS) -> np.ndarray:
    """``[len(a), len(b)]`` float64 Levenshtein distances between the marker-normalised strings."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    na = [normalize_token(t, markers) for t in a]
    nb = [normalize_token(t, markers) for t in b]
    return cdist(na, nb, scorer=Levenshtein.distance, dtype=np.int32, workers=1).astype(np.float64)


def dtw_path(cost: np.ndarray) -> np.ndarray:
    """The optimal warping path of a ``[n, m]`` cost matrix as an ``[L, 2]`` int array of ``(i, j)`` pairs.

    Steps are ``(1, 0)``, ``(0, 1)`` and ``(1, 1)``; on ties the backtrack prefers the diagonal, then
    ``(i-1, j)``. An empty side gives an empty path.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a [n, m] matrix, got shape {cost.shape}")
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), dtype=np.int64)
    total = np.empty((n, m))
    total[0] = np.cumsum(cost[0])
    for i in range(1, n):
        best_above = total[i - 1].copy()
        best_above[1:] = np.minimum(best_above[1:], total[i - 1, :-1])
        running = np.cumsum(cost[i])
        total[i] = running + np.minimum.accumulate(cost[i] + best_above - running)
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diag, up, left = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
            if diag <= up and diag <= left:
                i, j = i - 1, j - 1
            elif up <= left:
                i -= 1
            else:
                j -= 1
        path.append((i, j))
    return np.asarray(path[::-1], dtype=np.int64)


def one_to_one(path: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """``[n_a]`` int array: the index in ``b`` paired one-to-one with each token of ``a``, else ``-1``."""
    path = np.asarray(path, dtype=np.int64).reshape(-1, 2)
    count_a = np.bincount(path[:, 0], minlength=n_a)
    count_b = np.bincount(path[:, 1], minlength=n_b)
    partner = np.full(n_a, -1, dtype=np.int64)
    single = (count_a[path[:, 0]] == 1) & (count_b[path[:, 1]] == 1)
    partner[path[single, 0]] = path[single, 1]
    return partner


@dataclass(frozen=True)
class TokenAlignment:
    """The DTW alignment of token strings ``a`` (rows) and ``b`` (columns).

    ``path`` ``[L, 2]`` pairs ``(i, j)``; ``partner[i]`` the one-to-one partner of ``a_i`` in ``b`` (or -1);
    ``cost`` the total edit distance along the path.
    """

    path: np.ndarray
    partner: np.ndarray
    cost: float

    @property
    def one_to_one_share(self) -> float:
        """Share of ``a``'s tokens aligned one-to-one (0 when ``a`` is empty)."""
        return float((self.partner >= 0).mean()) if len(self.partner) else 0.0


def align_tokens(a: Sequence[str], b: Sequence[str], markers: Sequence[str] = MARKERS) -> TokenAlignment:
    """DTW-align two token-string sequences on the edit distance of their marker-normalised strings."""
    cost = edit_costs(a, b, markers)
    path = dtw_path(cost)
    total = float(cost[path[:, 0], path[:, 1]].sum()) if len(path) else 0.0
    return TokenAlignment(path, one_to_one(path, len(a), len(b)), total)
