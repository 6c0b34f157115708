"""``KDTrainer``: a Hugging Face ``Trainer`` that trains a student with any kdviz method.

Multi-GPU and multi-node come from the Trainer itself (accelerate: DDP, DeepSpeed, FSDP; ``torchrun``).
The student and the method's own parameters (DSKD/CMA projectors) are wrapped into one module,
:class:`Distillation`, so the distributed wrapper synchronises and the optimizer updates both; the
teacher stays outside it, frozen. Datasets yield ``{"prompt", "response"}`` dicts and the data collator
is a :class:`~kdviz.methods.KDCollator` (``remove_unused_columns`` is turned off for it).

A :class:`~kdviz.record.Recorder` (optional) records from the main process only, so a multi-process run
still writes one coherent run directory; it sees the main process's micro-batches. Under ``torchrun``
create it on the main process alone: ``Recorder(...) if int(os.environ.get("RANK", 0)) == 0 else None``.
"""

from __future__ import annotations

from torch import nn
from transformers import Trainer


class Distillation(nn.Module):
    """The trainable part of a distillation: ``method.student`` and ``method``'s own parameters.

    ``forward(batch)`` returns the method's :class:`~kdviz.methods.KDOutput`.
    """

    def __init__(self, method: nn.Module):
        super().__init__()
        if getattr(method, "student", None) is None:
            raise ValueError("the method has no student model: construct it with student=... (and teacher=...)")
        self.student = method.student
        self.method = method

    def forward(self, batch):
        return self.method(batch)


_KEY = "kd_batch"


class _Wrapped:
    """The Trainer expects mappings from its collator: hand it ``{"kd_batch": KDBatch}``.

    The methods normalise their own losses (token means), so the Trainer must not count labels itself;
    a mapping without ``labels`` tells it so.
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        return {_KEY: self.collator(examples)}


class KDTrainer(Trainer):
    """``KDTrainer(method=..., recorder=None, args=TrainingArguments(...), train_dataset=..., data_collator=...)``.

    Every other keyword goes to :class:`transformers.Trainer`. ``trainer.train()`` optimises
    ``method.student`` and the method's projectors; ``trainer.model`` is the :class:`Distillation`
    wrapper (``trainer.model.student`` is the student).
    """

    def __init__(self, *, method: nn.Module, recorder=None, args=None, data_collator=None, **kwargs):
        if "model" in kwargs:
            raise TypeError("KDTrainer takes method=... (which holds the student and the teacher), not model=...")
        if data_collator is None:
            raise ValueError("KDTrainer needs data_collator=KDCollator(student_tokenizer[, teacher_tokenizer])")
        if args is not None:
            args.remove_unused_columns = False  # the collator needs the raw prompt and response
        self.recorder = recorder
        super().__init__(model=Distillation(method), args=args, data_collator=_Wrapped(data_collator), **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = inputs[_KEY].to(self.args.device)
        out = model(batch)
        if self.recorder is not None and self.is_world_process_zero():
            lr = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else None
            self.recorder.log(self.state.global_step, batch, out, lr=lr)
        return (out.loss, out) if return_outputs else out.loss

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.recorder is not None and self.is_world_process_zero():
                self.recorder.flush()
