"""Generation-based evaluation: exact match and ROUGE-L (docs/methods.md#evaluation).

The prompt format the embedded teacher was trained on is :func:`format_prompt`; every model evaluated or
distilled on the embedded data must see the same format.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

import pandas as pd
import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

PROMPT_TEMPLATE = "Instruction: {prompt}\nResponse:\n"


def format_prompt(prompt: str) -> str:
    """The text a model sees before it answers ``prompt``.

    The training text of an example is ``format_prompt(prompt) + response + tokenizer.eos_token``; the
    response starts at character ``len(format_prompt(prompt))``, and both embedded tokenizers start a new
    token there (the template ends with a newline, which each of them keeps as its own token), so the
    prompt's token ids are a prefix of the training text's ids. No BOS token is used.
    """
    return PROMPT_TEMPLATE.format(prompt=prompt)


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure x100 with stemming (``rouge-score``), the maximum over ``references``."""
    refs = [references] if isinstance(references, str) else list(references)
    return max(_scorer().score(ref, prediction)["rougeL"].fmeasure for ref in refs) * 100.0


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """100.0 when ``prediction`` equals one of ``references`` after stripping whitespace, else 0.0."""
    refs = [references] if isinstance(references, str) else list(references)
    return 100.0 if any(prediction.strip() == ref.strip() for ref in refs) else 0.0


def _examples(examples: Iterable[dict] | pd.DataFrame) -> list[dict]:
    rows = examples.to_dict("records") if isinstance(examples, pd.DataFrame) else list(examples)
    if not rows:
        raise ValueError("evaluate: `examples` is empty; pass a list of dicts with 'prompt' and 'response'.")
    for i, row in enumerate(rows):
        if "prompt" not in row or "response" not in row:
            raise ValueError(f"evaluate: example {i} has keys {sorted(row)}; 'prompt' and 'response' are "
                             "required ('response' is a string or a list of reference strings).")
    return rows


def _left_padded(tokenizer, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Token ids of ``texts`` padded on the left (decoder-only generation) with an attention mask."""
    if tokenizer.pad_token_id is None:
        raise ValueError("evaluate: the tokenizer has no pad token; set `tokenizer.pad_token` first.")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], *, greedy: bool = True, max_new_tokens: int = 48,
             batch_size: int = 32, progress: bool = True, desc: str = "generate") -> list[str]:
    """Answers of ``model`` to raw ``prompts`` (formatted with :func:`format_prompt`), in input order.

    Sampling uses temperature 1.0, top-p 1.0 and no top-k (the DSKD protocol) and draws from the global
    torch generator: seed it with ``torch.manual_seed`` for reproducible samples.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    answers: list[str] = [""] * len(prompts)
    options = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0, "top_p": 1.0,
                                                   "top_k": 0}
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            batch = order[start:start + batch_size]
            inputs = _left_padded(tokenizer, [format_prompt(prompts[i]) for i in batch], device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, **options)
            texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                answers[i] = text.strip()
    finally:
        model.train(was_training)
    return answers


def evaluate(model, tokenizer, examples: Iterable[dict] | pd.DataFrame, *, greedy: bool = True,
             seeds: Sequence[int] = (0, 1, 2), max_new_tokens: int = 48, batch_size: int = 32,
             progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Generate answers to ``examples`` and score them with exact match and ROUGE-L (both x100).

    Args:
        model: a decoder-only Hugging Face model (``AutoModelForCausalLM``); left padding is used.
        tokenizer: its tokenizer (needs a pad and an EOS token).
        examples: dicts (or DataFrame rows) with ``prompt`` and ``response`` (a string or a list of
            references; scores are the maximum over references); an optional ``task`` is carried over.
        greedy: greedy decoding (one pass) when True; otherwise sampling at temperature 1.0 / top-p 1.0,
            one pass per seed in ``seeds``, scores averaged over the seeds.
        seeds: the sampling seeds (ignored when ``greedy``).
        max_new_tokens, batch_size: generation limits.
        progress: show a ``tqdm.auto`` progress bar.

    Returns:
        ``(summary, per_example)``: ``summary`` holds ``exact_match`` and ``rouge_l`` (means x100), their
        standard deviation over seeds (``*_std``, 0 when greedy), ``n`` examples, the decoding settings
        and ``by_task`` means when examples have a ``task``; ``per_example`` has one row per example and
        seed with ``prompt``, ``reference``, ``prediction``, ``exact_match``, ``rouge_l`` (and ``task``).
    """
    rows = _examples(examples)
    prompts = [r["prompt"] for r in rows]
    runs = [None] if greedy else list(seeds)
    if not runs:
        raise ValueError("evaluate: sampling needs at least one seed in `seeds`.")
    records = []
    for seed in tqdm(runs, desc="evaluate", disable=not progress or len(runs) == 1, leave=False):
        if seed is not None:
            torch.manual_seed(seed)
        answers = generate(model, tokenizer, prompts, greedy=greedy, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, progress=progress)
        for i, (row, answer) in enumerate(zip(rows, answers, strict=True)):
            records.append({"example": i, "seed": seed, "task": row.get("task"), "prompt": row["prompt"],
                            "reference": row["response"], "prediction": answer,
                            "exact_match": exact_match(answer, row["response"]),
                            "rouge_l": rouge_l(answer, row["response"])})
    frame = pd.DataFrame.from_records(records)
    per_seed = frame.groupby("seed", dropna=False)[["exact_match", "rouge_l"]].mean()
    summary = {
        "exact_match": float(per_seed["exact_match"].mean()),
        "rouge_l": float(per_seed["rouge_l"].mean()),
        "exact_match_std": float(per_seed["exact_match"].std(ddof=0)),
        "rouge_l_std": float(per_seed["rouge_l"].std(ddof=0)),
        "n": len(rows),
        "greedy": greedy,
        "seeds": [] if greedy else list(runs),
    }
    if frame["task"].notna().all():
        by_task = frame.groupby("task")[["exact_match", "rouge_l"]].mean()
        summary["by_task"] = {t: {k: float(v) for k, v in vals.items()} for t, vals in by_task.iterrows()}
    else:
        frame = frame.drop(columns="task")
    return summary, frame
