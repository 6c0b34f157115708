"""Cost of the Recorder on a training step, and the run store's size.

A distillation step of small GPT-2 models built from ``GPT2Config`` (random weights, no download): the
teacher forward under no grad, the student forward, a VanillaKD-style loss (forward KL + CE, computed
inline), backward, an AdamW step. Three variants, interleaved in rounds in one process so they see the
same machine: no recorder, the Recorder with all probes at ``every=10, samples=2`` (target: step time
ratio <= 1.05), and at ``every=1``.

A randomly initialised teacher predicts an almost uniform distribution (entropy ~ log V), so its
head (docs/methods.md#akl) holds thousands of tokens and the head/tail statistics cost far more than on
a trained model. ``--sharpness`` (default 8) scales the teacher's LM head so that its entropy is closer
to a trained LM's (~5 nats at V = 8192, still flatter than real models); ``--sharpness 1`` shows that
worst case. The step also emits a cross-model weight ``t2s_weight`` (computed
from the hidden states under no grad, in every variant) so the alignment probe has work to do.

Printed: median process CPU seconds per step (robust to other processes sharing the cores), its ratio
to the bare step, the wall-time ratio, the CPU time inside ``Recorder.log`` as a share of the bare step,
bytes on disk per 1,000 steps, and the peak memory of ``head_tail`` on every token of a batch (in a fresh
process) as a multiple of one logits tensor.

    python benchmarks/bench_recorder.py               # ~2 minutes on 2 cores
    python benchmarks/bench_recorder.py --quick       # a smoke test of the harness
    python benchmarks/bench_recorder.py --vocab 151936 --batch 4 --rounds 2 --steps 10   # Qwen3's head
    python benchmarks/bench_recorder.py --vocab 262208 --batch 4 --rounds 2 --steps 10   # Gemma-3's head
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_divergences import reset_peak_rss, rss_bytes
from transformers import GPT2Config, GPT2LMHeadModel

from kdviz import head_tail
from kdviz.methods import Alignment, KDOutput, Logits, TokenValues
from kdviz.record import RecordBatch, Recorder, open_run


def make_batches(n: int, b: int, t: int, vocab: int, prompt: int) -> list[RecordBatch]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for k in range(n):
        ids = torch.randint(0, vocab, (b, t), generator=g)
        labels = ids.clone()
        labels[:, :prompt] = -100
        tokens = [[f"tok{i}" for i in row] for row in ids.tolist()]
        eye = torch.eye(t, dtype=torch.bool).expand(b, t, t).clone()
        texts = [f"example {k}-{r}" for r in range(b)]
        batches.append(RecordBatch(ids, labels, ids, labels, eye, texts, tokens, tokens))
    return batches


def kd_step(student, teacher, opt, batch: RecordBatch) -> KDOutput:
    """One VanillaKD-style step (FKL + CE on the response), returning its KDOutput."""
    with torch.no_grad():
        t_out = teacher(batch.teacher_input_ids, output_hidden_states=True)
    s_out = student(batch.student_input_ids, output_hidden_states=True)
    targets = torch.full_like(batch.student_labels, -100)
    targets[:, :-1] = batch.student_labels[:, 1:]
    mask = targets != -100
    logq, logp = F.log_softmax(s_out.logits, -1), F.log_softmax(t_out.logits, -1)
    token_kd = (logp.exp() * (logp - logq)).sum(-1)
    token_ce = F.cross_entropy(s_out.logits.transpose(1, 2), targets, reduction="none")
    n = mask.sum().clamp(min=1)
    kd, ce = (token_kd * mask).sum() / n, (token_ce * mask).sum() / n
    loss = 0.5 * kd + 0.5 * ce
    loss.backward()
    with torch.no_grad():
        h_s, h_t = s_out.hidden_states[-1], t_out.hidden_states[-1][..., : s_out.hidden_states[-1].shape[-1]]
        t2s_weight = (h_s @ h_t.transpose(1, 2) / h_s.shape[-1] ** 0.5).softmax(-1)
    return KDOutput(
        loss=loss,
        terms={"kd": kd, "ce": ce, "acc": (s_out.logits.argmax(-1) == targets)[mask].float().mean()},
        diagnostics={
            "student_logits": Logits(s_out.logits.detach(), "student", "student"),
            "teacher_logits": Logits(t_out.logits, "teacher", "teacher"),
            "token_kd": TokenValues(token_kd.detach(), "student"),
            "token_ce": TokenValues(token_ce.detach(), "student"),
            "t2s_weight": Alignment(t2s_weight, "soft"),
        },
    )


def run_round(models, batches, steps: int, start: int, recorder: Recorder | None) -> dict[str, float]:
    """Train ``steps`` steps; seconds per step: ``wall``, ``cpu`` (process time) and ``log`` (CPU time
    inside ``Recorder.log``)."""
    student, teacher, opt = models
    inside = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    for k in range(steps):
        step = start + k
        out = kd_step(student, teacher, opt, batches[step % len(batches)])
        if recorder is not None:
            r0 = time.process_time()
            recorder.log(step, batches[step % len(batches)], out, optimizer=opt)
            inside += time.process_time() - r0
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {
        "wall": (time.perf_counter() - w0) / steps,
        "cpu": (time.process_time() - c0) / steps,
        "log": inside / steps,
    }


def head_tail_memory_worker(spec: str) -> None:
    """In a fresh process: peak RSS above the inputs of :func:`kdviz.head_tail` on ``[B, T, V]`` logits."""
    b, t, vocab = json.loads(spec)
    gen = torch.Generator().manual_seed(0)
    head_tail(torch.randn(2, 4, vocab, generator=gen), torch.randn(2, 4, vocab, generator=gen))  # load kernels
    student, teacher = torch.randn(b, t, vocab, generator=gen), torch.randn(b, t, vocab, generator=gen) * 4
    before = rss_bytes("VmRSS")
    reset_peak_rss()
    head_tail(student, teacher)
    print(json.dumps(rss_bytes("VmHWM") - before))


def head_tail_memory(b: int, t: int, vocab: int) -> None:
    """Print head_tail's peak memory above its inputs, in units of one ``[B, T, V]`` float32 logits tensor.

    The worker runs with glibc's mmap threshold fixed at 128 KiB: with the default (dynamic) threshold, freed
    chunk-sized temporaries stay in the heap and the peak RSS measures the allocator's retention (3-4x one
    logits tensor here), not the live tensors."""
    spec = json.dumps([b, t, vocab])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(
        [sys.executable, __file__, "--head-tail-memory-worker", spec],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    extra, logits = json.loads(out.stdout.strip().splitlines()[-1]), b * t * vocab * 4
    print(
        f"\nhead_tail on every token of {b}x{t}x{vocab}: peak above the inputs {extra / 2**20:.1f} MB "
        f"= {extra / logits:.2f}x one logits tensor ({logits / 2**20:.1f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20, help="steps per round (a multiple of 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--sharpness", type=float, default=8.0, help="scale of the teacher's LM head")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size (real ones: 151936, 262208)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--head-tail-memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.head_tail_memory_worker:
        return head_tail_memory_worker(args.head_tail_memory_worker)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, t, vocab, rounds, steps = args.batch, args.length, args.vocab, args.rounds, args.steps
    if args.quick:
        b, t, vocab, rounds, steps = 2, 16, 512, 2, 10
    common = {"vocab_size": vocab, "n_positions": t, "n_head": 4, "bos_token_id": 0, "eos_token_id": 0}
    student = GPT2LMHeadModel(GPT2Config(n_embd=128, n_layer=2, **common))
    teacher = GPT2LMHeadModel(GPT2Config(n_embd=256, n_layer=4, tie_word_embeddings=False, **common)).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(args.sharpness)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    models = (student, teacher, opt)
    batches = make_batches(8, b, t, vocab, prompt=t // 4)
    print(
        f"student {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M params, teacher "
        f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M, batch {b}x{t}, vocab {vocab}, "
        f"teacher sharpness {args.sharpness}, {torch.get_num_threads()} thread(s), {rounds} rounds x {steps} steps"
    )
    run_round(models, batches, 3, 0, None)  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        recorders = {
            "every=10": Recorder(Path(tmp) / "every10", every=10, samples=2),
            "every=1": Recorder(Path(tmp) / "every1", every=1, samples=2),
        }
        results: dict[str, list[dict[str, float]]] = {"bare": [], **{name: [] for name in recorders}}
        for r in range(rounds):
            for name in results:
                results[name].append(run_round(models, batches, steps, r * steps, recorders.get(name)))
        for rec in recorders.values():
            rec.close()

        def median(name: str, key: str) -> float:
            return statistics.median(x[key] for x in results[name])

        cpu, wall = median("bare", "cpu"), median("bare", "wall")
        header = ("variant", "cpu s/step", "cpu ratio", "wall ratio", "in log()", "per 1,000 steps")
        print("\n{:<9} {:>10} {:>9} {:>10} {:>8} {:>15}".format(*header))
        print(f"{'bare':<9} {cpu:10.4f} {1.0:9.3f} {1.0:10.3f}")
        for name, rec in recorders.items():
            size = open_run(rec.path).size_bytes / rec.stats["steps_logged"] * 1000
            print(
                f"{name:<9} {median(name, 'cpu'):10.4f} {median(name, 'cpu') / cpu:9.3f} "
                f"{median(name, 'wall') / wall:10.3f} {median(name, 'log') / cpu:8.2%} {size / 1e6:12.2f} MB"
            )
    head_tail_memory(b, t, vocab)
    print("\ncpu ratio: median process CPU time per step with the recorder / without (target <= 1.05 at every=10);")
    print("wall ratio: the same in wall time (noisy on a shared machine); in log(): CPU time inside")
    print("Recorder.log as a share of the bare step; per 1,000 steps: bytes of the run directory on disk.")


if __name__ == "__main__":
    main()
