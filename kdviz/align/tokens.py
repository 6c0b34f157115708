"""Tokenise text with character offsets, with special tokens made explicit.

Every token gets a character span ``(start, end)`` into the *raw* text (the prompt followed by the
response, exactly as the user wrote them). A token with ``start == end`` has no characters: BOS/EOS,
chat-template scaffolding (``<|im_start|>user\\n``), padding. Empty spans overlap nothing, so special
tokens never enter the ground-truth alignment and never shift it.

Only fast (Rust-backed) tokenizers report offsets; a slow one raises :class:`TypeError` naming it.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import torch
from tokenizers import normalizers, pre_tokenizers


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

    ``ids``, ``offsets`` (characters of ``prompt + response``) and ``byte_offsets`` (UTF-8 bytes of the same
    text) have one entry per token; byte pieces of one character (``<0xF0>``, byte-level ``ðŁ``) share the
    character's span in ``offsets`` and each get the bytes they stand for in ``byte_offsets``.
    ``response`` is True on the response tokens (including an appended end-of-turn/EOS), False on the
    prompt and its special tokens; ``truncated`` says whether ``max_length`` cut the example.
    """

    ids: list[int]
    offsets: list[tuple[int, int]]
    response: list[bool]
    truncated: bool = False
    byte_offsets: list[tuple[int, int]] = field(default_factory=list)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2, Llama-3, Qwen): one printable character per byte, char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


BYTE_ALPHABET = _byte_alphabet()


def _is_byte_level(tokenizer) -> bool:
    return "ByteLevel" in repr(tokenizer.backend_tokenizer.decoder)


def piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The bytes a vocabulary piece stands for: byte-level alphabet decoded, ``<0xNN>`` -> that byte, ``▁`` -> space."""
    if byte_level:
        try:
            return bytes(BYTE_ALPHABET[c] for c in piece)
        except KeyError:
            return piece.encode()
    byte = _BYTE_PIECE.fullmatch(piece)
    if byte:
        return bytes([int(byte[1], 16)])
    return piece.replace("\u2581", " ").encode()


_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# _plain_text changes a tokenizer's settings for the duration of one encode: one encode at a time, so that
# kdviz encoding the same tokenizer from several threads never sees another call's settings.
_SETTINGS_LOCK = threading.RLock()


def vocab_bytes(tokenizer) -> list[bytes]:
    """The bytes of every token id of a fast tokenizer (added tokens: the text they match), cached per tokenizer."""
    check_fast(tokenizer)
    cached = _PIECES.get(tokenizer)
    if cached is not None and len(cached) == len(tokenizer):
        return cached
    byte_level = _is_byte_level(tokenizer)
    added = tokenizer.backend_tokenizer.get_added_tokens_decoder()
    vocab = tokenizer.get_vocab()
    out = [b""] * max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    for piece, index in vocab.items():
        token = added.get(index)
        # Added tokens are raw text, except SentencePiece pieces re-added as plain tokens (Gemma's "▁▁▁▁").
        plain = token is None or not (token.special or byte_level)
        out[index] = piece_bytes(piece, byte_level) if plain else token.content.encode()
    _PIECES[tokenizer] = out
    return out


def _byte_starts(text: str) -> list[int]:
    """``starts[c]``: the UTF-8 byte where character ``c`` of ``text`` begins (``starts[len(text)]`` = byte length)."""
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode()))
    return starts


def byte_spans(text: str, offsets, pieces: list[bytes]) -> list[tuple[int, int]]:
    """Byte spans of tokens with character ``offsets`` into ``text`` and decoded bytes ``pieces``.

    Each span is first the bytes of its characters. Consecutive tokens whose character spans overlap (the
    byte pieces of one character, or a piece ending inside the next character) form a run; when the run's
    pieces add up to exactly its bytes (no normaliser changed the text), each token gets the bytes it stands
    for, in order. Empty spans stay empty.
    """
    starts = _byte_starts(text)
    spans = [(starts[s], starts[e]) if s < e else (0, 0) for s, e in offsets]
    filled = [k for k, (s, e) in enumerate(offsets) if s < e]
    at = 0
    while at < len(filled):
        run, end = [filled[at]], offsets[filled[at]][1]
        while at + len(run) < len(filled) and offsets[filled[at + len(run)]][0] < end:
            run.append(filled[at + len(run)])
            end = max(end, offsets[run[-1]][1])
        at += len(run)
        first, last = spans[run[0]][0], starts[end]
        if len(run) > 1 and sum(len(pieces[k]) for k in run) == last - first:
            for k in run:
                spans[k] = (first, first + len(pieces[k]))
                first = spans[k][1]
    return spans


def _set(saved: list, obj, name: str, value) -> None:
    saved.append((obj, name, getattr(obj, name)))
    setattr(obj, name, value)


@contextmanager
def _plain_text(tokenizer, continuation: bool):
    """The backend tokenizer, set for the duration to encode special-token strings as text and, when
    ``continuation``, to add no prefix space (SentencePiece's prepended ``▁``, byte-level ``add_prefix_space``)."""
    backend = tokenizer.backend_tokenizer
    saved: list = []
    with _SETTINGS_LOCK:
        try:
            _set(saved, backend, "encode_special_tokens", True)
            if continuation:
                norm = backend.normalizer
                if isinstance(norm, normalizers.Prepend):
                    _set(saved, backend, "normalizer", normalizers.Sequence([]))
                elif isinstance(norm, normalizers.Sequence) and any(isinstance(n, normalizers.Prepend) for n in norm):
                    kept = [n for n in norm if not isinstance(n, normalizers.Prepend)]
                    _set(saved, backend, "normalizer", normalizers.Sequence(kept))
                pre = backend.pre_tokenizer
                for part in pre if isinstance(pre, pre_tokenizers.Sequence) else [pre]:
                    if isinstance(part, pre_tokenizers.Metaspace) and part.prepend_scheme != "never":
                        _set(saved, part, "prepend_scheme", "never")
                    elif isinstance(part, pre_tokenizers.ByteLevel) and part.add_prefix_space:
                        _set(saved, part, "add_prefix_space", False)
            yield backend
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)


def encode_text(tokenizer, text: str, *, continuation: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of ``text`` without any special token added.

    Special-token strings inside ``text`` (``<|endoftext|>``, ``<|im_start|>``) are encoded as the plain
    text they are, never as control tokens. ``continuation=True`` encodes ``text`` as the continuation of an
    earlier text: no prefix space is added, so the tokens stand for exactly the characters of ``text``.

    A token standing only for whitespace that the pre-tokenizer *added* (SentencePiece's ``▁`` prepended to
    a text that starts with a letter) gets an empty span: tokenizers report it over the first character,
    which belongs to the next token. A marker that stands for a real space keeps its span.
    """
    with _plain_text(tokenizer, continuation) as backend:
        enc = backend.encode(text, add_special_tokens=False)
    ids, offsets = list(enc.ids), [(int(s), int(e)) for s, e in enc.offsets]
    pieces = vocab_bytes(tokenizer)
    for k, index in enumerate(ids):
        start, end = offsets[k]
        piece = pieces[index] if index < len(pieces) else b""
        if piece and not piece.strip() and text[start:end].strip():
            offsets[k] = (start, start)
    return ids, offsets


def unicode_form(*tokenizers) -> str | None:
    """The Unicode normal form one of ``tokenizers`` applies to its input (``"NFC"`` for Qwen), else None."""
    for tokenizer in tokenizers:
        normalizer = repr(tokenizer.backend_tokenizer.normalizer) if tokenizer is not None else ""
        for form in ("NFKC", "NFC"):
            if f"{form}()" in normalizer:
                return form
    return None


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


_SLOT = "KDVIZ-SLOT-7f3a"  # stands for the message text while a chat template is rendered


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _with_specials(tokenizer, text: str) -> list[int]:
    """Ids of chat-template scaffolding: here special-token strings *are* control tokens."""
    return list(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids) if text else []


def _templated_prompt(tokenizer, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Prompt rendered with the chat template; scaffolding gets empty spans, the prompt's tokens their offsets.

    The template is rendered around a placeholder to find its scaffolding, which is tokenised with its
    control tokens; the prompt is tokenised as plain text in between. Templates that trim the message
    (Llama-3, Gemma-3) get the trimmed prompt, its offsets still into the untrimmed one.
    """
    before, slot, after = _render(tokenizer, [{"role": "user", "content": _SLOT}], True).partition(_SLOT)
    if not slot:
        raise ValueError("the chat template drops the user message, so the prompt's characters cannot be located")
    rendered = _render(tokenizer, [{"role": "user", "content": prompt}], True)
    stripped = prompt.strip()
    if rendered == before + prompt + after:
        content, at = prompt, 0
    elif rendered == before + stripped + after:
        content, at = stripped, len(prompt) - len(prompt.lstrip())
    else:
        raise ValueError(
            "the chat template changes the prompt text beyond trimming whitespace, so its characters cannot be "
            f"located; rendered template: {rendered[:200]!r}"
        )
    head, tail = _with_specials(tokenizer, before), _with_specials(tokenizer, after)
    ids, offsets = encode_text(tokenizer, content, continuation=bool(before))
    offsets = [(s + at, e + at) if s < e else (0, 0) for s, e in offsets]
    return head + ids + tail, [(0, 0)] * len(head) + offsets + [(0, 0)] * len(tail)


def end_of_turn(tokenizer, chat_template: bool = False) -> int:
    """The id that ends a response: the chat template's end-of-turn token (``<|eot_id|>``, ``<|im_end|>``,
    ``<end_of_turn>``) when ``chat_template``, else ``tokenizer.eos_token_id``."""
    if chat_template:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SLOT}]
        after = _render(tokenizer, messages, False).partition(_SLOT)[2]
        ids = _with_specials(tokenizer, after)
        special = set(tokenizer.all_special_ids) | set(tokenizer.backend_tokenizer.get_added_tokens_decoder())
        if ids and ids[0] in special:
            return ids[0]
    if tokenizer.eos_token_id is None:
        raise ValueError("add_eos=True but the tokenizer has no eos_token; set one or pass add_eos=False")
    return tokenizer.eos_token_id


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
    tokenised as the prompt's continuation (no prefix space: its tokens stand for exactly its characters),
    its offsets shifted by ``len(prompt)``, and followed by :func:`end_of_turn` when ``add_eos``.
    A token can therefore never straddle the prompt/response boundary. Special-token strings in the prompt
    or the response are plain text.
    """
    if chat_template:
        p_ids, p_off = _templated_prompt(tokenizer, prompt)
    else:
        p_ids, p_off = encode_text(tokenizer, prompt)
        lead = list(start_tokens(tokenizer))
        p_ids, p_off = lead + p_ids, [(0, 0)] * len(lead) + p_off
    r_ids, r_off = encode_text(tokenizer, response, continuation=True)
    r_off = [(s + len(prompt), e + len(prompt)) if s < e else (0, 0) for s, e in r_off]
    if add_eos:
        r_ids, r_off = r_ids + [end_of_turn(tokenizer, chat_template)], r_off + [(0, 0)]
    ids, offsets = p_ids + r_ids, p_off + r_off
    text, pieces = prompt + response, vocab_bytes(tokenizer)
    spans = byte_spans(text, offsets, [pieces[i] if i < len(pieces) else b"" for i in ids])
    response_flags = [False] * len(p_ids) + [True] * len(r_ids)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, offsets, response_flags = ids[:max_length], offsets[:max_length], response_flags[:max_length]
        spans = spans[:max_length]
    return Encoded(ids, offsets, response_flags, truncated, spans)


def token_table(text: str, tokenizers: Mapping[str, object]) -> pd.DataFrame:
    """``text`` tokenised by each named tokenizer, one row a token, for
    :func:`kdviz.viz.tokenizer_comparison`: ``tokenizer`` (its name), ``position``, ``token`` (the vocabulary
    string), ``start``, ``end`` (character offsets into ``text``, as :func:`encode_text`)."""
    if not isinstance(tokenizers, Mapping) or not tokenizers:
        raise TypeError(f"tokenizers: expected a non-empty mapping name -> tokenizer, got {type(tokenizers).__name__}")
    rows = []
    for name, tokenizer in tokenizers.items():
        ids, offsets = encode_text(tokenizer, text)
        for position, (token, (start, end)) in enumerate(zip(token_strings(tokenizer, ids), offsets, strict=True)):
            rows.append({"tokenizer": name, "position": position, "token": token, "start": start, "end": end})
    return pd.DataFrame(rows, columns=["tokenizer", "position", "token", "start", "end"])


def token_strings(tokenizer, ids) -> list[str]:
    """The vocabulary strings of ``ids`` (``Ġworld``, ``▁world``), for display."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return list(tokenizer.convert_ids_to_tokens(list(ids)))
