"""A writer in another process: read while it appends; kill it with SIGKILL and lose nothing flushed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from kdviz.record import TornRecordWarning, open_run

ROOT = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
from kdviz.record import Recorder
from tests.record_fakes import make_batch, make_output
path, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rec = Recorder(path, every=3, samples=2, flush_every=1)
print("ready", flush=True)
for step in range(steps):
    rec.log(step, make_batch(), make_output(step))  # flush_every=1: flushed when log returns
    print(step, flush=True)
    time.sleep(pause)
rec.close()
print("done", flush=True)
"""


def _writer(path: Path, steps: int, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(steps), str(pause)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _complete_steps(run) -> None:
    """Every step read back has all of its scalar rows (no partial record ever appears)."""
    df = run.scalars
    per_step = df[df["name"].isin(["loss", "kd", "ce", "t2s_acc"])].groupby("step").size()
    assert (per_step == 4).all(), per_step


def test_read_while_a_writer_process_appends(tmp_path):
    path = tmp_path / "run"
    proc = _writer(path, steps=30, pause=0.02)
    try:
        assert proc.stdout.readline().strip() == "ready"
        run, seen = open_run(path), []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornRecordWarning)  # racing a write in progress is allowed
            while proc.poll() is None:
                run.refresh()
                _complete_steps(run)
                seen.append(len(run.scalars))
                time.sleep(0.01)
    finally:
        proc.wait(timeout=60)
    run.refresh()
    assert run.steps("kd") == list(range(30))
    assert run.matrix_steps("t2s_weight") == list(range(0, 30, 3))
    assert seen == sorted(seen) and len(set(seen)) > 2  # it grew while the writer ran


def test_sigkill_loses_nothing_flushed(tmp_path):
    path = tmp_path / "run"
    proc = _writer(path, steps=10_000, pause=0.0)
    flushed = -1
    try:
        assert proc.stdout.readline().strip() == "ready"
        while flushed < 25:
            flushed = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = open_run(path)
    assert all(issubclass(w.category, TornRecordWarning) for w in caught)
    steps = run.steps("kd")
    assert steps == list(range(len(steps))) and steps[-1] >= flushed
    _complete_steps(run)
    recorded = [s for s in range(0, flushed + 1) if s % 3 == 0]
    assert run.matrix_steps("t2s_weight")[: len(recorded)] == recorded
    for step in recorded:
        assert run.matrix("t2s_weight", step=step, sample=1).values.shape == (5, 4)
    assert "stats" not in run.meta  # close() never ran
