"""``KDTrainer``: a Hugging Face ``Trainer`` that trains a student with any kdviz method.

Multi-GPU and multi-node come from the Trainer itself (accelerate: DDP, DeepSpeed, FSDP; ``torchrun``).
The student and the method's own parameters (DSKD/CMA projectors) are wrapped into one module,
:class:`Distillation`, so the distributed wrapper synchronises and the optimizer updates both; the
teacher stays outside it, frozen. Datasets yield ``{"prompt", "response"}`` dicts and the data collator
is a :class:`~kdviz.methods.KDCollator` (``remove_unused_columns`` is turned off for it).

The loss of a step is the token mean over all its trained tokens: under gradient accumulation and
across processes every micro-batch's token-mean loss is weighted by its share of the step's trained
tokens (the Trainer's ``num_items_in_batch``, summed over processes when
``average_tokens_across_devices``), so the update equals the one of the whole batch in one piece.

``trainer.evaluate()`` (and ``eval_strategy``) reports every KD term of the method (``eval_loss``,
``eval_kd``, ``eval_ce``, ...) as its mean over the evaluation set's trained tokens; generation metrics
come from :func:`kdviz.train.evaluate`.

A :class:`~kdviz.record.Recorder` (optional) records from the main process only, so a multi-process run
still writes one coherent run directory; it sees the main process's micro-batches (every micro-batch of
a step). Under ``torchrun`` create it on the main process alone:
``Recorder(...) if int(os.environ.get("RANK", 0)) == 0 else None``. End such a script with
``torch.distributed.destroy_process_group()`` (after a ``barrier()`` if rank 0 still writes): a gloo process
that exits with its group alive can abort in its thread destructors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import EvalPrediction, Trainer

from kdviz.ops import IGNORE


class Distillation(nn.Module):
    """The trainable part of a distillation: ``method.student`` and ``method``'s own parameters.

    ``forward(kd_batch)`` returns the method's :class:`~kdviz.methods.KDOutput`.
    """

    accepts_loss_kwargs = True  # the Trainer then counts the step's tokens (num_items_in_batch) for us

    def __init__(self, method: nn.Module):
        super().__init__()
        if getattr(method, "student", None) is None:
            raise ValueError("the method has no student model: construct it with student=... (and teacher=...)")
        self.student = method.student
        self.method = method

    def forward(self, kd_batch, labels=None):
        return self.method(kd_batch)


_KEY = "kd_batch"


class _Wrapped:
    """The Trainer expects mappings from its collator: hand it ``{"kd_batch": KDBatch, "labels": targets}``.

    ``labels`` are the student's next-token targets (-100 where not trained): the Trainer counts them
    into ``num_items_in_batch``, the step's trained tokens over its micro-batches (and processes).
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        return {_KEY: batch, "labels": batch.student_targets}


def _trained_tokens(batch) -> torch.Tensor:
    return (batch.student_targets != IGNORE).sum()


class KDTrainer(Trainer):
    """``KDTrainer(method=..., recorder=None, args=TrainingArguments(...), train_dataset=..., data_collator=...)``.

    Every other keyword goes to :class:`transformers.Trainer`. ``trainer.train()`` optimises
    ``method.student`` and the method's projectors; ``trainer.model`` is the :class:`Distillation`
    wrapper (``trainer.model.student`` is the student).
    """

    def __init__(self, *, method: nn.Module, recorder=None, args=None, data_collator=None, **kwargs):
        if "model" in kwargs:
            raise TypeError("KDTrainer takes method=... (which holds the student and the teacher), not model=...")
        if kwargs.get("compute_metrics") is not None:
            raise TypeError("KDTrainer reports the method's KD terms as its evaluation metrics; it takes no "
                            "compute_metrics (use kdviz.train.evaluate for generation metrics)")
        if data_collator is None:
            raise ValueError("KDTrainer needs data_collator=KDCollator(student_tokenizer[, teacher_tokenizer])")
        if args is not None:
            args.remove_unused_columns = False  # the collator needs the raw prompt and response
        self.recorder = recorder
        self._term_names: list[str] | None = None
        super().__init__(model=Distillation(method), args=args, data_collator=_Wrapped(data_collator),
                         compute_metrics=self._kd_metrics, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The micro-batch's share of the step's token-mean loss (its own token mean without a count)."""
        batch = inputs[_KEY].to(self.args.device)
        out = model(batch)
        loss = out.loss
        if num_items_in_batch is not None:
            loss = out.loss * _trained_tokens(batch) / num_items_in_batch
            if self.args.average_tokens_across_devices:  # a global count; DDP averages the processes' gradients
                loss = loss * self.accelerator.num_processes
        if self.recorder is not None and model.training and self.is_world_process_zero():
            self._record(batch, out)
        return (loss, out) if return_outputs else loss

    def _record(self, batch, out) -> None:
        step = self.state.global_step
        if not self.accelerator.sync_gradients:  # not the step's last micro-batch
            self.recorder.add_micro_batch(step, batch, out)
            return
        lr = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else None
        self.recorder.log(step, batch, out, lr=lr)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """No loss of its own (``eval_loss`` is the token mean of the term ``loss``); as "predictions" the
        method's terms repeated per row, as "labels" each row's trained tokens, for :meth:`_kd_metrics`."""
        batch = inputs[_KEY].to(self.args.device)
        with torch.no_grad():
            out = model(batch)
        names = self._term_names = self._term_names or [n for n, v in out.terms.items() if v.numel() == 1]
        terms = torch.stack([out.terms[n].detach().float().reshape(()) for n in names])
        rows = (batch.student_targets != -100).sum(-1)
        return None, terms.expand(len(rows), -1).contiguous(), rows

    def _kd_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """Every term's mean over the evaluated trained tokens (batches weighted by their token counts)."""
        values, tokens = np.asarray(prediction.predictions, dtype=np.float64), np.asarray(prediction.label_ids)
        weights = tokens.astype(np.float64) / max(tokens.sum(), 1)
        return {name: float(weights @ values[:, k]) for k, name in enumerate(self._term_names or [])}

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.recorder is not None and self.is_world_process_zero():
                self.recorder.flush()
