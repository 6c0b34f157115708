"""KDTrainer: a few steps single-process, and under torchrun with two gloo processes (same global batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdviz.record import open_run
from kdviz.train.trainer import KDTrainer

SCRIPT = Path(__file__).parent / "scripts" / "kdtrainer_run.py"
ROOT = Path(__file__).parents[1]


def run(tmp_path, name, per_device_batch, nproc=None):
    out, run_dir = tmp_path / f"{name}.json", tmp_path / name
    launcher = [sys.executable] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, str(SCRIPT), str(out), str(run_dir), str(per_device_batch)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), open_run(run_dir)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single, single_run = run(tmp_path, "single", 4)
    ddp, ddp_run = run(tmp_path, "ddp", 2, nproc=2)
    assert single["world"] == 1 and ddp["world"] == 2
    assert len(single["losses"]) == len(ddp["losses"]) == 4
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(ddp["params"]), torch.tensor(single["params"]), rtol=1e-4, atol=1e-5)
    for recorded in (single_run, ddp_run):  # one coherent store, written by the main process
        steps = recorded.scalars.query("name == 'loss'")["step"]
        assert sorted(steps) == [0, 1, 2, 3]


def test_kdtrainer_refuses_a_model_argument():
    with pytest.raises(TypeError, match="not model="):
        KDTrainer(method=torch.nn.Linear(1, 1), model=torch.nn.Linear(1, 1))
