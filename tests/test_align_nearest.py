"""The exact nearest byte string (kdviz.align.nearest): every query's minimum Levenshtein distance and the
lowest id among the candidates at that distance, against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from kdviz.align.nearest import NearestIndex
from tests.test_align_dtw import levenshtein


def brute_force(queries, candidates, ids):
    out = []
    for q in queries:
        dist = [levenshtein(q.decode("latin-1"), c.decode("latin-1")) for c in candidates]
        best = min(dist)
        out.append((min(i for i, d in zip(ids, dist, strict=True) if d == best), best))
    return out


def random_strings(rng, n, alphabet, max_length):
    return [bytes(rng.choice(alphabet, size=rng.integers(0, max_length + 1))) for _ in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_nearest_matches_brute_force_with_lowest_id_on_ties(seed):
    rng = np.random.default_rng(seed)
    alphabet = np.array([32, 97, 98, 99, 195, 169, 228, 184, 173], dtype=np.uint8)  # space, a b c, é, 中 bytes
    candidates = random_strings(rng, 300, alphabet, 9) + [bytes(rng.choice(alphabet, size=90))]  # one > 64 bytes
    ids = rng.permutation(10_000)[: len(candidates)]  # unsorted ids, as a vocabulary's distinct strings have
    queries = random_strings(rng, 120, alphabet, 12) + [b"", bytes(rng.choice(alphabet, size=80))]
    found_ids, found_dist = NearestIndex(candidates, ids).nearest(queries)
    assert list(zip(found_ids.tolist(), found_dist.tolist(), strict=True)) == brute_force(queries, candidates, ids)


def test_ties_and_edge_cases():
    index = NearestIndex([b"cab", b"car", b"", b"dog"], [7, 3, 9, 1])
    ids, dist = index.nearest([b"cat", b"", b"x", b"dogs"])
    assert ids.tolist() == [3, 9, 9, 1] and dist.tolist() == [1, 0, 1, 1]  # cab/car tie -> id 3; "x": "" at 1
    assert index.nearest([])[0].shape == (0,)
    # past 127 bytes a byte class's count no longer fits its 7 bits: the class bound must not apply there
    # (capped counts would put "a" * 135 at least 140 - 127 = 13 away and keep the candidate at distance 6)
    long = NearestIndex([b"a" * 135, b"a" * 134 + b"0" * 6], [5, 6])
    assert [x.tolist() for x in long.nearest([b"a" * 140])] == [[5], [5]]
    with pytest.raises(ValueError, match="candidates is empty"):
        NearestIndex([], [])
    with pytest.raises(ValueError, match="one id per candidate"):
        NearestIndex([b"a", b"b"], [0])
