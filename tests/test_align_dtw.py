"""DTW over token strings (kdviz.align.dtw): the recursion against a plain dynamic program, hand-made
alignments, one-to-one detection, empty sides."""

from __future__ import annotations

import numpy as np
import pytest

from kdviz.align.dtw import align_tokens, dtw_path, edit_costs, normalize_token, one_to_one


def brute_dtw(cost: np.ndarray) -> float:
    """The textbook O(n m) recursion, cell by cell."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            total[i, j] = cost[i - 1, j - 1] + min(total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
    return float(total[n, m])


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def check_path(path: np.ndarray, n: int, m: int) -> None:
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (n - 1, m - 1)
    steps = np.diff(path, axis=0)
    assert {tuple(s) for s in steps} <= {(1, 0), (0, 1), (1, 1)}


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (7, 11), (12, 5)])
def test_path_is_optimal_and_monotone(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.integers(0, 6, size=shape).astype(float)
        path = dtw_path(cost)
        check_path(path, *shape)
        assert cost[path[:, 0], path[:, 1]].sum() == brute_dtw(cost)


def test_diagonal_preferred_on_ties():
    path = dtw_path(np.zeros((3, 3)))
    assert path.tolist() == [[0, 0], [1, 1], [2, 2]]


def test_normalisation_and_costs_match_a_plain_levenshtein():
    assert normalize_token("Ġworld") == "world" and normalize_token("▁the▁") == "the" and normalize_token("Ġ") == ""
    a, b = ["▁hel", "lo", "▁wörld", "Ċ"], ["Ġhello", "Ġworld", "!"]
    got = edit_costs(a, b)
    want = [[levenshtein(normalize_token(x), normalize_token(y)) for y in b] for x in a]
    assert got.tolist() == want


def test_hand_made_alignment():
    student = ["▁The", "▁ca", "t", "▁sleeps"]
    teacher = ["ĠThe", "Ġcat", "Ġsleeps"]
    found = align_tokens(student, teacher)
    assert found.path.tolist() == [[0, 0], [1, 1], [2, 1], [3, 2]]
    assert found.partner.tolist() == [0, -1, -1, 2]
    assert found.one_to_one_share == pytest.approx(2 / 4)
    assert found.cost == 1 + 2  # "ca" vs "cat", then "t" vs "cat"


def test_one_to_one_needs_both_sides_single():
    path = np.array([[0, 0], [1, 0], [2, 1], [2, 2], [3, 3]])
    assert one_to_one(path, 4, 4).tolist() == [-1, -1, -1, 3]


def test_empty_sides():
    assert dtw_path(np.zeros((0, 4))).shape == (0, 2)
    found = align_tokens([], ["Ġa"])
    assert found.path.shape == (0, 2) and found.one_to_one_share == 0.0 and found.cost == 0.0
    assert align_tokens(["a"], []).partner.tolist() == [-1]
    with pytest.raises(ValueError, match="cost must be"):
        dtw_path(np.zeros(3))
