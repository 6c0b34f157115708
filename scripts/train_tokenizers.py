"""Train kdviz's two embedded tokenizers on the training split and save them as Hugging Face directories.

- ``teacher``: byte-level BPE in the GPT-2 style (``Ġ`` marks a leading space, no normaliser) that, like
  the Qwen2 tokenizers, splits numbers into single digits. Special tokens: ``<|endoftext|>`` is EOS and
  BOS (as in GPT-2), ``<|pad|>`` is padding.
- ``student``: Unigram (SentencePiece style, trained on the split's word types) with an NFKC normaliser
  that also collapses runs of spaces, the ``▁`` metaspace marker (prepended to the first word only) and
  newlines as their own pieces. It splits most words into more pieces than the teacher (one-to-many),
  keeps numbers in multi-digit pieces where the teacher has one token per digit (many-to-one) and shares
  many whole-word tokens with it (one-to-one). Special tokens: ``<s>`` BOS, ``</s>`` EOS, ``<pad>``,
  ``<unk>``.

``TEACHER_VOCAB`` and ``STUDENT_VOCAB`` are upper bounds: on this closed-world corpus (about 1.1k
distinct words) the BPE runs out of merges at about 1k tokens and the Unigram settles at about 650 pieces.

Neither tokenizer adds special tokens on its own (no BOS is prepended, no EOS appended): the training
format appends ``tokenizer.eos_token`` to the response explicitly, and nothing uses BOS. Both are fast
tokenizers and return character offsets (``return_offsets_mapping=True``).

Usage: ``python scripts/train_tokenizers.py [--data data] [--out data/tokenizers]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from kdviz.train.evaluate import format_prompt

TEACHER_VOCAB = 4096
STUDENT_VOCAB = 1536
MAX_LENGTH = 128
TEACHER_SPECIAL = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
STUDENT_SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def training_texts(data_dir: Path) -> list[str]:
    """The training split in the training format (prompt template + response), without EOS."""
    with open(data_dir / "train.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [format_prompt(r["prompt"]) + r["response"] for r in rows]


def word_types(texts: list[str]) -> list[str]:
    """The distinct words of ``texts`` as they occur: a word that starts a line keeps its newline.

    The student's Unigram is trained on this word list (each word type once, as SentencePiece is often
    trained on a word list): trained on the raw, very repetitive texts it spends its pieces on the template
    words. A word after a newline is kept as ``"\n" + word`` because the metaspace marker is prepended to
    the first word of a text only, so it is learnt in both forms.
    """
    items: set[str] = set()
    for text in texts:
        for k, line in enumerate(text.split("\n")):
            words = [w for w in line.split(" ") if w]
            if words:
                items.add(words[0] if k == 0 else "\n" + words[0])
                items.update(words[1:])
    return sorted(items)


def teacher_tokenizer(texts: list[str], vocab_size: int = TEACHER_VOCAB) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE (numbers split into digits) trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(dict.fromkeys(TEACHER_SPECIAL.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LENGTH, **TEACHER_SPECIAL)


def student_tokenizer(texts: list[str], vocab_size: int = STUDENT_VOCAB) -> PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram with its own normaliser, trained on ``texts`` (see :func:`word_types`)."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(STUDENT_SPECIAL.values()), unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LENGTH, **STUDENT_SPECIAL)


def build(data_dir: Path, out: Path) -> dict[str, int]:
    """Train and save both tokenizers under ``out/teacher`` and ``out/student``; return their sizes."""
    texts = training_texts(data_dir)
    sizes = {}
    for name, tok in (("teacher", teacher_tokenizer(texts)), ("student", student_tokenizer(word_types(texts)))):
        tok.save_pretrained(out / name)
        sizes[name] = len(tok)
    return sizes


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=root / "data")
    parser.add_argument("--out", type=Path, default=root / "data" / "tokenizers")
    args = parser.parse_args()
    print(build(args.data, args.out))


if __name__ == "__main__":
    main()
