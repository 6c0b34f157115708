"""One KDTrainer optimizer step over 8 examples of uneven lengths, in micro-batches; run directly or under
torchrun. Writes JSON: the gradient the optimizer received and the gradient of the same 8 examples as one
batch (the global token mean), with their relative error and cosine.

usage: kdtrainer_accum.py OUT_JSON OUT_DIR PER_DEVICE_BATCH GRAD_ACCUM
"""

import copy
import json
import os
import sys

import torch
from transformers import TrainerCallback, TrainingArguments

from kdviz.methods import KDCollator, VanillaKD
from kdviz.train.trainer import KDTrainer
from tests import kd_helpers


def uneven_examples(n):
    """Six one-word responses and two of several sentences: micro-batch token counts differ 10-fold."""
    pairs = kd_helpers.pairs(n)
    long = " ".join(r for _, r in kd_helpers.pairs(6, seed=2))
    return [{"prompt": p, "response": long if k in (1, 6) else r.split()[0]} for k, (p, r) in enumerate(pairs)]


class Gradient(TrainerCallback):
    def __init__(self, student):
        self.student, self.grad = student, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grad = torch.cat([p.grad.flatten() for p in self.student.parameters()]).clone()


def main(out_json, out_dir, per_device_batch, grad_accum):
    tok = kd_helpers.bpe_tokenizer()
    method = VanillaKD(kd_helpers.student_model(len(tok)), kd_helpers.teacher_model(len(tok)), divergence="fkl")
    reference = copy.deepcopy(method)
    examples = uneven_examples(8)
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=int(per_device_batch),
        gradient_accumulation_steps=int(grad_accum), max_steps=1, learning_rate=1e-3, max_grad_norm=0.0,
        lr_scheduler_type="constant", save_strategy="no", report_to=[], use_cpu=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None, seed=0, data_seed=0, disable_tqdm=True,
    )
    gradient = Gradient(method.student)
    trainer = KDTrainer(method=method, args=args, train_dataset=examples, data_collator=KDCollator(tok),
                        callbacks=[gradient])
    trainer.train()
    if trainer.is_world_process_zero():
        reference(KDCollator(tok)([(e["prompt"], e["response"]) for e in examples])).loss.backward()
        want = torch.cat([p.grad.flatten() for p in reference.student.parameters()])
        got = gradient.grad
        result = {
            "relative_error": float((got - want).norm() / want.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(got, want, dim=0)),
            "world": trainer.args.world_size,
        }
        with open(out_json, "w") as f:
            json.dump(result, f)

    kd_helpers.end_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
