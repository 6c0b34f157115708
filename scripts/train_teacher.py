"""Pretrain kdviz's embedded teacher (GPT-2 architecture) on the training split.

Each example is ``format_prompt(prompt) + response + eos``; the loss is the token cross-entropy with the
response tokens (and EOS) at weight 1 and the prompt tokens at ``PROMPT_WEIGHT``, so that the model learns
to answer while still modelling the prompt language a little. AdamW, linear warmup then cosine decay,
gradient clipping, fixed seed.

Usage: ``python scripts/train_teacher.py [--steps 800] [--out data/models/teacher]``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from kdviz.train.evaluate import evaluate, format_prompt

PROMPT_WEIGHT = 0.1
CONFIG = {"n_embd": 256, "n_layer": 4, "n_head": 4, "n_inner": 1024, "n_positions": 64}


def load_split(data_dir: Path, split: str) -> list[dict]:
    with open(data_dir / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def encode(tokenizer, rows: list[dict], max_length: int) -> list[tuple[list[int], list[float]]]:
    """Token ids of each training text and per-token loss weights (response 1, prompt PROMPT_WEIGHT)."""
    encoded = []
    for row in rows:
        prompt = format_prompt(row["prompt"])
        enc = tokenizer(prompt + row["response"] + tokenizer.eos_token, add_special_tokens=False,
                        return_offsets_mapping=True)
        ids = enc["input_ids"]
        if len(ids) > max_length:
            raise ValueError(f"example of {len(ids)} tokens exceeds n_positions={max_length}: {row['prompt']!r}")
        weights = [1.0 if start >= len(prompt) else PROMPT_WEIGHT for start, _ in enc["offset_mapping"]]
        encoded.append((ids, weights))
    return encoded


def collate(batch: list[tuple[list[int], list[float]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width))
    for row, (ids, w) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        weights[row, :len(ids)] = torch.tensor(w)
    return input_ids, attention, weights


def make_model(tokenizer, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **CONFIG)
    return GPT2LMHeadModel(config)


def train(data_dir: Path, tokenizer_dir: Path, out: Path, *, steps: int = 800, batch_size: int = 64,
          lr: float = 2e-3, warmup: int = 100, seed: int = 0, eval_every: int = 200, threads: int = 1) -> dict:
    """Train the teacher, save it (model, tokenizer, ``training.json``) to ``out``; return the statistics.

    ``threads``: torch CPU threads. One is the default because the build machine's two cores are shared:
    oversubscribed, two threads ran each step almost twice as slowly as one; one thread also keeps the
    floating-point reduction order, and so the result, the same from machine to machine.
    """
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    model = make_model(tokenizer, seed)
    data = encode(tokenizer, load_split(data_dir, "train"), CONFIG["n_positions"])
    dev = load_split(data_dir, "dev")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, steps + 1), desc="teacher")
    for step in bar:
        if len(order) < batch_size:
            order += torch.randperm(len(data), generator=generator).tolist()
        batch, order = [data[i] for i in order[:batch_size]], order[batch_size:]
        input_ids, attention, weights = collate(batch, tokenizer.pad_token_id)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        loss = (nll * weights[:, 1:]).sum() / weights[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
        if step % eval_every == 0 and step < steps:
            summary, _ = evaluate(model, tokenizer, dev[:100], batch_size=50, progress=False)
            tqdm.write(f"step {step}: loss {loss.item():.3f} dev[:100] exact match {summary['exact_match']:.1f}"
                       f" ROUGE-L {summary['rouge_l']:.1f}")
            model.train()
    train_seconds = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary, _ = evaluate(model, tokenizer, dev, batch_size=50)
    stats = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
             "final_loss": loss.item(),
             "train_seconds": round(train_seconds, 1), "dev": summary}
    (out / "training.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=root / "data")
    parser.add_argument("--tokenizer", type=Path, default=root / "data" / "tokenizers" / "teacher")
    parser.add_argument("--out", type=Path, default=root / "data" / "models" / "teacher")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stats = train(args.data, args.tokenizer, args.out, steps=args.steps, seed=args.seed)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
