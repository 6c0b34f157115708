"""MinED's vocabulary map on the six real tokenizers: kdviz's nearest-string search against brute force.

Per ordered (teacher, student) pair of the real tokenizers that ``scripts/fetch_tokenizers.py`` caches, in
one process on the same vocabularies:

- *brute force* (the baseline, kdviz's previous implementation): ``rapidfuzz.process.cdist`` over every
  (non-exact teacher token, student token) pair, then the argmin. It is timed on ``--sample`` of the
  non-exact teacher tokens and projected to all of them (minutes for the largest pairs);
- *kdviz, whole map*: ``build_vocab_map`` (the dictionary step, then
  :class:`kdviz.align.nearest.NearestIndex`), measured in full; its answers are checked against the
  baseline's on the sample;
- *kdviz, on demand* (what ``MinED`` does): ``vocab_map(complete=False)`` -- ready to train -- plus the
  first batch's look-up of ``--positions`` x top-``--top-k`` teacher ids drawn uniformly (the worst case).

Printed per pair: the exact share, seconds for each, and the ratio of kdviz's whole map to brute force.

    python benchmarks/bench_vocab_map.py              # every pair, ~15 minutes on 2 cores
    python benchmarks/bench_vocab_map.py --quick      # two pairs, small samples
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist
from transformers import AutoTokenizer

from kdviz.align.vocab_map import build_vocab_map, student_index, token_bytes, vocab_map

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KDVIZ_TOKENIZERS") or ROOT / ".cache" / "tokenizers")
NAMES = ("gpt2", "llama2", "mistral", "llama3", "qwen3", "gemma3")


def load(name: str):
    path = CACHE / name
    if not (path / "tokenizer.json").exists():
        raise SystemExit(f"real tokenizer {name!r} not found under {CACHE}; run `python scripts/fetch_tokenizers.py`")
    return AutoTokenizer.from_pretrained(str(path))


def brute_force(queries: list[bytes], s_bytes: list[bytes]) -> np.ndarray:
    """The baseline: every pair's distance with rapidfuzz, the argmin (lowest id on ties)."""
    if not queries:
        return np.zeros(0, dtype=np.int64)
    first = {}
    for index, piece in enumerate(s_bytes):
        first.setdefault(piece, index)
    choices, ids = [c.decode("latin-1") for c in first], np.array(list(first.values()))
    best = [cdist([q.decode("latin-1") for q in queries[k : k + 512]], choices, scorer=Levenshtein.distance,
                  dtype=np.int32, workers=-1).argmin(axis=1) for k in range(0, len(queries), 512)]
    return ids[np.concatenate(best)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two pairs, small samples (a smoke test)")
    parser.add_argument("--sample", type=int, default=2048, help="non-exact tokens timed for the projection")
    parser.add_argument("--positions", type=int, default=256, help="aligned positions in the first batch")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    quick_pairs = [("llama2", "gpt2"), ("mistral", "llama3"), ("mistral", "llama2")]
    pairs = quick_pairs if args.quick else list(itertools.permutations(NAMES, 2))
    sample, positions = (128, 32) if args.quick else (args.sample, args.positions)
    rng = np.random.default_rng(0)
    tokenizers = {name: load(name) for name in dict.fromkeys(itertools.chain(*pairs))}
    print(f"{'teacher -> student':>20} {'exact':>6} {'brute force s':>14} {'kdviz whole map s':>18} {'ratio':>6} "
          f"{'on demand: ready s':>19} {'+ first batch s':>16}")
    student_index([b"warm", b"up"]).nearest([b"numba"])  # compile once, outside the timings
    for teacher, student in pairs:
        t_tok, s_tok = tokenizers[teacher], tokenizers[student]
        t_bytes, s_bytes = token_bytes(t_tok), token_bytes(s_tok)
        known = set(s_bytes)
        inexact = [t for t in dict.fromkeys(t_bytes) if t not in known]
        picked = [inexact[i] for i in rng.choice(len(inexact), size=min(sample, len(inexact)), replace=False)]
        start = time.perf_counter()
        baseline = brute_force(picked, s_bytes)
        brute = (time.perf_counter() - start) * len(inexact) / max(len(picked), 1)
        start = time.perf_counter()
        ids, _ = build_vocab_map(s_bytes, t_bytes)
        whole = time.perf_counter() - start
        position = {t: k for k, t in enumerate(t_bytes)}
        if not np.array_equal(ids[[position[t] for t in picked]], baseline):
            raise SystemExit(f"{teacher} -> {student}: kdviz's map differs from brute force")
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            lazy = vocab_map(s_tok, t_tok, cache_dir=cache, complete=False)
            ready = time.perf_counter() - start
            batch = rng.integers(0, len(lazy), size=(positions, args.top_k))
            start = time.perf_counter()
            lazy.lookup(batch)
            first = time.perf_counter() - start
        print(f"{teacher + ' -> ' + student:>20} {lazy.exact_share:6.1%} {brute:14.1f} {whole:18.1f} "
              f"{whole / brute if brute else float('nan'):6.3f} {ready:19.2f} {first:16.2f}")


if __name__ == "__main__":
    main()
