"""Speed of kdviz's cross-tokenizer pieces: MultiLevelOT's batched Sinkhorn, ULD's sorted W1, MinED's
vocabulary map.

1. SD: ``B`` sequences of ``T`` positions with ``k`` ranked columns (defaults 8 x 256 x 50): the L1 cost
   between positions and the entropic plan (reg 0.1, 20 rounds, uniform marginals). kdviz solves the batch
   at once (``kdviz.align.transport.sinkhorn_plans``: ``domain="auto"`` picks its batched plain rounds,
   exact here; ``"log"`` is POT's ``ot.solve_batch``); for reference, POT's own plain batch solver
   (``ot.solve_batch(method="sinkhorn")``) is timed too. The baseline loops over the sequences with POT's
   single-problem ``ot.sinkhorn`` (POT's default plain Sinkhorn, and the log domain). All run the same
   iterations (POT's single solver is given the transposed problem so that its update order matches):
   the largest plan difference is printed with each ratio.
2. ULD: forward + backward of the sorted W1 per token at V = 32000 and 151936 (full sort), kdviz's
   chunked closed-form gradient vs the straightforward autograd version a reference repo writes, and
   the top-k-plus-residual switch (k = 100) for scale.
3. MinED's vocabulary map between a 50k-token teacher and a 32k-token student vocabulary, synthetic but
   shaped like real ones (GPT-2 style ``Ġ`` words and pieces vs SentencePiece ``▁`` words and pieces,
   overlapping on common words): the first call (computed with rapidfuzz on every core) and the second
   call (read from the cache).

4. MultiLevelOT's ranked softmax columns: forward + backward of HAD + SL + SD's cost (plan held uniform)
   for B = 4 sequences of T = 256 paired positions, a 32000-token student and a 151936-token teacher,
   kdviz's chunked columns (``kdviz.methods.multilevel_ot.ranked_log_probs``) vs whole-row
   ``log_softmax`` at both temperatures (the published code's way, and kdviz's before): time interleaved
   in one process, peak memory above the inputs in a fresh process per variant.

    python benchmarks/bench_ot.py            # the sizes above (a few minutes on 2 cores)
    python benchmarks/bench_ot.py --quick    # small sizes, a smoke test of the harness
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import ot
import torch
from bench_divergences import reset_peak_rss, rss_bytes
from ot.batch import solve_batch

from kdviz.align.transport import sinkhorn_plans
from kdviz.align.vocab_map import vocab_map
from kdviz.methods.multilevel_ot import ranked_log_probs
from kdviz.methods.uld import sorted_w1


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict, rounds: int, block: int = 5) -> dict:
    """Median seconds per call of each function over ``rounds`` rounds; a round times ``block`` consecutive
    calls of every function in turn (warm caches within a block, as in a training step where the cost was
    just computed; the same machine load for all functions)."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(block):
                fn()
            times[name].append((time.perf_counter() - start) / block)
    return {name: statistics.median(values) for name, values in times.items()}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


# -- 1. SD ------------------------------------------------------------------------------------------


def ranked_rows(b: int, t: int, k: int, seed: int) -> torch.Tensor:
    """``[b, t, k]``: the top-k of softmax(z / 2) rows of a 1000-word vocabulary, like SD's inputs."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(b, t, 1000, generator=g) * 4 / 2, -1)
    ids = probs.sum(1).topk(k, -1).indices
    return probs.gather(-1, ids[:, None, :].expand(b, t, k))


def bench_sd(b: int, t: int, k: int, repeats: int, shortest: int | None = None) -> None:
    """``shortest``: padded sequences, row and column counts drawn from ``[shortest, t]``; None: all ``t``."""
    x, y = ranked_rows(b, t, k, 0), ranked_rows(b, t, k, 1)
    cost = torch.cdist(x, y, p=1)
    g = torch.Generator().manual_seed(2)
    n_rows, n_cols = (torch.randint(shortest or t, t + 1, (2, b), generator=g)).tolist()
    rows = torch.arange(t)[None, :] < torch.tensor(n_rows)[:, None]
    cols = torch.arange(t)[None, :] < torch.tensor(n_cols)[:, None]

    def pot_batch() -> torch.Tensor:
        shifted = cost - cost.amin((1, 2), keepdim=True)
        return solve_batch(shifted, reg=0.1, max_iter=20, tol=0.0, method="sinkhorn").plan

    def loop(method: str):
        def run():
            plans = torch.zeros(b, t, t)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for i, (n, m) in enumerate(zip(n_rows, n_cols, strict=True)):
                    a, w = torch.full((n,), 1.0 / n), torch.full((m,), 1.0 / m)
                    block = cost[i, :n, :m].T
                    plans[i, :n, :m] = ot.sinkhorn(w, a, block, 0.1, method=method, numItermax=20, stopThr=0.0).T
            return plans

        return run

    def ours(domain: str):
        return lambda: sinkhorn_plans(cost, rows, cols, reg=0.1, n_iter=20, domain=domain).plan

    solvers = {f"kdviz sinkhorn_plans(domain={d!r})": ours(d) for d in ("auto", "log")}
    if shortest is None:
        solvers["POT ot.solve_batch(method='sinkhorn')"] = pot_batch
    loops = {f"loop of ot.sinkhorn(method={m!r:14})": loop(m) for m in ("sinkhorn", "sinkhorn_log")}
    shape = f"T={t} positions" if shortest is None else f"{shortest}..{t} real positions of T={t} (padded)"
    print(f"\n[SD] B={b} sequences x {shape}, k={k} columns, reg=0.1, 20 rounds, float32, solve only")
    print(f"  kdviz's auto domain: {sinkhorn_plans(cost, rows, cols, reg=0.1, n_iter=20).domain}")
    t_cost = median_time(lambda: torch.cdist(x, y, p=1), repeats)
    print(f"  (the L1 cost itself, torch.cdist p=1 on [B, T, k]: {t_cost * 1e3:.1f} ms, the same for all)")
    everything = {**solvers, **loops}
    plans = {name: fn() for name, fn in everything.items()}
    times = interleaved_medians(everything, 4 * repeats)
    for name in everything:
        print(f"  {name:42} {times[name] * 1e3:8.2f} ms")
    for loop_name in loops:
        for name in solvers:
            diff = float((plans[loop_name] - plans[name]).abs().max())
            print(
                f"  {name:42} vs {loop_name}: {times[loop_name] / times[name]:5.2f}x faster "
                f"(max plan difference {diff:.1e})"
            )
    print(f"  (plan entries are about 1/T^2 = {1 / t**2:.1e})")


# -- 2. ULD -----------------------------------------------------------------------------------------


def naive_uld(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """The published approach: softmax, full sort of both, pad, abs-diff sum, autograd."""
    q = torch.softmax(z_s, -1).sort(-1, descending=True).values
    p = torch.softmax(z_t, -1).sort(-1, descending=True).values
    return (q - p).abs().sum(-1)


def bench_uld(sizes: list[tuple[int, int]], repeats: int) -> None:
    print("\n[ULD] forward + backward per token (V_s = V_t = V), float32")
    for n, v in sizes:
        g = torch.Generator().manual_seed(v)
        z_s = torch.randn(n, v, generator=g) * 3
        z_t = torch.randn(n, v, generator=g) * 3

        def run(fn, z_s=z_s, z_t=z_t):
            def step():
                leaf = z_s.clone().requires_grad_()
                fn(leaf, z_t).sum().backward()

            return step

        exact = median_time(run(lambda a, b: sorted_w1(a, b)), repeats)
        naive = median_time(run(naive_uld), repeats)
        top = median_time(run(lambda a, b: sorted_w1(a, b, top_k=100)), repeats)
        print(
            f"  V={v:6d}, {n} tokens: kdviz exact {exact / n * 1e6:7.1f} us/token | naive autograd "
            f"{naive / n * 1e6:7.1f} us/token (ratio {naive / exact:4.2f}x) | top-k=100 switch "
            f"{top / n * 1e6:6.1f} us/token ({exact / top:4.1f}x faster than exact)"
        )


# -- 3. MinED vocabulary map ------------------------------------------------------------------------

CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def synthetic_vocabularies(n_student: int, n_teacher: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two vocabularies drawn from one pool of pseudo-words, split into pieces the way BPE/Unigram do:
    whole words with a word-start marker, word pieces without, digits, punctuation and byte symbols."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice([1, 2, 2, 3, 3, 4])))

    pool = list(dict.fromkeys(word() for _ in range(120_000)))
    base = [chr(c) for c in range(33, 127)] + [str(d) for d in range(1000)]

    def vocab(n: int, marker: str, offset: int) -> list[str]:
        out = dict.fromkeys(base + [marker + c for c in base[:94]])
        words = pool[offset : offset + 3 * n]
        i = 0
        while len(out) < n:
            w = words[i % len(words)]
            cut = rng.randint(1, max(1, len(w) - 1))
            out.setdefault(rng.choice([marker + w, marker + w, w, w[:cut], w[cut:], marker + w[:cut]]))
            i += 1
        return list(out)[:n]

    return vocab(n_student, "▁", 0), vocab(n_teacher, "Ġ", 10_000)


def bench_vocab_map(n_student: int, n_teacher: int) -> None:
    student, teacher = synthetic_vocabularies(n_student, n_teacher)
    print(f"\n[MinED] vocabulary map, teacher {len(teacher)} x student {len(student)} tokens (synthetic)")
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        first = vocab_map(student, teacher, cache_dir=cache)
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        second = vocab_map(student, teacher, cache_dir=cache)
        t_second = time.perf_counter() - start
    assert second.from_cache and np.array_equal(first.ids, second.ids)
    print(f"  first call (rapidfuzz, all cores)  {t_first:8.2f} s   exact-match share {first.exact_share:.1%}")
    print(f"  second call (from the cache)       {t_second:8.3f} s   ratio {t_first / t_second:7.0f}x")


# -- 4. MultiLevelOT's ranked softmax columns -------------------------------------------------------


def levels_loss(impl: str, z_s: torch.Tensor, z_t: torch.Tensor, k: int = 50) -> torch.Tensor:
    """HAD + 0.1 SL + 0.1 SD-cost of MultiLevelOT's paper mode (tau 1, tau_sd 2), every position paired."""
    b, t = z_s.shape[:2]
    pos = torch.arange(t).expand(b, t)
    valid = torch.ones(b, t, dtype=torch.bool)
    if impl == "kdviz":
        ids_s, (logq_k, logy) = ranked_log_probs(z_s, pos, valid, k, (1.0, 2.0), False)
        ids_t, (logp_k, logx) = ranked_log_probs(z_t, pos, valid, k, (1.0, 2.0), False)
        s_k, t_k, x, y = logq_k.exp(), logp_k.exp(), logx.exp(), logy.exp()
    else:  # whole rows
        logq, logp = torch.log_softmax(z_s.float(), -1), torch.log_softmax(z_t.float(), -1)
        q, p = logq.exp(), logp.exp()
        ids_s, ids_t = q.detach().sum(1).topk(k, -1).indices, p.detach().sum(1).topk(k, -1).indices

        def take(values, ids):
            return values.gather(-1, ids[:, None, :].expand(b, t, k))

        s_k, t_k, logq_k = take(q, ids_s), take(p, ids_t), take(logq, ids_s)
        x, y = take(torch.softmax(z_t.float() / 2, -1), ids_t), take(torch.softmax(z_s.float() / 2, -1), ids_s)
    had, sl = (t_k - s_k).abs().sum(), -(t_k * logq_k).sum()
    return had + 0.1 * sl + 0.1 * torch.cdist(x, y, p=1).mean((1, 2)).sum()


def levels_inputs(b: int, t: int, v_s: int, v_t: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, t, v_s, generator=g) * 3).requires_grad_(), torch.randn(b, t, v_t, generator=g) * 3


def levels_step(impl: str, z_s: torch.Tensor, z_t: torch.Tensor) -> None:
    levels_loss(impl, z_s, z_t).backward()
    z_s.grad = None


def levels_worker(spec: str) -> None:
    """In a fresh process: peak RSS above the inputs of one forward + backward of ``impl``."""
    impl, size = json.loads(spec)
    levels_step(impl, *levels_inputs(2, 4, 64, 96))  # load kernels and thread pools first
    inputs = levels_inputs(*size)
    before = rss_bytes("VmRSS")
    reset_peak_rss()
    levels_step(impl, *inputs)
    print(json.dumps(rss_bytes("VmHWM") - before))


def bench_levels(b: int, t: int, v_s: int, v_t: int, repeats: int) -> None:
    print(f"\n[MultiLevelOT levels] B={b} x T={t}, V_s={v_s}, V_t={v_t}, k=50: forward + backward, float32")
    impls = ("whole rows", "kdviz")
    memory = {}
    for impl in impls:  # first, while this process holds no inputs
        spec = json.dumps([impl, [b, t, v_s, v_t]])
        out = subprocess.run([sys.executable, __file__, "--levels-worker", spec], check=True, capture_output=True,
                             text=True)
        memory[impl] = json.loads(out.stdout.strip().splitlines()[-1]) / 2**20
    z_s, z_t = levels_inputs(b, t, v_s, v_t)
    with torch.no_grad():
        ours, theirs = float(levels_loss("kdviz", z_s, z_t)), float(levels_loss("whole rows", z_s, z_t))
    print(f"  loss {ours:.6g} vs {theirs:.6g} (relative difference {abs(ours - theirs) / abs(theirs):.1e})")
    steps = {impl: (lambda impl=impl: levels_step(impl, z_s, z_t)) for impl in impls}
    times = interleaved_medians(steps, repeats, block=1)
    for impl in steps:
        print(f"  {impl:10}  {times[impl]:7.3f} s   peak above the inputs {memory[impl]:8.1f} MB")
    print(
        f"  kdviz / whole rows: time {times['kdviz'] / times['whole rows']:.2f}, "
        f"memory {memory['kdviz'] / memory['whole rows']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the harness")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--levels-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.levels_worker:
        return levels_worker(args.levels_worker)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, POT {ot.__version__}, {torch.get_num_threads()} threads; {load()}")
    if args.quick:
        bench_sd(2, 32, 10, 2)
        bench_sd(2, 32, 10, 2, shortest=16)
        bench_uld([(16, 1000)], 2)
        bench_vocab_map(2000, 3000)
        bench_levels(2, 16, 1000, 3000, 2)
    else:
        bench_sd(8, 256, 50, args.repeats)
        bench_sd(8, 256, 50, args.repeats, shortest=128)
        bench_uld([(256, 32000), (64, 151936)], args.repeats)
        bench_vocab_map(32000, 50000)
        bench_levels(4, 256, 32000, 151936, args.repeats)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
