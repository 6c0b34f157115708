"""kdviz: knowledge distillation losses, instrumentation and visual diagnostics."""

__version__ = "0.1.0"
