"""Tiny tokenizers and models for the alignment and method tests, built offline in a few seconds.

Two deliberately different tokenizers are trained on the same generated corpus: a byte-level BPE
(GPT-2 style, ``Ġ`` markers, no BOS) for the teacher and a Unigram with a metaspace pre-tokenizer
(Llama/SentencePiece style, ``▁`` markers, BOS ``<s>``) for the student. The models are random-weight
``GPT2LMHeadModel`` (teacher) and ``LlamaForCausalLM`` (student) built from configs.
"""

from __future__ import annotations

import random
from functools import cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SUBJECTS = ["the fox", "a naïve cat", "the old dog", "my friend", "the café owner", "a tired bird", "Zoë"]
VERBS = ["jumps over", "looks at", "runs past", "waits for", "sings to", "draws", "remembers"]
OBJECTS = ["the lazy dog", "a red ball", "the river bank", "three apples", "the Zürich train", "a blue kite"]
QUESTIONS = ["what happens", "who moves", "tell me a story", "describe the scene", "what did you see"]


@cache
def corpus(n: int = 300, seed: int = 0) -> tuple[str, ...]:
    """``n`` generated lines of simple English with a few non-ASCII words, numbers and punctuation."""
    rng = random.Random(seed)
    lines = []
    for k in range(n):
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        if k % 3 == 0:
            sentence += f" at {rng.randint(1, 12)} o'clock"
        lines.append(sentence.capitalize() + rng.choice([".", "!", "?", "."]))
        if k % 4 == 0:
            lines.append(f"Q: {rng.choice(QUESTIONS)}?\nA: {lines[-1]}")
    return tuple(lines)


def pairs(n: int, seed: int = 1) -> list[tuple[str, str]]:
    """``n`` (prompt, response) pairs drawn from the corpus."""
    rng = random.Random(seed)
    lines = [line for line in corpus() if not line.startswith("Q:")]
    return [(f"Q: {rng.choice(QUESTIONS)}?\nA:", " " + rng.choice(lines)) for _ in range(n)]


@cache
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE, ~400 entries, ``<|endoftext|>`` as EOS/pad, nothing added before a text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@cache
def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """Unigram with a metaspace pre-tokenizer, ~200 entries, BOS ``<s>`` added before every text."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>"], unk_token="<unk>"
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def teacher_model(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 of width 32 with random weights."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def student_model(vocab_size: int, seed: int = 1) -> LlamaForCausalLM:
    """A 2-layer Llama of width 24 with random weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def end_distributed() -> None:
    """Under torchrun: wait for every rank, then destroy the process group. A rank that exits with the gloo group
    alive can abort in its thread destructors ("terminate called without an active exception", SIGABRT)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()



def recorded_scores(batch, out, name: str) -> dict[str, float]:
    """The alignment scores a :class:`kdviz.Recorder` writes for the diagnostic matrix ``name`` of one step
    (``alignment/<name>/<score>``): the methods leave scoring to the recorder."""
    import tempfile
    from pathlib import Path

    from kdviz.record import Recorder, open_run

    with tempfile.TemporaryDirectory() as tmp:
        with Recorder(Path(tmp) / "run", every=1, samples=0, probes=["alignment", "transport"]) as rec:
            rec.log(0, batch, out)
        scalars = open_run(Path(tmp) / "run").scalars
    prefix = f"alignment/{name}/"
    return {n[len(prefix) :]: float(v) for n, v in zip(scalars["name"], scalars["value"], strict=True) if
            n.startswith(prefix)}


def all_tensors(diagnostics: dict) -> list[torch.Tensor]:
    """Every tensor of a method's diagnostics, plain or inside a typed record."""
    from kdviz.methods.diagnostics import diagnostic_tensors

    return [t for name, value in diagnostics.items() for t in diagnostic_tensors(name, value).values()]
