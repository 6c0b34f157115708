"""The CMA run of notebook 02 as one call: the embedded default's tokenizer pair, recorded for the views.

Used where the same run must exist outside the notebook (the README's picture, the dashboard browser
benchmark), so the three never drift apart.
"""

from __future__ import annotations

import os

import torch

from kdviz.assets import load_default
from kdviz.methods import CMA, KDCollator
from kdviz.record import Recorder, Run, open_run
from kdviz.train.evaluate import format_prompt


def record_cma_example(path: str | os.PathLike, steps: int = 24, *, every: int = 3, samples: int = 2) -> Run:
    """A projector warm-up of CMA between the embedded teacher and the cross-tokenizer student: the student
    is frozen and only CMA's projectors learn (AdamW, lr 3e-2, as in DSKD's projector pre-training stage), for
    ``steps`` steps of 6 pairs (the ``samples`` followed sentences and the next pairs of the first 96 training
    examples). Recorded at ``path`` every ``every`` steps with the top-5 token strings; returns the run."""
    assets = load_default()
    collate = KDCollator(assets.student_tokenizer, assets.teacher_tokenizer)
    pairs = [(format_prompt(e["prompt"]), e["response"]) for e in assets.train[:96]]
    torch.manual_seed(0)
    cma = CMA(assets.student_cross, assets.teacher)
    assets.student_cross.requires_grad_(False)
    optimizer = torch.optim.AdamW(cma.parameters(), lr=3e-2)
    tokenizers = {"student": assets.student_tokenizer, "teacher": assets.teacher_tokenizer}
    rotating, size = len(pairs) - samples, 6 - samples
    meta = {"method": {"name": "CMA"}}
    with Recorder(path, every=every, samples=samples, meta=meta, tokenizers=tokenizers) as rec:
        for step in range(steps):
            start = samples + (step * size) % rotating
            batch = collate(pairs[:samples] + pairs[start : start + size])
            out = cma(batch)
            optimizer.zero_grad()
            out.loss.backward()
            rec.log(step, batch, out, optimizer=optimizer)
            optimizer.step()
    return open_run(path)
