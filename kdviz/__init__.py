"""kdviz: knowledge distillation losses, instrumentation and visual diagnostics for language models.

- Losses: :func:`divergence` / :data:`DIVERGENCES` (same vocabulary), :func:`fused_divergence` (from hidden
  states, without the logits), :mod:`kdviz.methods` (SFT, VanillaKD, DSKD, CMA, ULD, MinED, MultiLevelOT,
  each an ``nn.Module``).
- Alignment between two tokenizers: :mod:`kdviz.align` (:func:`compare_tokenizers` first).
- Recording: :class:`Recorder` writes a run directory (from a :class:`KDBatch`, or a :class:`RecordBatch` for
  a loop of your own); :func:`open_run` reads it as pandas / numpy.
- Views: :mod:`kdviz.viz` (plotly figures, JupyterLab dashboards, static HTML reports).
"""

import importlib

from kdviz import align, methods
from kdviz.align import compare_tokenizers
from kdviz.divergences import DIVERGENCES, divergence
from kdviz.fused import fused_divergence
from kdviz.headtail import HeadTail, head_tail
from kdviz.methods import KDBatch, KDCollator, KDOutput
from kdviz.record import RecordBatch, Recorder, open_run

__version__ = "0.1.0"


def __getattr__(name: str):
    """``kdviz.viz`` is imported on first use: plotly and ipywidgets are not loaded by ``import kdviz``."""
    if name == "viz":
        return importlib.import_module("kdviz.viz")
    raise AttributeError(f"module 'kdviz' has no attribute {name!r}")

__all__ = [
    "DIVERGENCES",
    "HeadTail",
    "KDBatch",
    "KDCollator",
    "KDOutput",
    "RecordBatch",
    "Recorder",
    "__version__",
    "align",
    "compare_tokenizers",
    "divergence",
    "fused_divergence",
    "head_tail",
    "methods",
    "open_run",
    "viz",
]
