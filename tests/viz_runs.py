"""Recorded runs for the viz tests, written once per test process into a temporary directory.

- ``cma``: CMA between the tiny Llama student (Unigram) and GPT-2 teacher (byte-level BPE), 6 steps,
  recorded every 2 steps with 2 samples: alignment matrices, head/tail (t2s and s2t spaces), tokens; the
  recorded steps see different batches, so sample 0's matrices differ in shape from step to step.
- ``vanilla``: VanillaKD with AKL on one tokenizer: head/tail in the shared space, token_kd, no alignment.
- ``ot``: MultiLevelOT between the same two tiny models: transport plans, cost matrices, top-k id maps.
- ``uld``: ULD between the same two tiny models: the position pairing as an alignment matrix.
- ``fake``: the recorder tests' synthetic batches with token strings that try to inject HTML
  (``<img src=x onerror=...>``, ``<script>``).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path

import torch

from kdviz.methods import CMA, ULD, KDCollator, MultiLevelOT, VanillaKD
from kdviz.record import Recorder
from tests.kd_helpers import bpe_tokenizer, pairs, student_model, teacher_model, unigram_tokenizer
from tests.record_fakes import make_batch, make_output

INJECTED = ("<img src=x onerror=alert(1)>", "<script>alert(2)</script>")
STEPS, EVERY = 6, 2


@cache
def root() -> Path:
    path = Path(tempfile.mkdtemp(prefix="kdviz-viz-runs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _train(method, params, batches, path: Path, name: str) -> Path:
    opt = torch.optim.AdamW(params, lr=0.05)
    with Recorder(path, every=EVERY, samples=2, meta={"method": {"name": name}}) as rec:
        for step in range(STEPS):
            batch = batches[step % len(batches)]
            out = method(batch)
            opt.zero_grad()
            out.loss.backward()
            rec.log(step, batch, out, optimizer=opt)
            opt.step()
    return path


@cache
def cma_run() -> Path:
    torch.manual_seed(3)
    collate = KDCollator(unigram_tokenizer(), bpe_tokenizer())
    method = CMA(student_model(len(unigram_tokenizer())), teacher_model(len(bpe_tokenizer())))
    batches = [collate(pairs(3, seed=100 + k)) for k in range(3)]  # recorded steps 0, 2, 4 see three batches
    return _train(method, [*method.parameters(), *method.student.parameters()], batches, root() / "cma", "CMA")


@cache
def vanilla_run() -> Path:
    torch.manual_seed(0)
    tok = bpe_tokenizer()
    collate = KDCollator(tok)
    method = VanillaKD(student_model(len(tok)), teacher_model(len(tok)), divergence="akl")
    batches = [collate(pairs(3, seed=100 + k)) for k in range(2)]
    return _train(method, method.student.parameters(), batches, root() / "vanilla", "VanillaKD-AKL")


@cache
def ot_run() -> Path:
    torch.manual_seed(5)
    collate = KDCollator(unigram_tokenizer(), bpe_tokenizer())
    method = MultiLevelOT(student_model(len(unigram_tokenizer())), teacher_model(len(bpe_tokenizer())), top_k=20)
    batches = [collate(pairs(3, seed=100 + k)) for k in range(2)]
    return _train(method, method.student.parameters(), batches, root() / "ot", "MultiLevelOT")


@cache
def uld_run() -> Path:
    torch.manual_seed(7)
    collate = KDCollator(unigram_tokenizer(), bpe_tokenizer())
    method = ULD(student_model(len(unigram_tokenizer())), teacher_model(len(bpe_tokenizer())))
    batches = [collate(pairs(3, seed=100 + k)) for k in range(2)]
    return _train(method, method.student.parameters(), batches, root() / "uld", "ULD")


def injected_batch():
    """A synthetic batch whose token strings try to inject HTML."""
    batch = make_batch()
    evil = [[INJECTED[k % 2] for k in range(len(row))] for row in batch.student_tokens]
    return replace(batch, student_tokens=evil, teacher_tokens=evil, texts=[f"{INJECTED[0]} text"] * 3)


@cache
def fake_run() -> Path:
    path = root() / "fake"
    with Recorder(path, every=1, samples=2, meta={"method": {"name": INJECTED[1]}}) as rec:
        for step in range(4):
            rec.log(step, injected_batch(), make_output(step))
    return path
