"""``compare_tokenizers``: the pre-flight report to read before distilling across two tokenizers."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from kdviz.align.overlap import KINDS, kind_counts, overlap_matrix, regions
from kdviz.align.tokens import (
    byte_spans,
    check_fast,
    encode_text,
    end_of_turn,
    start_tokens,
    unicode_form,
    vocab_bytes,
)

MARKERS = ("Ġ", "▁")
SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass
class TokenizerReport:
    """What :func:`compare_tokenizers` found.

    Regions are computed on UTF-8 byte offsets; ``start``/``end`` in ``longest`` are bytes, and tokens are
    shown as the text they cover (a byte piece of a character as its byte, ``'\\xf0'``).

    ``table``: one row per text -- characters, token counts of both sides and the count of each region
    kind (``one-to-one``, ``one-to-many``: B splits what A keeps whole, ``many-to-one``: B merges,
    ``many-to-many``, ``unmatched``) and ``one_to_one_rate`` (share of regions that are one-to-one).
    ``longest``: the largest distinct regions that are not one-to-one, with their text, both tokenisations
    (first occurrence) and ``count``, how many times that text formed such a region.
    ``summary``: vocabulary sizes (and padded LM-head rows when ``vocab_sizes`` was given), identical
    token strings, special-token differences, ``special_strings`` (texts holding a special token's string
    of either tokenizer, which kdviz encodes as plain text), ``unicode_form`` (the normal form texts were
    put in, when a tokenizer normalises), overall region counts and one-to-one rate.
    """

    table: pd.DataFrame
    longest: pd.DataFrame
    summary: dict

    def __repr__(self) -> str:
        lines = ["TokenizerReport"]
        for key, value in self.summary.items():
            if isinstance(value, list) and value:
                lines.append(f"  {key}:")
                lines.extend(f"    - {item}" for item in value)
            else:
                lines.append(f"  {key}: {value}")
        if len(self.longest):
            lines.append("  longest merged spans:")
            for row in self.longest.head(5).itertuples():
                lines.append(f"    {row.text!r}: A {row.tokens_a} | B {row.tokens_b}")
        return "\n".join(lines)


def _normalise_marker(token: str) -> str:
    return " " + token[1:] if token[:1] in MARKERS else token


def _specials(tokenizer) -> dict[str, str | None]:
    return {role: getattr(tokenizer, role, None) for role in SPECIAL_ROLES}


def _special_differences(tok_a, tok_b) -> list[str]:
    out = []
    sa, sb = _specials(tok_a), _specials(tok_b)
    for role in SPECIAL_ROLES:
        if sa[role] != sb[role]:
            out.append(f"{role}: A {sa[role]!r} vs B {sb[role]!r}")
    lead_a = tok_a.convert_ids_to_tokens(list(start_tokens(tok_a)))
    lead_b = tok_b.convert_ids_to_tokens(list(start_tokens(tok_b)))
    if lead_a != lead_b:
        out.append(f"tokens added before a text: A {lead_a} vs B {lead_b}")
    turn_a, turn_b = _chat_turn(tok_a), _chat_turn(tok_b)
    if turn_a != turn_b:
        out.append(f"chat template (a user turn, then the generation prompt): A {turn_a!r} vs B {turn_b!r}")
    end_a, end_b = _end_of_turn(tok_a), _end_of_turn(tok_b)
    if end_a != end_b:
        out.append(f"end of a response with chat_template=True: A {end_a!r} vs B {end_b!r}")
    return out


def _chat_turn(tokenizer) -> str | None:
    """The chat template rendered around a user message ``{prompt}``, or None without a template."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    messages = [{"role": "user", "content": "{prompt}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _end_of_turn(tokenizer) -> str | None:
    if getattr(tokenizer, "chat_template", None) is None:
        return tokenizer.eos_token
    return tokenizer.convert_ids_to_tokens(end_of_turn(tokenizer, chat_template=True))


def _vocab_summary(tok_a, tok_b, vocab_sizes) -> dict:
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    shared = len(va.keys() & vb.keys())
    na = {_normalise_marker(t) for t in va}
    nb = {_normalise_marker(t) for t in vb}
    out = {
        "vocab_a": len(tok_a),
        "vocab_b": len(tok_b),
        "identical_tokens": shared,
        "identical_share_a": round(shared / max(len(va), 1), 4),
        "identical_share_b": round(shared / max(len(vb), 1), 4),
        "identical_after_markers": len(na & nb),
    }
    if vocab_sizes is not None:
        rows_a, rows_b = vocab_sizes
        out.update(
            model_rows_a=rows_a,
            model_rows_b=rows_b,
            padded_rows_a=None if rows_a is None else rows_a - len(tok_a),
            padded_rows_b=None if rows_b is None else rows_b - len(tok_b),
        )
    return out


def _show(raw: bytes, span) -> str:
    return raw[span[0] : span[1]].decode("utf-8", errors="backslashreplace")


def _encode_bytes(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    ids, offsets = encode_text(tokenizer, text)
    pieces = vocab_bytes(tokenizer)
    return ids, byte_spans(text, offsets, [pieces[i] for i in ids])


def _special_strings(tokenizers, texts: Sequence[str]) -> list[str]:
    found = set()
    for tokenizer in tokenizers:
        specials = {t.content for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values() if t.special}
        specials |= {t for t in tokenizer.all_special_tokens if t}
        found |= {t for t in specials if len(t) > 1 and any(t in text for text in texts)}
    return sorted(found)


def compare_tokenizers(
    tokenizer_a,
    tokenizer_b,
    texts: Sequence[str],
    *,
    vocab_sizes: tuple[int | None, int | None] | None = None,
    top: int = 10,
) -> TokenizerReport:
    """Compare how two fast tokenizers split ``texts``; A plays the student, B the teacher.

    ``vocab_sizes``: the two models' LM-head row counts (``model.get_output_embeddings().weight.shape[0]``),
    to report padded rows -- the classic ``151936 vs 152064`` trap. ``top``: how many of the longest
    non-one-to-one regions to list.
    """
    check_fast(tokenizer_a, "tokenizer_a")
    check_fast(tokenizer_b, "tokenizer_b")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    form = unicode_form(tokenizer_a, tokenizer_b)
    if form is not None:
        texts = [unicodedata.normalize(form, text) for text in texts]
    rows, merged = [], []
    for k, text in enumerate(texts):
        raw = text.encode()
        ids_a, off_a = _encode_bytes(tokenizer_a, text)
        ids_b, off_b = _encode_bytes(tokenizer_b, text)
        found = regions(off_a, off_b, raw, overlap_matrix(off_a, off_b, raw))
        counts = kind_counts(found)
        rows.append(
            {
                "text": k,
                "chars": len(text),
                "tokens_a": len(ids_a),
                "tokens_b": len(ids_b),
                **counts,
                "one_to_one_rate": counts["one-to-one"] / max(len(found), 1),
            }
        )
        for r in found:
            if r.kind in ("one-to-one", "unmatched"):
                continue
            merged.append(
                {
                    "text_index": k,
                    "kind": r.kind,
                    "start": r.start,
                    "end": r.end,
                    "text": _show(raw, (r.start, r.end)),
                    "tokens_a": [_show(raw, off_a[i]) for i in r.rows],
                    "tokens_b": [_show(raw, off_b[j]) for j in r.cols],
                    "n_tokens": len(r.rows) + len(r.cols),
                }
            )
    table = pd.DataFrame(rows, columns=["text", "chars", "tokens_a", "tokens_b", *KINDS, "one_to_one_rate"])
    longest = pd.DataFrame(
        merged, columns=["text_index", "kind", "start", "end", "text", "tokens_a", "tokens_b", "n_tokens"]
    )
    longest["count"] = longest.groupby("text")["text"].transform("size")
    longest = longest.drop_duplicates("text").sort_values("n_tokens", ascending=False, kind="stable").head(top)
    totals = {kind: int(table[kind].sum()) for kind in KINDS}
    n_regions = sum(totals.values())
    summary = {
        **_vocab_summary(tokenizer_a, tokenizer_b, vocab_sizes),
        "special_differences": _special_differences(tokenizer_a, tokenizer_b),
        "special_strings": _special_strings((tokenizer_a, tokenizer_b), texts),
        "unicode_form": form,
        "texts": len(table),
        "tokens_a": int(table["tokens_a"].sum()),
        "tokens_b": int(table["tokens_b"].sum()),
        "regions": totals,
        "one_to_one_rate": round(totals["one-to-one"] / max(n_regions, 1), 4),
    }
    return TokenizerReport(table=table, longest=longest.reset_index(drop=True), summary=summary)
