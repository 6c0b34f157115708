"""kdviz: knowledge distillation losses, instrumentation and visual diagnostics for language models."""

from kdviz.divergences import DIVERGENCES, divergence
from kdviz.fused import fused_divergence
from kdviz.headtail import HeadTail, head_tail

__version__ = "0.1.0"

__all__ = ["DIVERGENCES", "HeadTail", "__version__", "divergence", "fused_divergence", "head_tail"]
