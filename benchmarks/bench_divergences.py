"""Speed and peak memory of kdviz's divergences against the straightforward PyTorch a reference repo writes.

For every divergence, forward + backward at B x T x V = 4 x 256 x 32000 and 2 x 512 x 151936, float32 and
bf16 inputs: median time of each implementation (interleaved in one process, so both see the same
machine), the time ratio kdviz / baseline, and the peak memory *above the inputs* of each, measured in a
fresh subprocess per variant (Linux peak RSS, VmHWM, reset just before the run), and its ratio. The fused
LM-head path is compared with "head matmul + baseline CE and FKL" at V = 151936, d = 1024, 2048 tokens.
``ce`` is the cross-entropy every method adds (labels: the teacher's argmax), kdviz's chunked one against
``F.cross_entropy`` on the float32 logits.

    python benchmarks/bench_divergences.py            # everything (tens of minutes on 2 cores)
    python benchmarks/bench_divergences.py --quick    # small sizes, a smoke test of the harness
    python benchmarks/bench_divergences.py --names fkl akl --sizes 4x256x32000 --dtypes float32
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import kdviz
from kdviz.methods import IGNORE
from kdviz.methods._common import cross_entropy

# ---------------------------------------------------------------------------------------------------
# The baseline: full-tensor log_softmax / softmax, elementwise products, autograd; mean over tokens.


def _b_fkl(s, t, **_):
    logp, logq = F.log_softmax(t, -1), F.log_softmax(s, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _b_rkl(s, t, **_):
    logp, logq = F.log_softmax(t, -1), F.log_softmax(s, -1)
    return (logq.exp() * (logq - logp)).sum(-1)


def _b_sym_kl(s, t, lam=0.5):
    return (1 - lam) * _b_fkl(s, t) + lam * _b_rkl(s, t)


def _b_gjsd(s, t, beta=0.5):
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    log_m = torch.log(beta * p + (1 - beta) * q)
    return beta * (p * (torch.log(p) - log_m)).sum(-1) + (1 - beta) * (q * (torch.log(q) - log_m)).sum(-1)


def _b_sfkl(s, t, a=0.1):
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    return (p * (torch.log(p) - torch.log(a * p + (1 - a) * q))).sum(-1)


def _b_srkl(s, t, a=0.1):
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    return (q * (torch.log(q) - torch.log((1 - a) * p + a * q))).sum(-1)


def _b_tvd(s, t, **_):
    return 0.5 * (F.softmax(t, -1) - F.softmax(s, -1)).abs().sum(-1)


def _b_akl(s, t, mu=0.5):
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    sorted_p, order = p.sort(-1, descending=True)
    gaps = (sorted_p - q.gather(-1, order)).abs()
    tail = sorted_p.cumsum(-1) > mu
    tail[..., 0] = False
    g_head = gaps.masked_fill(tail, 0).sum(-1)
    g_tail = gaps.masked_fill(~tail, 0).sum(-1)
    w = (g_head / (g_head + g_tail)).detach()
    return w * _b_fkl(s, t) + (1 - w) * _b_rkl(s, t)


def _b_abkd(s, t, alpha=0.2, beta=0.7):
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    a, b = alpha, beta
    return -(p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(-1) / (a * b)


BASELINES = {
    "fkl": _b_fkl, "rkl": _b_rkl, "sym_kl": _b_sym_kl, "js": _b_gjsd, "gjsd": _b_gjsd, "sfkl": _b_sfkl,
    "srkl": _b_srkl, "tvd": _b_tvd, "akl": _b_akl, "abkd": _b_abkd,
}


def ce_labels(t, mask):
    return torch.where(mask, t.argmax(-1), IGNORE)


def baseline_loss(name, s, t, mask):
    if name == "ce":
        return F.cross_entropy(s.float().flatten(0, -2), ce_labels(t, mask).flatten(), ignore_index=IGNORE)
    per_token = BASELINES[name](s.float(), t.float())
    return (per_token * mask).sum() / mask.sum()


def kdviz_loss(name, s, t, mask):
    if name == "ce":
        return cross_entropy(s, ce_labels(t, mask))[0]
    return kdviz.divergence(name, s, t, mask)


# ---------------------------------------------------------------------------------------------------
# The fused head path.


def fused_inputs(tokens, d, vocab):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, d, generator=gen)
    w = torch.randn(vocab, d, generator=gen) / math.sqrt(d)
    teacher = torch.randn(tokens, vocab, generator=gen) * 2
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    return h.requires_grad_(), w.requires_grad_(), teacher, labels


def fused_baseline(h, w, teacher, labels):
    z = h @ w.T
    ce = F.cross_entropy(z, labels)
    return 0.5 * ce + 0.5 * _b_fkl(z, teacher).mean()


def fused_kdviz(h, w, teacher, labels):
    return kdviz.fused_divergence("fkl", h, w, labels, teacher_logits=teacher)


# ---------------------------------------------------------------------------------------------------
# Measurement.


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def make_inputs(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(shape, generator=gen) * 2).to(dtype)
    t = (torch.randn(shape, generator=gen) * 2).to(dtype)
    mask = torch.ones(shape[:-1], dtype=torch.bool)
    return s.requires_grad_(), t, mask


def step(kind, impl, inputs):
    if kind == "fused":
        h, w, teacher, labels = inputs
        loss = (fused_baseline if impl == "baseline" else fused_kdviz)(h, w, teacher, labels)
        loss.backward()
        h.grad = w.grad = None
    else:
        name, (s, t, mask) = kind, inputs
        loss = (baseline_loss if impl == "baseline" else kdviz_loss)(name, s, t, mask)
        loss.backward()
        s.grad = None


def build(kind, shape, dtype):
    return fused_inputs(*shape) if kind == "fused" else make_inputs(shape, dtype)


def worker_memory(kind, impl, shape, dtype) -> dict:
    """In a fresh process: peak RSS above the inputs of one forward + backward."""
    tiny = [2, 4, 64] if kind != "fused" else [4, 8, 64]
    step(kind, impl, build(kind, tiny, dtype))  # load kernels and thread pools before measuring
    inputs = build(kind, shape, dtype)
    gc.collect()
    before = rss_bytes("VmRSS")
    reset_peak_rss()
    step(kind, impl, inputs)
    return {"extra_peak": rss_bytes("VmHWM") - before}


def worker_time(kind, shape, dtype, reps) -> dict:
    """Both implementations interleaved in one process: median seconds of forward + backward."""
    inputs = build(kind, shape, dtype)
    times = {"baseline": [], "kdviz": []}
    for impl in times:  # warm-up
        step(kind, impl, inputs)
    for _ in range(reps):
        for impl in times:
            start = time.perf_counter()
            step(kind, impl, inputs)
            times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(ts) for impl, ts in times.items()}


def spawn(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(args)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(kind, shape, dtype, reps) -> dict:
    mem = {impl: spawn("memory", kind, impl, shape, dtype)["extra_peak"] for impl in ("baseline", "kdviz")}
    times = spawn("time", kind, shape, dtype, reps) if reps else {"baseline": math.nan, "kdviz": math.nan}
    return {
        "t_base": times["baseline"], "t_kdviz": times["kdviz"], "time_ratio": times["kdviz"] / times["baseline"],
        "mem_base_mb": mem["baseline"] / 2**20, "mem_kdviz_mb": mem["kdviz"] / 2**20,
        "mem_ratio": mem["kdviz"] / max(mem["baseline"], 1),
    }


def run_worker(spec: str) -> None:
    what, kind, *rest = json.loads(spec)
    torch.manual_seed(0)
    if what == "memory":
        impl, shape, dtype = rest
        result = worker_memory(kind, impl, tuple(shape), getattr(torch, dtype))
    else:
        shape, dtype, reps = rest
        result = worker_time(kind, tuple(shape), getattr(torch, dtype), reps)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the harness")
    parser.add_argument("--names", nargs="*", default=[*kdviz.DIVERGENCES, "ce"])
    parser.add_argument("--sizes", nargs="*", default=["4x256x32000", "2x512x151936"])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (0: memory only)")
    parser.add_argument("--no-fused", action="store_true", help="skip the fused LM-head comparison")
    args = parser.parse_args()
    if args.worker:
        return run_worker(args.worker)
    sizes = ["2x128x8000"] if args.quick else args.sizes
    fused_shape = (256, 64, 8000) if args.quick else (2048, 1024, 151936)
    reps = 2 if args.quick else args.reps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratios are kdviz / baseline")
    header = f"{'divergence':<10} {'B x T x V':<14} {'dtype':<9} {'base s':>8} {'kdviz s':>8} {'time x':>7} " \
             f"{'base MB':>9} {'kdviz MB':>9} {'mem x':>6}"
    print(header)
    rows = []

    def report(label, size, dtype, r):
        rows.append({"name": label, "size": size, "dtype": dtype, **r})
        print(f"{label:<10} {size:<14} {dtype:<9} {r['t_base']:8.3f} {r['t_kdviz']:8.3f} {r['time_ratio']:7.2f} "
              f"{r['mem_base_mb']:9.1f} {r['mem_kdviz_mb']:9.1f} {r['mem_ratio']:6.2f}", flush=True)

    for size in sizes:
        shape = [int(x) for x in size.split("x")]
        for dtype in args.dtypes:
            for name in args.names:
                report(name, size, dtype, measure(name, shape, dtype, min(reps, 3) if shape[-1] > 100_000 else reps))
    if not args.no_fused:
        tokens, d, vocab = fused_shape
        fused = measure("fused", list(fused_shape), "float32", min(reps, 3))
        report("fused", f"{tokens}x{d}->{vocab}", "float32", fused)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
