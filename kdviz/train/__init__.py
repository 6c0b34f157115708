"""Training and evaluation helpers for distillation runs on kdviz methods."""

from kdviz.train.evaluate import evaluate, exact_match, format_prompt, generate, rouge_l

__all__ = ["evaluate", "exact_match", "format_prompt", "generate", "rouge_l"]
