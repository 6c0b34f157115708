"""A plain distillation loop for any kdviz method: AdamW, warmup + cosine, clipping, accumulation, recording.

``distill(method, collator, examples, config)`` trains ``method.student`` (and the method's own
projectors) against ``method.teacher``, which stays frozen in eval mode. Each optimizer step consumes
``grad_accum`` micro-batches of ``batch_size`` examples; every micro-batch's loss is weighted by its share
of the step's trained tokens, so that the update equals the one of the whole batch for token-mean losses.
A :class:`~kdviz.record.Recorder` (optional) sees every micro-batch of every ``log_every``-th step (the
step's terms and token counts cover all of them), after the backward of the whole step (so its gradient
norms are the step's); ``tokens_seen`` counts the steps in between too. A resumed recorder continues
its step count: the first step of this call is the recorder's ``next_step``.

A non-finite loss (or gradient) stops training before the optimizer applies it: ``distill`` raises
:class:`NonFiniteLossError` naming the step and the replay file the recorder saved of the offending
micro-batch, and the weights are those of the previous step. ``TrainConfig(on_nonfinite="skip")`` drops
such a step instead (with a warning) and goes on. A recorder that cannot write (disk full) stops
training too, unless ``TrainConfig(on_record_error="continue")``, which warns and trains on unrecorded.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from kdviz.ops import IGNORE
from kdviz.record.store import RecordWriteError
from kdviz.train.evaluate import format_prompt

NONFINITE_POLICIES = ("stop", "skip")
RECORD_ERROR_POLICIES = ("stop", "continue")


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
    on_nonfinite: str = "stop"  # a non-finite loss or gradient: "stop" (raise) or "skip" the step
    on_record_error: str = "stop"  # the recorder cannot write: "stop" (raise) or "continue" unrecorded

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "method_lr", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"eval_every must be an integer >= 0, got {self.eval_every!r}")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {self.on_nonfinite!r}")
        if self.on_record_error not in RECORD_ERROR_POLICIES:
            raise ValueError(f"on_record_error must be one of {RECORD_ERROR_POLICIES}, got {self.on_record_error!r}")


class NonFiniteLossError(FloatingPointError):
    """Training stopped at ``step``: its loss or gradient was not finite. The optimizer did not apply it.

    ``replay`` is the replay file of the offending micro-batch (:func:`kdviz.record.load_replay`), or None
    without a recorder.
    """

    def __init__(self, message: str, step: int, replay: Path | None):
        super().__init__(message)
        self.step = step
        self.replay = replay


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
    return int((batch.student_targets != IGNORE).sum())


def _grad_norm(params: list[nn.Parameter]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


class _Recording:
    """The recorder as the loop uses it: exact ``tokens_seen`` between logged steps, write errors handled
    by ``on_record_error`` (raise, or warn once and record no more)."""

    def __init__(self, recorder, on_error: str):
        self.recorder = recorder
        self.on_error = on_error
        self.tokens = 0  # trained tokens since the last logged step

    def add_micro_batch(self, step: int, batch, out) -> None:
        self._call("add_micro_batch", step, batch, out)

    def log(self, step: int, batch, out, optimizer) -> Path | None:
        """Log the step; return the first replay file written for it (a non-finite term), if any."""
        written = self._call("log", step, batch, out, optimizer=optimizer, tokens=self.tokens)
        self.tokens = 0
        return written[0] if written else None

    def flush(self) -> None:
        self._call("flush")

    def _call(self, name: str, *args, **kwargs):
        if self.recorder is None:
            return None
        try:
            return getattr(self.recorder, name)(*args, **kwargs)
        except RecordWriteError as error:
            if self.on_error == "stop":
                raise
            warnings.warn(f"{error}; training goes on without recording (on_record_error='continue')",
                          RuntimeWarning, stacklevel=4)
            self.recorder.close()
            self.recorder = None
            return None


def _stop_or_skip(config: TrainConfig, step: int, message: str, replay: Path | None, recording: _Recording) -> None:
    if replay is not None:
        where = f"the batch is saved in {replay}"
    elif recording.recorder is not None:
        where = f"no new replay file: see open_run({str(recording.recorder.path)!r}).replays() for earlier ones"
    else:
        where = "no replay was saved: pass recorder=Recorder(...) to save the offending batch"
    text = f"step {step}: {message}; the optimizer did not apply this step ({where})"
    if config.on_nonfinite == "skip":
        warnings.warn(f"distill skipped {text}", RuntimeWarning, stacklevel=3)
        return
    recording.flush()
    raise NonFiniteLossError(f"distill stopped at {text}. Pass TrainConfig(on_nonfinite='skip') to skip such "
                             "steps instead.", step, replay)


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
    recording = _Recording(recorder, config.on_record_error)
    first = recorder.next_step if recorder is not None else 0
    history, evaluations = [], []
    start = time.perf_counter()
    student.train()
    method.train()
    bar = tqdm(range(config.steps), desc=description, disable=not progress)
    for index in bar:
        step = first + index
        micro = [collator(next(source)) for _ in range(config.grad_accum)]
        counts = [_trained_tokens(b) for b in micro]
        total_tokens = max(1, sum(counts))
        logged = index % config.log_every == 0
        recording.tokens += sum(counts)
        terms: dict[str, float] = {}
        failure = None
        for k, batch in enumerate(micro):
            out = method(batch)
            if not bool(torch.isfinite(out.loss.detach()).all()):
                failure = (f"the loss of micro-batch {k} is {float(out.loss.detach().float().mean())}",
                           recording.log(step, batch, out, optimizer))
                break
            share = counts[k] / total_tokens
            (out.loss * share).backward()
            for name, value in out.terms.items():
                terms[name] = terms.get(name, 0.0) + float(value) * share
            if logged and k + 1 < len(micro):
                recording.add_micro_batch(step, batch, out)
        norms = {}
        if failure is None:
            norms = {"grad_norm/student": _grad_norm(student_params)}
            if method_params:
                norms["grad_norm/method"] = _grad_norm(method_params)
            if not all(math.isfinite(v) for v in norms.values()):
                failure = (f"the gradient norms are {norms}", recording.log(step, batch, out, optimizer))
            elif logged:
                recording.log(step, batch, out, optimizer)
        lr = optimizer.param_groups[0]["lr"]
        if failure is not None:
            optimizer.zero_grad(set_to_none=True)
            message, replay = failure
            _stop_or_skip(config, step, message, replay, recording)
        else:
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(student_params + method_params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
        history.append({"step": step, "lr": lr, **terms, **norms, "skipped": failure is not None,
                        "seconds": time.perf_counter() - start})
        bar.set_postfix({k: f"{terms[k]:.3f}" for k in ("loss", "ce", "kd") if k in terms})
        last = index + 1 == config.steps
        if evaluator is not None and ((config.eval_every and (index + 1) % config.eval_every == 0) or last):
            student.eval()
            evaluations.append({"step": step + 1, **evaluator(student)})
            student.train()
    student.eval()
    recording.flush()
    return TrainResult(pd.DataFrame(history), evaluations, time.perf_counter() - start, asdict(config))
