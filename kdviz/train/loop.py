"""A plain distillation loop for any kdviz method: AdamW, warmup + cosine, clipping, accumulation, recording.

``distill(method, collator, examples, config)`` trains ``method.student`` (and the method's own
projectors) against ``method.teacher``, which stays frozen in eval mode. Each optimizer step consumes
``grad_accum`` micro-batches of ``batch_size`` examples; every micro-batch's loss is weighted by its share
of the step's trained tokens, so that the update equals the one of the whole batch for token-mean losses.
A :class:`~kdviz.record.Recorder` (optional) sees the last micro-batch of every ``log_every``-th step,
after the backward of the whole step (so its gradient norms are the step's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from kdviz.train.evaluate import format_prompt


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`distill` (defaults suit the embedded default models)."""

    steps: int = 200
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3  # the student
    method_lr: float = 1e-3  # the method's own parameters (DSKD/CMA projectors), as in the DSKD scripts
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only when the caller does
    log_every: int = 1  # recorder calls: every step (the recorder keeps what its own `every` asks)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every!r}")


def warmup_cosine(steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup over ``warmup_fraction * steps``, then cosine decay to 0."""
    warmup = int(round(warmup_fraction * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batches(examples: Sequence[dict], batch_size: int, seed: int):
    """Endless shuffled batches of ``(format_prompt(prompt), response)`` pairs; a new order every epoch."""
    if len(examples) == 0:
        raise ValueError("examples is empty: nothing to train on")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            chunk = [examples[i] for i in order[start : start + batch_size]]
            yield [(format_prompt(ex["prompt"]), ex["response"]) for ex in chunk]


def _trained_tokens(batch) -> int:
    return int((batch.student_targets != -100).sum())


def _grad_norm(params: list[nn.Parameter]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


@dataclass
class TrainResult:
    history: pd.DataFrame  # one row per optimizer step: step, lr, every term, grad norms, seconds
    evaluations: list[dict]  # {"step": ..., **summary} from the evaluator
    seconds: float
    config: dict


def distill(
    method: nn.Module,
    collator: Callable,
    examples: Sequence[dict],
    config: TrainConfig | None = None,
    *,
    recorder=None,
    evaluator: Callable[[nn.Module], dict] | None = None,
    progress: bool = True,
    description: str = "distill",
) -> TrainResult:
    """Train ``method.student`` on ``examples`` (dicts with ``prompt`` and ``response``) with ``method``.

    ``collator`` turns a list of (prompt, response) pairs into a :class:`~kdviz.methods.KDBatch`
    (a :class:`~kdviz.methods.KDCollator`). ``evaluator(student) -> summary dict`` runs every
    ``config.eval_every`` steps and at the end (e.g. a closure over :func:`kdviz.train.evaluate`).
    Returns the per-step history, the evaluations and the wall time.
    """
    config = config or TrainConfig()
    student, teacher = getattr(method, "student", None), getattr(method, "teacher", None)
    if student is None:
        raise ValueError("method has no student model: construct it with student=... (and teacher=...)")
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    student_params = [p for p in student.parameters() if p.requires_grad]
    method_params = [p for p in method.parameters() if p.requires_grad]
    groups = [{"params": student_params, "lr": config.lr}]
    if method_params:
        groups.append({"params": method_params, "lr": config.method_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.steps, config.warmup_fraction))
    source = batches(examples, config.batch_size, config.seed)
    history, evaluations = [], []
    start = time.perf_counter()
    student.train()
    method.train()
    bar = tqdm(range(config.steps), desc=description, disable=not progress)
    for step in bar:
        micro = [collator(next(source)) for _ in range(config.grad_accum)]
        total_tokens = max(1, sum(_trained_tokens(b) for b in micro))
        terms: dict[str, float] = {}
        for batch in micro:
            out = method(batch)
            share = _trained_tokens(batch) / total_tokens
            (out.loss * share).backward()
            for name, value in out.terms.items():
                terms[name] = terms.get(name, 0.0) + float(value) * share
        if recorder is not None and step % config.log_every == 0:
            recorder.log(step, batch, out, optimizer=optimizer)
        norms = {"grad_norm/student": _grad_norm(student_params)}
        if method_params:
            norms["grad_norm/method"] = _grad_norm(method_params)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(student_params + method_params, config.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        history.append({"step": step, "lr": lr, **terms, **norms, "seconds": time.perf_counter() - start})
        bar.set_postfix({k: f"{terms[k]:.3f}" for k in ("loss", "ce", "kd") if k in terms})
        last = step + 1 == config.steps
        if evaluator is not None and ((config.eval_every and (step + 1) % config.eval_every == 0) or last):
            student.eval()
            evaluations.append({"step": step + 1, **evaluator(student)})
            student.train()
    student.eval()
    if recorder is not None:
        recorder.flush()
    return TrainResult(pd.DataFrame(history), evaluations, time.perf_counter() - start, asdict(config))
