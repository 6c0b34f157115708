"""Speed and peak memory of kdviz's divergences against the straightforward PyTorch a reference repo writes.

For every divergence, forward + backward at B x T x V = 4 x 256 x 32000 and 2 x 512 x 151936, float32 and
bf16 inputs: median time of each implementation (interleaved in one process, so both see the same
machine), the time ratio kdviz / baseline, and the peak memory *above the inputs* of each, measured in a
fresh subprocess per variant (Linux peak RSS, VmHWM, reset just before the run), and its ratio. The fused
LM-head path is compared with "head matmul + baseline CE and FKL" at V = 151936, d = 1024, 2048 tokens.
``ce`` is the cross-entropy every method adds (labels: the teacher's argmax), kdviz's chunked one against
``F.cross_entropy`` on the float32 logits.

Peers, on the same inputs and timed in the same process (``pip install kdviz[bench]``; a missing one prints
n/a): TRL's GKD ``generalized_jsd_loss`` (fkl, rkl, js, gjsd: its ``beta`` 0, 1, 0.5), torchtune's
``ForwardKLWithChunkedOutputLoss`` (fkl; 8 chunks, its default: a cross-entropy to the teacher, i.e. FKL
without the teacher's entropy, the same gradient) and Liger's chunked fused-linear distillation
``LigerFusedLinearJSDLoss`` (fused, ``beta=0``: CE + FKL from hidden states, against kdviz's fused path given
the teacher's hidden states and head too). Each peer line prints kdviz / peer.

``--device cuda`` times with CUDA events and measures ``torch.cuda.max_memory_allocated`` above the inputs
(after ``torch.cuda.reset_peak_memory_stats``), in a fresh process per variant as on the CPU.

    python benchmarks/bench_divergences.py            # everything (tens of minutes on 2 cores)
    python benchmarks/bench_divergences.py --quick    # small sizes, a smoke test of the harness
    python benchmarks/bench_divergences.py --names fkl akl --sizes 4x256x32000 --dtypes float32
    python benchmarks/bench_divergences.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
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
from kdviz.ops import cross_entropy

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


def fused_inputs(tokens, d, vocab, device):
    """Student hidden states and head (with gradients), labels, and the teacher's hidden states, head and logits."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, d, generator=gen)
    w = torch.randn(vocab, d, generator=gen) / math.sqrt(d)
    h_t = torch.randn(tokens, d, generator=gen)
    w_t = torch.randn(vocab, d, generator=gen) * (2 / math.sqrt(d))  # teacher logits of standard deviation ~2
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    h, w, h_t, w_t, labels = (x.to(device) for x in (h, w, h_t, w_t, labels))
    return {"h": h.requires_grad_(), "w": w.requires_grad_(), "h_t": h_t, "w_t": w_t, "teacher": h_t @ w_t.T,
            "labels": labels}


def fused_baseline(x):
    z = x["h"] @ x["w"].T
    ce = F.cross_entropy(z, x["labels"])
    return 0.5 * ce + 0.5 * _b_fkl(z, x["teacher"]).mean()


def fused_kdviz(x):
    return kdviz.fused_divergence("fkl", x["h"], x["w"], x["labels"], teacher_logits=x["teacher"])


def fused_kdviz_head(x):
    """kdviz's fused path given the teacher's hidden states and head, as Liger's is."""
    return kdviz.fused_divergence("fkl", x["h"], x["w"], x["labels"], teacher_hidden=x["h_t"],
                                  teacher_head_weight=x["w_t"])


# ---------------------------------------------------------------------------------------------------
# Peers: other libraries' implementations of the same losses, optional imports.

PEER_MODULES = {"trl": "trl", "torchtune": "torchtune", "liger": "liger_kernel"}
TRL_BETA = {"fkl": 0.0, "rkl": 1.0, "js": 0.5, "gjsd": 0.5}  # GKD's beta: 0 is forward KL, 1 reverse KL


def peer_kinds(peer: str) -> tuple[str, ...]:
    return {"trl": tuple(TRL_BETA), "torchtune": ("fkl",), "liger": ("fused",)}[peer]


def peer_missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here, or None."""
    if importlib.util.find_spec(PEER_MODULES[peer]) is None:
        return f"not installed: pip install {'liger-kernel' if peer == 'liger' else peer} (kdviz[bench])"
    return None


def peer_loss(peer, kind, inputs):
    if peer == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.0)
        return loss(inputs["h"], inputs["w"], inputs["h_t"], inputs["w_t"], inputs["labels"])
    s, t, mask = inputs
    labels = torch.where(mask, 0, IGNORE)
    if peer == "trl":
        from trl.experimental.gkd import GKDTrainer

        return GKDTrainer.generalized_jsd_loss(s, t, labels, beta=TRL_BETA[kind])
    from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

    loss = ForwardKLWithChunkedOutputLoss()  # its default of 8 chunks along the sequence
    chunks = loss.num_output_chunks
    return loss(list(s.chunk(chunks, dim=1)), list(t.chunk(chunks, dim=1)), labels)


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


def make_inputs(shape, dtype, device):
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(shape, generator=gen) * 2).to(device, dtype)
    t = (torch.randn(shape, generator=gen) * 2).to(device, dtype)
    mask = torch.ones(shape[:-1], dtype=torch.bool, device=device)
    return s.requires_grad_(), t, mask


def loss_of(kind, impl, inputs):
    if impl in PEER_MODULES:
        return peer_loss(impl, kind, inputs)
    if kind == "fused":
        return {"baseline": fused_baseline, "kdviz": fused_kdviz, "kdviz+head": fused_kdviz_head}[impl](inputs)
    return (baseline_loss if impl == "baseline" else kdviz_loss)(kind, *inputs)


def step(kind, impl, inputs):
    loss_of(kind, impl, inputs).backward()
    for x in (inputs["h"], inputs["w"]) if kind == "fused" else inputs[:1]:
        x.grad = None


def build(kind, shape, dtype, device):
    return fused_inputs(*shape, device) if kind == "fused" else make_inputs(shape, dtype, device)


class Clock:
    """Seconds of one call: wall clock on a CPU, CUDA events (after the queued work) on a GPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000


def worker_memory(kind, impl, shape, dtype, device) -> dict:
    """In a fresh process: peak memory above the inputs of one forward + backward (RSS on a CPU, the CUDA
    allocator's peak on a GPU)."""
    tiny = [2, 4, 64] if kind != "fused" else [4, 8, 64]
    step(kind, impl, build(kind, tiny, dtype, device))  # load kernels and thread pools before measuring
    inputs = build(kind, shape, dtype, device)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(kind, impl, inputs)
        torch.cuda.synchronize()
        return {"extra_peak": torch.cuda.max_memory_allocated() - before}
    before = rss_bytes("VmRSS")
    reset_peak_rss()
    step(kind, impl, inputs)
    return {"extra_peak": rss_bytes("VmHWM") - before}


def worker_time(kind, shape, dtype, reps, device, impls) -> dict:
    """The implementations interleaved in one process: median seconds of forward + backward. A peer that
    fails in its warm-up is reported with its error instead."""
    inputs = build(kind, shape, dtype, device)
    clock = Clock(device)
    times, failed = {}, {}
    for impl in impls:  # warm-up
        try:
            step(kind, impl, inputs)
            times[impl] = []
        except Exception as error:  # noqa: BLE001 - a peer's own failure is reported, not fatal
            if impl not in PEER_MODULES:
                raise
            failed[impl] = f"{type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"
    for _ in range(reps):
        for impl in times:
            times[impl].append(clock(lambda impl=impl: step(kind, impl, inputs)))
    return {"times": {impl: statistics.median(ts) for impl, ts in times.items()}, "failed": failed}


def spawn(*args) -> dict:
    """Run one worker (``args``: threads, what, kind, ...) in a fresh process; its JSON line, or its error."""
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(args)], capture_output=True, text=True)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed: {last[:120]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def peers_for(kind) -> tuple[dict[str, str], list[str]]:
    """The peers of ``kind``: ``({peer: why it cannot run}, [peers to run])``."""
    missing, runnable = {}, []
    for peer in PEER_MODULES:
        if kind in peer_kinds(peer):
            reason = peer_missing(peer)
            if reason:
                missing[peer] = reason
            else:
                runnable.append(peer)
    return missing, runnable


def ratio(a, b) -> float:
    return a / b if b else math.nan


def measure(kind, shape, dtype, reps, device, threads=None) -> dict:
    missing, peers = peers_for(kind)
    mine = ["kdviz+head"] if "liger" in peers else []  # what Liger's fused loss computes, from the same inputs
    impls = ["baseline", "kdviz", *mine, *peers]
    mem = {impl: spawn(threads, "memory", kind, impl, shape, dtype, device) for impl in impls}
    for impl in ("baseline", "kdviz"):
        if "error" in mem[impl]:
            raise RuntimeError(f"{impl} {kind} {shape}: {mem[impl]['error']}")
    timed = spawn(threads, "time", kind, shape, dtype, reps, device, impls) if reps else {"times": {}, "failed": {}}
    if "error" in timed:
        raise RuntimeError(f"{kind} {shape}: {timed['error']}")
    times = {impl: timed["times"].get(impl, math.nan) for impl in impls}
    row = {
        "t_base": times["baseline"], "t_kdviz": times["kdviz"], "time_ratio": ratio(times["kdviz"], times["baseline"]),
        "mem_base_mb": mem["baseline"]["extra_peak"] / 2**20, "mem_kdviz_mb": mem["kdviz"]["extra_peak"] / 2**20,
        "mem_ratio": mem["kdviz"]["extra_peak"] / max(mem["baseline"]["extra_peak"], 1), "peers": {},
    }
    ours = "kdviz+head" if kind == "fused" else "kdviz"
    for peer in peers:
        reason = timed["failed"].get(peer) or mem[peer].get("error")
        if reason:
            row["peers"][peer] = {"n/a": reason}
            continue
        peer_mb, our_mb = mem[peer]["extra_peak"] / 2**20, mem[ours]["extra_peak"] / 2**20
        row["peers"][peer] = {
            "t_peer": times[peer], "t_kdviz": times[ours], "time_ratio": ratio(times[ours], times[peer]),
            "mem_peer_mb": peer_mb, "mem_kdviz_mb": our_mb, "mem_ratio": ratio(our_mb, peer_mb),
        }
    row["peers"].update({peer: {"n/a": reason} for peer, reason in missing.items()})
    return row


def run_worker(spec: str) -> None:
    threads, what, kind, *rest = json.loads(spec)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if what == "memory":
        impl, shape, dtype, device = rest
        result = worker_memory(kind, impl, tuple(shape), getattr(torch, dtype), device)
    else:
        shape, dtype, reps, device, impls = rest
        result = worker_time(kind, tuple(shape), getattr(torch, dtype), reps, device, impls)
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
    parser.add_argument("--fused-size", default="2048x1024x151936", help="tokens x d x V of the fused comparison")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in every measurement (default: torch's)")
    args = parser.parse_args()
    if args.worker:
        return run_worker(args.worker)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = ["2x128x8000"] if args.quick else args.sizes
    fused_shape = (256, 64, 8000) if args.quick else tuple(int(x) for x in args.fused_size.split("x"))
    reps = 2 if args.quick else args.reps
    where = f"{torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(f"torch {torch.__version__}, {where}; ratios are kdviz / baseline")
    header = f"{'divergence':<10} {'B x T x V':<14} {'dtype':<9} {'base s':>8} {'kdviz s':>8} {'time x':>7} " \
             f"{'base MB':>9} {'kdviz MB':>9} {'mem x':>6}"
    print(header)
    rows = []

    def report(label, size, dtype, r):
        rows.append({"name": label, "size": size, "dtype": dtype, **r})
        print(f"{label:<10} {size:<14} {dtype:<9} {r['t_base']:8.3f} {r['t_kdviz']:8.3f} {r['time_ratio']:7.2f} "
              f"{r['mem_base_mb']:9.1f} {r['mem_kdviz_mb']:9.1f} {r['mem_ratio']:6.2f}", flush=True)
        for peer, p in r["peers"].items():
            if "n/a" in p:
                print(f"  vs {peer:<10} n/a ({p['n/a']})", flush=True)
            else:
                print(f"  vs {peer:<10} {'':<21} {p['t_peer']:8.3f} {p['t_kdviz']:8.3f} {p['time_ratio']:7.2f} "
                      f"{p['mem_peer_mb']:9.1f} {p['mem_kdviz_mb']:9.1f} {p['mem_ratio']:6.2f}", flush=True)

    for size in sizes:
        shape = [int(x) for x in size.split("x")]
        for dtype in args.dtypes:
            for name in args.names:
                reps_here = min(reps, 3) if shape[-1] > 100_000 else reps
                report(name, size, dtype, measure(name, shape, dtype, reps_here, args.device, args.threads))
    if not args.no_fused:
        tokens, d, vocab = fused_shape
        fused = measure("fused", list(fused_shape), "float32", min(reps, 3), args.device, args.threads)
        report("fused", f"{tokens}x{d}->{vocab}", "float32", fused)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
