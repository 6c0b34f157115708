"""Visual diagnostics of distillation runs: plotly figures, Jupyter widgets and static HTML reports.

- :mod:`kdviz.viz.figures`: pure functions from a run (or tensors and token strings) to plotly figures.
- :func:`dashboard`, :func:`compare`, :func:`playground`, :func:`inspect_tokenizers`: ipywidgets views.
- :func:`report`: one self-contained HTML file of one or several runs.
- :mod:`kdviz.viz.toy`: the toy teacher/student of the KL-family lessons (AKL's toy experiment).
"""

from kdviz.viz.figures import (
    MAX_AXIS,
    alignment_heatmap,
    head_tail_steps,
    head_tail_tokens,
    loss_terms,
    matrix_view,
    message_figure,
    numerics,
    results_table,
    smooth,
    token_label,
    token_losses,
    tokenizer_comparison,
    top_tokens,
    transport_figure,
    vocab_map_table,
)
from kdviz.viz.report import report
from kdviz.viz.toy import distribution_figure, toy_experiment_figure
from kdviz.viz.widgets import compare, dashboard, inspect_tokenizers, playground

__all__ = [
    "MAX_AXIS",
    "alignment_heatmap",
    "compare",
    "dashboard",
    "distribution_figure",
    "head_tail_steps",
    "head_tail_tokens",
    "inspect_tokenizers",
    "loss_terms",
    "matrix_view",
    "message_figure",
    "numerics",
    "playground",
    "report",
    "results_table",
    "smooth",
    "token_label",
    "token_losses",
    "tokenizer_comparison",
    "top_tokens",
    "toy_experiment_figure",
    "transport_figure",
    "vocab_map_table",
]
