"""The six real LLM tokenizers of ``scripts/fetch_tokenizers.py``, each loaded once per test session.

``make test`` fetches them into ``.cache/tokenizers`` first (``KDVIZ_TOKENIZERS`` points elsewhere). Locally
a missing cache skips the real-tokenizer tests with the command to run; in CI (``CI=true``) it fails them.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KDVIZ_TOKENIZERS") or ROOT / ".cache" / "tokenizers")
NAMES = ("gpt2", "llama2", "mistral", "llama3", "qwen3", "gemma3")
# LM-head rows of the released models (Qwen3 and Gemma-3 pad theirs past the tokenizer).
HEAD_ROWS = {"gpt2": 50257, "llama2": 32000, "mistral": 32000, "llama3": 128256, "qwen3": 151936, "gemma3": 262208}
PAIRS = list(itertools.product(NAMES, NAMES))
DISTINCT_PAIRS = [(a, b) for a, b in itertools.combinations(NAMES, 2)]


@functools.cache
def load(name: str):
    """The fast tokenizer ``name`` from the cache (skip locally / fail in CI when it was not fetched)."""
    from transformers import AutoTokenizer

    path = CACHE / name
    if not (path / "tokenizer.json").exists():
        message = f"real tokenizer {name!r} not found under {CACHE}; run `python scripts/fetch_tokenizers.py`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return AutoTokenizer.from_pretrained(str(path))


# (prompt, response) pairs covering what real tokenizers split differently: code, numbers, CJK, emoji,
# accents, whitespace runs, newlines, tabs, a leading space/newline in the response.
CORPUS = [
    ("2+2=", "4"),
    ("Say hi:", "I 🤗 you"),
    ("Code:\n", "\tx = 1\n    return f(x)  # done\n"),
    ("Translate: ", "中文很好，谢谢！日本語もいい。"),
    ("Accents?", " café, naïve, Ångström, façade"),
    ("Numbers:", " 1234567 + 89.01 = 1234656.01"),
    ("Spaces", "a  b   c\t\td\n\n\ne"),
    ("Emoji:", "👩‍💻🇫🇷✨ ok"),
    ("Q: why?\nA:", "\nBecause."),
    ("Mixed ", "résumé→ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ĠĠ Ċ ä¸Ń"),
]
TEXTS = [p + r for p, r in CORPUS]


def trained_bytes(batch, tokenizer, side: str, b: int) -> bytes:
    """The bytes example ``b`` of ``batch`` trains ``side`` on: its labelled tokens with characters."""
    from kdviz.align.tokens import vocab_bytes

    pieces = vocab_bytes(tokenizer)
    labels = getattr(batch, f"{side}_labels")[b]
    offsets = getattr(batch, f"{side}_offsets")[b]
    kept = [int(t) for t, (s, e) in zip(labels.tolist(), offsets.tolist(), strict=True) if t != -100 and s < e]
    return b"".join(pieces[t] for t in kept)
