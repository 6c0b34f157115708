"""Visual diagnostics of distillation runs: plotly figures, Jupyter widgets and static HTML reports.

The namespace holds views only:

- figures (:mod:`kdviz.viz.figures`): functions from the tidy DataFrames of a run (``run.scalars``,
  ``run.head_tail()``, ``run.tokens()``, ...), a matrix (``run.matrix(...)``), or the Run itself, to plotly
  figures; the toy teacher/student's figures of the KL-family lessons (:mod:`kdviz.viz.toy`).
- widgets: :func:`dashboard`, :func:`compare`, :func:`playground`, :func:`inspect_tokenizers`.
- :func:`report`: one self-contained HTML file of one or several runs.
- :mod:`lab <kdviz.viz.lab>`: the JupyterLab settings the widgets rely on (``kdviz lab`` writes them).

Their helpers (labels, smoothing, binning, ...) stay in their modules.
"""

from kdviz.viz import lab
from kdviz.viz.figures import (
    alignment_heatmap,
    alignment_row,
    head_tail_steps,
    head_tail_tokens,
    loss_terms,
    numerics,
    results_table,
    token_losses,
    tokenizer_comparison,
    transport_figure,
    vocab_map_table,
)
from kdviz.viz.report import report
from kdviz.viz.toy import distribution_figure, toy_experiment_figure
from kdviz.viz.widgets import compare, dashboard, inspect_tokenizers, playground

__all__ = [
    "alignment_heatmap",
    "alignment_row",
    "compare",
    "dashboard",
    "distribution_figure",
    "head_tail_steps",
    "head_tail_tokens",
    "inspect_tokenizers",
    "lab",
    "loss_terms",
    "numerics",
    "playground",
    "report",
    "results_table",
    "token_losses",
    "tokenizer_comparison",
    "toy_experiment_figure",
    "transport_figure",
    "vocab_map_table",
]
