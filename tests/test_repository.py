"""What a clean clone holds: no link into one machine's files (a committed `.venv` symlink once made every clone
share, and then loop, the committer's environment)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked() -> list[str]:
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.fail("the repository tests need git and a git checkout (CI runs on a clone)")
    out = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_no_tracked_symlink_leaves_the_repository():
    for line in tracked():
        mode, _, _, path = line.split(maxsplit=3)
        if mode == "120000":
            target = (ROOT / path).parent / (ROOT / path).readlink()
            assert ROOT in target.resolve().parents, f"{path} links outside the repository, to {target}"


def test_no_environment_or_cache_is_tracked():
    paths = [line.split(maxsplit=3)[3] for line in tracked()]
    for generated in (".venv", ".cache", "runs", "test-artifacts", ".hypothesis"):
        assert not [p for p in paths if p == generated or p.startswith(generated + "/")], generated
