"""``import kdviz`` loads the losses, recorder and alignment, not the heavy optional parts: plotly and ipywidgets
(the views), POT (optimal transport) and numba (the vocabulary map's search) load when first used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
HEAVY = ("plotly", "ipywidgets", "ot", "numba")


def loaded_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_import_kdviz_leaves_the_views_transport_and_numba_unloaded():
    assert loaded_after("import kdviz; kdviz.divergence, kdviz.Recorder, kdviz.align.compare_tokenizers") == []


def test_the_lazy_parts_load_on_first_use():
    assert loaded_after("import kdviz; kdviz.viz.dashboard") == ["plotly", "ipywidgets"]
    solve = "kdviz.align.sinkhorn_plans(torch.rand(1, 2, 3), torch.ones(1, 2).bool(), torch.ones(1, 3).bool())"
    assert "ot" in loaded_after(f"import torch, kdviz; {solve}")
    assert loaded_after("from kdviz import viz; viz.report") == ["plotly", "ipywidgets"]
