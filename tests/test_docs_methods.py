"""The method reference: every section of docs/methods.md that the code, tests and notebooks point to exists,
and nothing points to a reference outside the repository."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from kdviz.divergences import registry_markdown

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("kdviz", "tests", "notebooks", "benchmarks") for p in (ROOT / d).rglob("*")
           if p.suffix in (".py", ".ipynb", ".md")] + [ROOT / "README.md"]


def anchors() -> set[str]:
    """GitHub's anchors of the headings of docs/methods.md."""
    out = set()
    for line in (ROOT / "docs" / "methods.md").read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    return out


def test_every_pointer_names_an_existing_section():
    known = anchors()
    found = 0
    for path in SOURCES:
        for anchor in re.findall(r"docs/methods\.md#([a-z0-9-]+)", path.read_text(encoding="utf-8")):
            found += 1
            assert anchor in known, f"{path.relative_to(ROOT)} points to a missing section #{anchor}"
    assert found >= 30


def test_no_pointer_to_an_internal_spec():
    spec = "METHODS" + ".md"
    for path in SOURCES:
        assert spec not in path.read_text(encoding="utf-8"), path.relative_to(ROOT)


def test_the_reference_cites_every_paper():
    text = (ROOT / "docs" / "methods.md").read_text()
    for arxiv in ("2406.17328", "2404.02657", "2412.14528", "2402.12030", "2401.10491"):
        assert f"arXiv {arxiv}" in text


def test_the_divergence_table_is_generated_from_the_registry():
    spec = importlib.util.spec_from_file_location("registry_docs", ROOT / "scripts" / "registry_docs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    part = script.generated_part((ROOT / "docs" / "methods.md").read_text())
    assert part == registry_markdown(), "docs/methods.md is out of date: run python scripts/registry_docs.py"
