"""Train a tiny VanillaKD with KDTrainer; run directly or under torchrun. Writes the results as JSON.

usage: kdtrainer_run.py OUT_JSON RUN_DIR PER_DEVICE_BATCH
"""

import json
import os
import sys

import torch
from transformers import TrainingArguments

from kdviz.methods import KDCollator, VanillaKD
from kdviz.record import Recorder
from kdviz.train.trainer import KDTrainer
from tests import kd_helpers


def equal_length_examples(tokenizer, n):
    """Pairs whose responses have the same token count, so per-rank token means equal the global mean."""
    by_length = {}
    for prompt, response in kd_helpers.pairs(400):
        key = (len(tokenizer(prompt)["input_ids"]), len(tokenizer(response)["input_ids"]))
        by_length.setdefault(key, []).append({"prompt": prompt, "response": response})
    return max(by_length.values(), key=len)[:n]


def main(out_json, run_dir, per_device_batch):
    torch.manual_seed(0)
    tok = kd_helpers.bpe_tokenizer()
    method = VanillaKD(kd_helpers.student_model(len(tok)), kd_helpers.teacher_model(len(tok)), divergence="akl")
    examples = equal_length_examples(tok, 8)
    args = TrainingArguments(
        output_dir=run_dir + "-trainer", per_device_train_batch_size=int(per_device_batch), max_steps=4,
        learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None, seed=0, data_seed=0,
        dataloader_drop_last=True, disable_tqdm=True,
    )
    main_process = int(os.environ.get("RANK", "0")) == 0
    recorder = Recorder(run_dir, every=1, samples=1, overwrite=True) if main_process else None
    trainer = KDTrainer(method=method, recorder=recorder, args=args, train_dataset=examples,
                        data_collator=KDCollator(tok))
    trainer.train()
    if recorder is not None:
        recorder.close()
    if trainer.is_world_process_zero():
        params = torch.nn.utils.parameters_to_vector(method.student.parameters())
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        with open(out_json, "w") as f:
            json.dump({"losses": losses, "params": params.tolist(), "world": trainer.args.world_size}, f)

    kd_helpers.end_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
