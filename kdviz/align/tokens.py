"""Tokenise text with character offsets, with special tokens made explicit.

Every token gets a character span ``(start, end)`` into the *raw* text (the prompt followed by the
response, exactly as the user wrote them). A token with ``start == end`` has no characters: BOS/EOS,
chat-template scaffolding (``<|im_start|>user\\n``), padding. Empty spans overlap nothing, so special
tokens never enter the ground-truth alignment and never shift it.

Only fast (Rust-backed) tokenizers report offsets; a slow one raises :class:`TypeError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def check_fast(tokenizer, role: str = "tokenizer") -> None:
    """Raise ``TypeError`` unless ``tokenizer`` is a fast Hugging Face tokenizer (it reports offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TypeError(
            f"{role} {name!r} ({type(tokenizer).__name__}) is not a fast tokenizer, so it cannot report "
            "character offsets. Load it with AutoTokenizer.from_pretrained(..., use_fast=True) or wrap a "
            "`tokenizers.Tokenizer` in transformers.PreTrainedTokenizerFast(tokenizer_object=...)."
        )


@dataclass
class Encoded:
    """One tokenised (prompt, response) example.

    ``ids`` and ``offsets`` (``[T, 2]``, characters of ``prompt + response``) have one entry per token;
    ``response`` is True on the response tokens (including an appended EOS), False on the prompt and its
    special tokens; ``truncated`` says whether ``max_length`` cut the example.
    """

    ids: list[int]
    offsets: list[tuple[int, int]]
    response: list[bool]
    truncated: bool = False


WORD_MARKERS = "\u2581\u0120"  # SentencePiece's "▁" and byte-level BPE's "Ġ"


def encode_text(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of ``text`` without any special token added.

    A token made only of a word marker that the pre-tokenizer *added* (SentencePiece's ``▁`` prepended to a
    text that starts with a letter) gets an empty span: tokenizers report it over the first character,
    which belongs to the next token. A marker that stands for a real space keeps its span.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    for k, token in enumerate(tokenizer.convert_ids_to_tokens(ids)):
        start, end = offsets[k]
        if token and not token.strip(WORD_MARKERS) and text[start:end].strip():
            offsets[k] = (start, start)
    return ids, offsets


def start_tokens(tokenizer) -> tuple[int, ...]:
    """The special ids a tokenizer puts *before* a text by default (BOS for Llama, none for GPT-2).

    Trailing ones (an EOS some post-processors append) are not included: inside a (prompt, response)
    sequence they would sit in the middle.
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return tuple(full[:k])
    return ()


def _templated_prompt(tokenizer, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Prompt rendered with the chat template; template tokens get empty spans, content tokens raw offsets."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    at = rendered.rfind(prompt)
    if at < 0:
        raise ValueError(
            "the chat template does not contain the prompt text verbatim, so its characters cannot be "
            f"located; rendered template: {rendered[:200]!r}"
        )
    ids, offsets = encode_text(tokenizer, rendered)
    spans = []
    for s, e in offsets:
        s, e = max(s, at), min(e, at + len(prompt))
        spans.append((s - at, e - at) if s < e else (0, 0))
    return ids, spans


def encode_example(
    tokenizer,
    prompt: str,
    response: str,
    *,
    add_eos: bool = True,
    chat_template: bool = False,
    max_length: int | None = None,
) -> Encoded:
    """Tokenise a (prompt, response) pair so that both parts keep their own token boundaries.

    The prompt is tokenised alone (as at generation time) and preceded by the tokenizer's start tokens
    (BOS) -- or rendered with the tokenizer's chat template when ``chat_template=True``; the response is
    tokenised alone, its offsets shifted by ``len(prompt)``, and followed by EOS when ``add_eos``.
    A token can therefore never straddle the prompt/response boundary.
    """
    if chat_template:
        p_ids, p_off = _templated_prompt(tokenizer, prompt)
    else:
        p_ids, p_off = encode_text(tokenizer, prompt)
        lead = list(start_tokens(tokenizer))
        p_ids, p_off = lead + p_ids, [(0, 0)] * len(lead) + p_off
    r_ids, r_off = encode_text(tokenizer, response)
    r_off = [(s + len(prompt), e + len(prompt)) for s, e in r_off]
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token; set one or pass add_eos=False")
        r_ids, r_off = r_ids + [tokenizer.eos_token_id], r_off + [(0, 0)]
    ids, offsets = p_ids + r_ids, p_off + r_off
    response_flags = [False] * len(p_ids) + [True] * len(r_ids)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, offsets, response_flags = ids[:max_length], offsets[:max_length], response_flags[:max_length]
    return Encoded(ids, offsets, response_flags, truncated)


def token_strings(tokenizer, ids) -> list[str]:
    """The vocabulary strings of ``ids`` (``Ġworld``, ``▁world``), for display."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return list(tokenizer.convert_ids_to_tokens(list(ids)))
