"""Every code block of README.md runs: Python blocks as written, in a folder laid out as they expect
(``your/teacher``, ``your/student``, ``your/train.jsonl`` from the embedded default, ``runs/demo/*`` from
recorded runs); shell blocks' ``make`` targets exist (a dry run: running ``make test`` here would recurse)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.viz_runs import cma_run, vanilla_run

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
BLOCKS = BLOCK.findall((ROOT / "README.md").read_text())


def test_the_readme_has_code_blocks():
    assert {lang for lang, _ in BLOCKS} == {"bash", "python"} and len(BLOCKS) >= 4


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    your = tmp_path / "your"
    your.mkdir()
    (your / "teacher").symlink_to(ROOT / "data" / "models" / "teacher")
    (your / "student").symlink_to(ROOT / "data" / "models" / "student-cross")
    lines = (ROOT / "data" / "train.jsonl").read_text().splitlines()[:40]
    (your / "train.jsonl").write_text("\n".join(json.dumps(json.loads(line)) for line in lines) + "\n")
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    shutil.copytree(cma_run(), demo / "cma")
    for name in ("fkl", "akl"):
        shutil.copytree(vanilla_run(), demo / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("index", [k for k, (lang, _) in enumerate(BLOCKS) if lang == "python"])
def test_python_block_runs(index, readme_folder):
    code = BLOCKS[index][1]
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("index", [k for k, (lang, _) in enumerate(BLOCKS) if lang == "bash"])
def test_shell_block_make_targets_exist(index):
    for line in BLOCKS[index][1].splitlines():
        command = line.split("#")[0].split()
        if command[:1] == ["make"]:
            subprocess.run(["make", "-n", *command[1:]], cwd=ROOT, check=True, capture_output=True)
