"""Every benchmark runs end to end on its ``--quick`` sizes and prints its ratios (a smoke test of the
harnesses; the numbers themselves are for the issue notes, measured on a quiet machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CASES = {
    "bench_dashboard_browser": ([], ["kdviz    first render", "ratio kdviz / baseline"]),
    "bench_divergences": (["--names", "fkl", "--dtypes", "float32"], ["fkl ", "fused "]),
    "bench_ot": ([], ["[SD]", "ULD", "second call", "[MultiLevelOT levels]"]),
    "bench_recorder": ([], ["every=10", "every=1", "x one logits tensor"]),
    "bench_viz": ([], ["open + build dashboard", "step slider update", "static report"]),
    "bench_vocab_map": ([], ["llama2 -> gpt2", "mistral -> llama3", "kdviz whole map"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_quick(name, tmp_path):
    args, expected = CASES[name]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for text in expected:
        assert text in done.stdout, done.stdout[-3000:]


def test_every_benchmark_is_smoke_tested():
    assert {p.stem for p in BENCHMARKS.glob("bench_*.py")} == set(CASES)
