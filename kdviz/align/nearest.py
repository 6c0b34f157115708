"""Exact nearest byte string by Levenshtein distance (lowest id on ties), fast enough for whole vocabularies.

For each query ``q`` the answer is ``argmin_c lev(q, c)`` over the candidate byte strings, the lowest id on
ties: what ``rapidfuzz.process.cdist`` + ``argmin`` gives, without computing every pair. Candidates are
visited by length distance ``|len(c) - len(q)|`` (0, 1, 2, ...), which is itself a lower bound, until it
exceeds the best distance found. Each candidate is kept only if two more lower bounds do not rule it out:

- *byte sets*: each distinct byte ``q`` has and ``c`` lacks needs an edit, and so does each one ``c`` has and
  ``q`` lacks: ``lev >= max(|Q \\ C|, |C \\ Q|)`` (256-bit masks, after the same bound on byte classes
  ``byte % 64`` in one word);
- *bag distance*: ``lev >= max(len(q), len(c)) - shared``, ``shared`` the size of the two byte multisets'
  intersection, first bounded from the counts of 16 byte classes ``byte >> 4`` (ASCII letters, digits,
  UTF-8 continuation and lead bytes...): ``shared <= sum_k min(q_k, c_k)``, which rules out at once the
  tokens of another script (a CJK token shares no byte class with an ASCII one); then from the masks:
  ``shared <= |Q ∩ C| + min(len(q) - |Q|, len(c) - |C|)`` (each common byte value counts once, plus the
  repeats of the side with fewer); then computed exactly.

Only candidates within the current best get the dynamic programme, on a band of half-width ``best`` that
stops as soon as a row exceeds it. On real vocabularies (Gemma-3's 175k tokens not in Llama-3 against
Llama-3's 128k) the bounds leave about 0.3 % of the pairs in the length band to the dynamic programme.
The loops are compiled with numba and run over the queries on every core.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

BIG = np.int64(1) << 40  # larger than any distance
BLOCK = 32  # candidates of one length, in byte order, that a bound on their masks' union can skip at once
CLASSES = 16  # byte classes byte >> 4, counted 8 bits each in two words
COUNTED_LENGTH = 127  # strings up to this long have every class count in 7 bits: the class bound is exact
HIGH_BITS = np.uint64(0x8080808080808080)


@numba.njit(inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(inline="always")
def _shared_classes(a0, a1, b0, b1):
    """``sum_k min(a_k, b_k)`` over the 16 byte-class counts packed 8 bits each in two words (counts < 128)."""
    total = np.int64(0)
    for a, b in ((a0, b0), (a1, b1)):
        at_least = (((a | HIGH_BITS) - b) & HIGH_BITS) >> np.uint64(7)  # 1 in each byte where a >= b
        keep_b = at_least * np.uint64(0xFF)
        smaller = (b & keep_b) | (a & ~keep_b)
        total += np.int64((smaller * np.uint64(0x0101010101010101)) >> np.uint64(56))
    return total


@numba.njit
def _bounded_levenshtein(a, b, k, row):
    """``lev(a, b)`` if it is at most ``k``, else ``k + 1`` (a band of half-width ``k``, stopped early)."""
    n, m = a.shape[0], b.shape[0]
    if abs(n - m) > k:
        return k + 1
    over = k + 1
    for j in range(m + 1):
        row[j] = j if j <= k else over
    for i in range(1, n + 1):
        lo, hi = max(1, i - k), min(m, i + k)
        diagonal = row[lo - 1]  # row i-1, column lo-1
        row[lo - 1] = i if lo == 1 else over
        smallest = row[lo - 1]
        for j in range(lo, hi + 1):
            above = row[j]
            value = diagonal + (a[i - 1] != b[j - 1])
            if above + 1 < value:
                value = above + 1
            if row[j - 1] + 1 < value:
                value = row[j - 1] + 1
            if value > over:
                value = over
            diagonal, row[j] = above, value
            if value < smallest:
                smallest = value
        if hi < m:
            row[hi + 1] = over
        if smallest > k:
            return over
    return row[m] if row[m] <= k else over


@numba.njit(inline="always")
def _precedes(c, a):
    """Whether byte string ``c`` sorts before ``a``."""
    for j in range(min(c.shape[0], a.shape[0])):
        if c[j] != a[j]:
            return c[j] < a[j]
    return c.shape[0] < a.shape[0]


@numba.njit(parallel=True, cache=True)
def _nearest(q_data, q_off, q_mask, c_data, c_off, c_mask, c_ids, length_start, max_length, q_small, c_small,
             c_distinct, block_start, block_mask, block_distinct, block_id, q_counts, c_counts, block_counts):
    """For each query: ``(id, distance)`` of its nearest candidate; candidates sorted by length, then bytes,
    in blocks of ``BLOCK`` within a length."""
    n = q_off.shape[0] - 1
    best_ids = np.empty(n, np.int64)
    best_dist = np.empty(n, np.int64)
    for qi in numba.prange(n):
        a = q_data[q_off[qi] : q_off[qi + 1]]
        length = a.shape[0]
        counts = np.zeros(256, np.int64)
        for x in a:
            counts[x] += 1
        taken = np.empty(max_length + 1, np.uint8)
        row = np.empty(max_length + 2, np.int64)
        m0, m1, m2, m3 = q_mask[qi, 0], q_mask[qi, 1], q_mask[qi, 2], q_mask[qi, 3]
        small = q_small[qi]
        h0, h1 = q_counts[qi, 0], q_counts[qi, 1]
        distinct = _popcount(m0) + _popcount(m1) + _popcount(m2) + _popcount(m3)
        best, best_id = BIG, BIG
        # a first bound: the neighbours of q in byte order among the candidates of its length and the next two
        for ell in (length, length - 1, length + 1):
            if ell < 0 or ell > max_length or length_start[ell] == length_start[ell + 1]:
                continue
            lo, hi = length_start[ell], length_start[ell + 1]
            while lo < hi:  # the first candidate not before q
                mid = (lo + hi) // 2
                if _precedes(c_data[c_off[mid] : c_off[mid + 1]], a):
                    lo = mid + 1
                else:
                    hi = mid
            for ci in (lo - 1, lo):
                if length_start[ell] <= ci < length_start[ell + 1]:
                    cid = c_ids[ci]
                    limit = min(best if cid < best_id else best - 1, max(length, ell))
                    distance = _bounded_levenshtein(a, c_data[c_off[ci] : c_off[ci + 1]], limit, row)
                    if distance <= limit:
                        best, best_id = distance, cid
        delta = 0
        while delta <= best and (length - delta >= 0 or length + delta <= max_length):
            for side in range(2):
                ell = length - delta if side == 0 else length + delta
                if (side == 1 and delta == 0) or ell < 0 or ell > max_length:
                    continue
                for block in range(block_start[ell], block_start[ell + 1]):
                    if delta > best:
                        break
                    # the bound below for every candidate of the block at once (its masks' union)
                    common = (_popcount(m0 & block_mask[block, 0]) + _popcount(m1 & block_mask[block, 1])
                              + _popcount(m2 & block_mask[block, 2]) + _popcount(m3 & block_mask[block, 3]))
                    repeats = min(length - distinct, ell - block_distinct[block])
                    bound = max(delta, distinct - common, max(length, ell) - common - repeats)
                    if length <= COUNTED_LENGTH and ell <= COUNTED_LENGTH:
                        bound = max(bound, max(length, ell) - _shared_classes(h0, h1, block_counts[block, 0],
                                                                              block_counts[block, 1]))
                    if bound > best or (bound == best and block_id[block] > best_id):
                        continue
                    first = length_start[ell] + (block - block_start[ell]) * BLOCK
                    for ci in range(first, min(first + BLOCK, length_start[ell + 1])):
                        cid = c_ids[ci]
                        other = c_small[ci]
                        bound = max(delta, max(_popcount(small & ~other), _popcount(other & ~small)))
                        if bound > best or (bound == best and cid > best_id):
                            continue
                        if length <= COUNTED_LENGTH and ell <= COUNTED_LENGTH:
                            bound = max(length, ell) - _shared_classes(h0, h1, c_counts[ci, 0], c_counts[ci, 1])
                            if bound > best or (bound == best and cid > best_id):
                                continue
                        o0, o1, o2, o3 = c_mask[ci, 0], c_mask[ci, 1], c_mask[ci, 2], c_mask[ci, 3]
                        common = _popcount(m0 & o0) + _popcount(m1 & o1) + _popcount(m2 & o2) + _popcount(m3 & o3)
                        repeats = min(length - distinct, ell - c_distinct[ci])  # bytes beyond each value's first
                        bound = max(delta, distinct - common, c_distinct[ci] - common,
                                    max(length, ell) - common - repeats)
                        if bound > best or (bound == best and cid > best_id):
                            continue
                        b = c_data[c_off[ci] : c_off[ci + 1]]
                        shared = 0
                        for j in range(ell):
                            if counts[b[j]] > 0:
                                counts[b[j]] -= 1
                                taken[shared] = b[j]
                                shared += 1
                        for j in range(shared):
                            counts[taken[j]] += 1
                        bound = max(length, ell) - shared
                        if bound > best or (bound == best and cid > best_id):
                            continue
                        limit = best if cid < best_id else best - 1
                        if limit > max(length, ell):
                            limit = max(length, ell)
                        distance = _bounded_levenshtein(a, b, limit, row)
                        if distance <= limit:
                            best, best_id = distance, cid
            delta += 1
        best_ids[qi], best_dist[qi] = best_id, best
    return best_ids, best_dist


def _pack(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated bytes, offsets and byte-set masks (``[n, 4]`` uint64: bit ``x`` for byte ``x``) of ``strings``."""
    lengths = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(strings), dtype=np.uint8).copy()
    masks = np.zeros((len(strings), 4), dtype=np.uint64)
    owner = np.repeat(np.arange(len(strings)), lengths)
    np.bitwise_or.at(masks, (owner, data // 64), np.left_shift(np.uint64(1), (data % 64).astype(np.uint64)))
    return data, offsets, masks


def _class_counts(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[n, CLASSES]``: each string's count of bytes per class ``byte >> 4``, capped at ``COUNTED_LENGTH``
    (the search uses the counts only where both strings are at most that long)."""
    n = offsets.shape[0] - 1
    counts = np.zeros((n, CLASSES), dtype=np.uint64)
    np.add.at(counts, (np.repeat(np.arange(n), np.diff(offsets)), data >> 4), np.uint64(1))
    return np.minimum(counts, np.uint64(COUNTED_LENGTH))


def _pack_counts(counts: np.ndarray) -> np.ndarray:
    """``[n, CLASSES]`` counts as ``[n, 2]`` uint64, 8 bits per class."""
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(8)
    return np.stack([(counts[:, 8 * w : 8 * w + 8] << shifts).sum(axis=1, dtype=np.uint64) for w in range(2)], axis=1)


def _fold(masks: np.ndarray) -> np.ndarray:
    """256-bit byte sets folded to 64 bits (classes ``byte % 64``): the same bound, weaker, in one word read
    first (most candidates fail it, and the scan reads 8 bytes per candidate instead of 32)."""
    return masks[:, 0] | masks[:, 1] | masks[:, 2] | masks[:, 3]


class NearestIndex:
    """The candidates of :func:`nearest`, packed once (byte strings and their ids; ids need not be sorted)."""

    def __init__(self, candidates: Sequence[bytes], ids: Sequence[int] | np.ndarray) -> None:
        if len(candidates) == 0:
            raise ValueError("candidates is empty; the nearest string needs at least one candidate")
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(candidates),):
            raise ValueError(f"ids must have one id per candidate ({len(candidates)}), got shape {ids.shape}")
        lengths = np.fromiter((len(c) for c in candidates), dtype=np.int64, count=len(candidates))
        order = np.array(sorted(range(len(candidates)), key=lambda i: (lengths[i], candidates[i])), dtype=np.int64)
        self.ids = ids[order]
        self.max_length = int(lengths.max())
        self.data, self.offsets, self.masks = _pack([candidates[i] for i in order.tolist()])
        self.small = _fold(self.masks)
        counts = _class_counts(self.data, self.offsets)
        self.counts = _pack_counts(counts)
        self.distinct = np.array([len(set(candidates[i])) for i in order.tolist()], dtype=np.int64)
        self.length_start = np.searchsorted(lengths[order], np.arange(self.max_length + 2)).astype(np.int64)
        per_length = -(-np.diff(self.length_start) // BLOCK)
        self.block_start = np.concatenate([[0], np.cumsum(per_length)]).astype(np.int64)
        owner = np.concatenate([np.arange(self.length_start[n], self.length_start[n + 1]) - self.length_start[n]
                                for n in range(self.max_length + 1)]) // BLOCK
        owner = owner + np.repeat(self.block_start[:-1], np.diff(self.length_start))  # each candidate's block
        blocks = int(self.block_start[-1])
        self.block_mask = np.zeros((blocks, 4), dtype=np.uint64)
        np.bitwise_or.at(self.block_mask, owner, self.masks)
        self.block_distinct = np.full(blocks, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(self.block_distinct, owner, self.distinct)
        block_counts = np.zeros((blocks, CLASSES), dtype=np.uint64)
        np.maximum.at(block_counts, owner, counts)  # a bound for every candidate of the block: the largest counts
        self.block_counts = _pack_counts(block_counts)
        self.block_id = np.full(blocks, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(self.block_id, owner, self.ids)

    def nearest(self, queries: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, distances)``: each query's nearest candidate by Levenshtein distance, lowest id on ties."""
        if not queries:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        longest = max(self.max_length, max(len(q) for q in queries))
        pad = longest - self.max_length
        start = np.concatenate([self.length_start, np.full(pad, self.length_start[-1])])
        block_start = np.concatenate([self.block_start, np.full(pad, self.block_start[-1])])
        # numba splits the queries into one contiguous share per thread: shuffled, costly ones (long tokens of
        # other scripts, often neighbours in id order) spread over the shares
        order = np.random.default_rng(0).permutation(len(queries))
        q_data, q_off, q_mask = _pack([queries[i] for i in order.tolist()])
        shuffled = _nearest(q_data, q_off, q_mask, self.data, self.offsets, self.masks, self.ids, start, longest,
                            _fold(q_mask), self.small, self.distinct, block_start, self.block_mask,
                            self.block_distinct, self.block_id, _pack_counts(_class_counts(q_data, q_off)),
                            self.counts, self.block_counts)
        ids, distances = np.empty(len(queries), dtype=np.int64), np.empty(len(queries), dtype=np.int64)
        ids[order], distances[order] = shuffled
        return ids, distances
