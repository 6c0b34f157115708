"""Speed of the dashboard on a large run, and the size of its static report.

A synthetic run is written through the real Recorder and run store: 10,000 steps of loss terms, and every
50 steps (200 recorded steps) one sampled sequence with a 256 x 256 ``t2s_weight`` alignment matrix (with
its character-overlap reference), per-token losses and head/tail statistics (vocabulary 64). Then:

- open: ``open_run`` + ``kdviz.viz.dashboard(run)``, which builds every tab's figures (target < 2 s);
- slider: moving the shared step slider to a random recorded step with the Alignment tab shown, i.e.
  reading the matrix and updating the heatmap widget in place (target < 100 ms, median and worst of 30);
- report: ``kdviz.viz.report(run, path)`` time and file size (plotly.js inlined, 10 steps per slider).

Printed: each time, its ratio to the target, and the report's size.

    python benchmarks/bench_viz.py            # ~1-2 minutes on 2 cores (most of it writing the run)
    python benchmarks/bench_viz.py --quick    # 1,000 steps, 20 matrices: a smoke test of the harness
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdviz.methods import Alignment, KDOutput, Logits, TokenValues
from kdviz.record import RecordBatch, Recorder, open_run
from kdviz.viz import dashboard, report

SIZE, VOCAB, EVERY = 256, 64, 50
TARGET_OPEN_S, TARGET_SLIDER_S = 2.0, 0.1




def make_batch() -> RecordBatch:
    n = SIZE + 1
    ids = torch.randint(0, VOCAB, (1, n))
    labels = ids.clone()
    labels[:, 0] = -100
    near = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() <= 1
    tokens = [[f"tok{k % 97}" for k in range(n)]]
    return RecordBatch(ids, labels, ids.clone(), labels.clone(), near[None], ["synthetic text"], tokens, tokens)


def make_output(step: int, recorded: bool, gen: torch.Generator) -> KDOutput:
    kd = torch.tensor(2.0 / (1 + step / 500) + 0.05 * torch.rand(1, generator=gen).item())
    diagnostics: dict[str, object] = {}
    if recorded:
        n = SIZE + 1
        sharp = 1 + step / 500
        weights = (torch.randn(1, n, n, generator=gen) + sharp * torch.eye(n)).mul(sharp).softmax(-1)
        diagnostics = {
            "t2s_weight": Alignment(weights, "soft"),
            "token_kd": TokenValues(torch.rand(1, n, generator=gen), "student"),
            "student_logits": Logits(torch.randn(1, n, VOCAB, generator=gen), "student", "student"),
            "teacher_logits": Logits(torch.randn(1, n, VOCAB, generator=gen), "teacher", "teacher"),
        }
    return KDOutput(kd + 1.0, {"kd": kd, "ce": torch.tensor(1.0)}, diagnostics)


def write_run(path: Path, steps: int) -> float:
    gen = torch.Generator().manual_seed(0)
    batch = make_batch()
    start = time.perf_counter()
    with Recorder(path, every=EVERY, samples=1, flush_every=100, meta={"method": {"name": "synthetic"}}) as rec:
        for step in range(steps):
            rec.log(step, batch, make_output(step, step % EVERY == 0, gen), lr=1e-3)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 steps (20 matrices) instead of 10,000")
    args = parser.parse_args()
    steps = 1_000 if args.quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run"
        written = write_run(path, steps)
        run = open_run(path)
        n_matrices = len(run.matrix_steps("t2s_weight"))
        print(
            f"run: {steps} steps, {n_matrices} matrices of {SIZE}x{SIZE}, {run.size_bytes / 1e6:.1f} MB, "
            f"written in {written:.1f} s"
        )

        dashboard(open_run(path))  # warm-up: imports, plotly templates
        start = time.perf_counter()
        d = dashboard(open_run(path))
        opened = time.perf_counter() - start
        print(
            f"open + build dashboard: {opened * 1000:.0f} ms  (target {TARGET_OPEN_S * 1000:.0f} ms, "
            f"ratio {opened / TARGET_OPEN_S:.2f})"
        )

        d.tabs.selected_index = d.tab_titles.index("Alignment")
        options = list(d.controls.slider.options)
        rng = random.Random(0)
        times = []
        for _ in range(30):
            step = rng.choice([s for s in options if s != d.controls.slider.value])
            start = time.perf_counter()
            d.controls.slider.value = step
            times.append(time.perf_counter() - start)
            assert f"step {step} " in d.heatmap.layout.title.text
        median, worst = statistics.median(times), max(times)
        print(
            f"step slider update (alignment heatmap {SIZE}x{SIZE}): median {median * 1000:.0f} ms, "
            f"worst {worst * 1000:.0f} ms  (target {TARGET_SLIDER_S * 1000:.0f} ms, "
            f"ratio {median / TARGET_SLIDER_S:.2f})"
        )
        errors = "".join(o.get("text", "") for o in d.errors.outputs)
        assert not errors, errors

        start = time.perf_counter()
        out = report(run, Path(tmp) / "report.html")
        took = time.perf_counter() - start
        print(
            f"static report: {out.stat().st_size / 1e6:.1f} MB in {took:.1f} s "
            f"(plotly.js ~4.7 MB of it; at most 10 steps per slider)"
        )


if __name__ == "__main__":
    main()
