"""MinED's vocabulary map on the six real tokenizers: the whole map against the map resolved on demand.

Per ordered (teacher, student) pair of the real tokenizers that ``scripts/fetch_tokenizers.py`` caches:

- *whole map* (the baseline: every teacher id resolved before training, as ``vocab_map(complete=True)``
  on an empty cache): the dictionary step plus one ``rapidfuzz`` edit-distance row per non-exact teacher
  token. It is measured on ``--sample`` of those tokens and projected to all of them (``--full`` measures
  the whole build; minutes per pair for the largest vocabularies);
- *on demand* (what ``MinED`` does): ``vocab_map(complete=False)`` -- the dictionary step, ready to
  train -- and the first batch's look-up: ``--positions`` aligned positions x top-``--top-k`` teacher ids,
  drawn uniformly (the worst case: a trained teacher's top-k ids repeat far more).

Printed per pair: the exact share, seconds to the first training step for both, and their ratio.

    python benchmarks/bench_vocab_map.py              # every pair, ~10 minutes on 2 cores
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
from transformers import AutoTokenizer

from kdviz.align.vocab_map import build_vocab_map, nearest_ids, student_choices, token_bytes, vocab_map

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KDVIZ_TOKENIZERS") or ROOT / ".cache" / "tokenizers")
NAMES = ("gpt2", "llama2", "mistral", "llama3", "qwen3", "gemma3")


def load(name: str):
    path = CACHE / name
    if not (path / "tokenizer.json").exists():
        raise SystemExit(f"real tokenizer {name!r} not found under {CACHE}; run `python scripts/fetch_tokenizers.py`")
    return AutoTokenizer.from_pretrained(str(path))


def whole_map_seconds(t_bytes, s_bytes, sample: int, full: bool, rng) -> tuple[float, bool]:
    """Seconds of the whole build (measured with ``full``, else projected from ``sample`` tokens)."""
    start = time.perf_counter()
    if full:
        build_vocab_map(t_bytes, s_bytes)
        return time.perf_counter() - start, True
    known = set(s_bytes)
    inexact = [t for t in dict.fromkeys(t_bytes) if t not in known]
    choices = student_choices(s_bytes)
    dictionary = time.perf_counter() - start
    if not inexact:
        return dictionary, True
    picked = [inexact[i] for i in rng.choice(len(inexact), size=min(sample, len(inexact)), replace=False)]
    start = time.perf_counter()
    nearest_ids(picked, choices, progress=False)
    return dictionary + (time.perf_counter() - start) * len(inexact) / len(picked), len(picked) == len(inexact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two pairs, small samples (a smoke test)")
    parser.add_argument("--sample", type=int, default=2048, help="non-exact tokens timed for the projection")
    parser.add_argument("--full", action="store_true", help="measure the whole build instead of projecting it")
    parser.add_argument("--positions", type=int, default=256, help="aligned positions in the first batch")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    pairs = [("llama2", "gpt2"), ("gemma3", "llama3")] if args.quick else list(itertools.permutations(NAMES, 2))
    sample, positions = (128, 32) if args.quick else (args.sample, args.positions)
    rng = np.random.default_rng(0)
    tokenizers = {name: load(name) for name in dict.fromkeys(itertools.chain(*pairs))}
    print(f"{'teacher -> student':>20} {'exact':>6} {'whole map s':>12} {'on demand: ready s':>19} "
          f"{'+ first batch s':>16} {'ratio':>7}")
    for teacher, student in pairs:
        t_tok, s_tok = tokenizers[teacher], tokenizers[student]
        whole, measured = whole_map_seconds(token_bytes(t_tok), token_bytes(s_tok), sample, args.full, rng)
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            lazy = vocab_map(t_tok, s_tok, cache_dir=cache, complete=False)
            ready = time.perf_counter() - start
            batch = rng.integers(0, len(lazy), size=(positions, args.top_k))
            start = time.perf_counter()
            lazy.lookup(batch)
            first = time.perf_counter() - start
        note = "" if measured else " (projected)"
        print(f"{teacher + ' -> ' + student:>20} {lazy.exact_share:6.1%} {whole:12.1f} {ready:19.2f} {first:16.2f} "
              f"{(ready + first) / whole:7.3f}{note}")


if __name__ == "__main__":
    main()
