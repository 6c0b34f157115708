"""Training and evaluation: the plain distillation loop, the Hugging Face Trainer, generation + scoring."""

from kdviz.train.evaluate import evaluate, exact_match, format_prompt, generate, rouge_l
from kdviz.train.loop import TrainConfig, TrainResult, distill
from kdviz.train.trainer import Distillation, KDTrainer

__all__ = [
    "Distillation",
    "KDTrainer",
    "TrainConfig",
    "TrainResult",
    "distill",
    "evaluate",
    "exact_match",
    "format_prompt",
    "generate",
    "rouge_l",
]
