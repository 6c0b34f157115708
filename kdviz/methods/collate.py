""":class:`KDCollator`: (prompt, response) pairs -> :class:`~kdviz.methods.KDBatch`, for one tokenizer or two."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

import torch

from kdviz.align.overlap import overlap_matrix
from kdviz.align.tokens import Encoded, check_fast, encode_example, token_strings, unicode_form
from kdviz.methods.base import IGNORE, KDBatch


def _pad(rows: Sequence[Sequence], value, width: int) -> torch.Tensor:
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _pair(example) -> tuple[str, str]:
    if isinstance(example, Mapping):
        try:
            return str(example["prompt"]), str(example["response"])
        except KeyError as err:
            raise KeyError(f"an example mapping needs 'prompt' and 'response' keys, got {list(example)}") from err
    if isinstance(example, Sequence) and not isinstance(example, str) and len(example) == 2:
        return str(example[0]), str(example[1])
    raise TypeError(f"an example must be a (prompt, response) pair or a mapping, got {type(example).__name__}")


class KDCollator:
    """Build a :class:`KDBatch` from (prompt, response) pairs, for one tokenizer or a student/teacher pair.

    ``collator = KDCollator(student_tokenizer, teacher_tokenizer=None, *, max_length=None, add_eos=True,
    chat_template=False)``; ``batch = collator([(prompt, response), ...])`` (mappings with ``"prompt"`` and
    ``"response"`` keys work too, so it can be a DataLoader's ``collate_fn``).

    Both sides train on exactly the same characters: each side tokenises the prompt and the response
    separately (as at generation time), so no token straddles the boundary, and the response as the
    prompt's continuation, so no prefix space (SentencePiece's ``▁``) is added to it. Special-token
    strings in the text (``<|endoftext|>``) are plain text, never control tokens. When one tokenizer
    normalises Unicode (Qwen: NFC), prompt and response are normalised to that form once, before both
    tokenizers, and ``texts`` holds the normalised text. Prompts get the tokenizer's start tokens (BOS) or,
    with ``chat_template=True``, the tokenizer's chat template (a single user turn plus the generation
    prompt; template tokens get empty spans). ``add_eos`` appends the end of a response (trained, no
    characters): the chat template's end-of-turn token with ``chat_template=True`` (``<|eot_id|>``,
    ``<|im_end|>``), else EOS. The alignment is computed on UTF-8 byte offsets.

    ``max_length`` truncates each side to that many tokens. When a side is cut, both sides train up to the
    last character boundary where both end a token within what both still cover: the labels of the
    response tokens past it are set to ``-100``, and so are the end-of-response tokens. Both sides train
    on the same text, and a character cut between its byte pieces is trained on neither side.
    Padding is on the right with the tokenizer's pad id (else EOS, else 0).
    """

    def __init__(
        self,
        student_tokenizer,
        teacher_tokenizer=None,
        *,
        max_length: int | None = None,
        add_eos: bool = True,
        chat_template: bool = False,
    ) -> None:
        check_fast(student_tokenizer, "student_tokenizer")
        if teacher_tokenizer is not None:
            check_fast(teacher_tokenizer, "teacher_tokenizer")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.max_length = max_length
        self.add_eos = add_eos
        self.chat_template = chat_template
        self.unicode_form = unicode_form(student_tokenizer, teacher_tokenizer)

    def _encode(self, tokenizer, prompt: str, response: str) -> Encoded:
        return encode_example(
            tokenizer,
            prompt,
            response,
            add_eos=self.add_eos,
            chat_template=self.chat_template,
            max_length=self.max_length,
        )

    def __call__(self, examples: Sequence) -> KDBatch:
        pairs = [_pair(e) for e in examples]
        if not pairs:
            raise ValueError("cannot collate an empty list of examples")
        if self.unicode_form is not None:
            pairs = [tuple(unicodedata.normalize(self.unicode_form, x) for x in pair) for pair in pairs]
        same = self.teacher_tokenizer is None or self.teacher_tokenizer is self.student_tokenizer
        tok_s = self.student_tokenizer
        tok_t = tok_s if same else self.teacher_tokenizer
        enc_s = [self._encode(tok_s, p, r) for p, r in pairs]
        enc_t = enc_s if same else [self._encode(tok_t, p, r) for p, r in pairs]
        texts = [p + r for p, r in pairs]
        raw = [text.encode() for text in texts]
        limits = [_trained_limit(s, t, b) for s, t, b in zip(enc_s, enc_t, raw, strict=True)]
        labels_s = [_labels(s, limit) for s, limit in zip(enc_s, limits, strict=True)]
        labels_t = labels_s if same else [_labels(t, limit) for t, limit in zip(enc_t, limits, strict=True)]
        student = _side(tok_s, enc_s, labels_s)
        teacher = student if same else _side(tok_t, enc_t, labels_t)
        t_s, t_t = student[0].shape[1], teacher[0].shape[1]
        alignment = torch.zeros(len(pairs), t_s, t_t, dtype=torch.bool)
        for b, (s, t, text) in enumerate(zip(enc_s, enc_t, raw, strict=True)):
            alignment[b, : len(s.ids), : len(t.ids)] = overlap_matrix(s.byte_offsets, t.byte_offsets, text)
        return KDBatch(
            *student,
            *teacher,
            alignment=alignment,
            texts=texts,
            response_starts=[len(p) for p, _ in pairs],
            student_tokens=[token_strings(tok_s, e.ids) for e in enc_s],
            teacher_tokens=[token_strings(tok_t, e.ids) for e in enc_t],
            same_tokenizer=same,
        )


def _trained_limit(a: Encoded, b: Encoded, text: bytes) -> int | None:
    """The byte up to which both sides train (None: no truncation): the last position, within what both
    sides still cover, where both sides end a token and a character ends."""
    if not (a.truncated or b.truncated):
        return None
    ends_a, ends_b = _token_ends(a), _token_ends(b)
    reach = min(max(ends_a, default=0), max(ends_b, default=0))
    common = [e for e in ends_a & ends_b if e <= reach and (e == len(text) or text[e] & 0xC0 != 0x80)]
    return max(common, default=0)


def _token_ends(enc: Encoded) -> set[int]:
    """Where the kept response tokens of a side end (bytes); truncation keeps a prefix of the tokens."""
    return {e for (s, e), r in zip(enc.byte_offsets, enc.response, strict=True) if r and s < e}


def _labels(enc: Encoded, limit: int | None) -> list[int]:
    """Labels of one side: ids on response tokens; -100 past ``limit`` (bytes) and on empty spans when cut."""
    out = []
    for tok, (s, e), is_response in zip(enc.ids, enc.byte_offsets, enc.response, strict=True):
        keep = is_response and (limit is None or (s < e and e <= limit))
        out.append(tok if keep else IGNORE)
    return out


def _side(tokenizer, encs: Sequence[Encoded], labels: Sequence[list[int]]):
    width = max(len(e.ids) for e in encs)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = _pad([e.ids for e in encs], pad_id, width)
    mask = _pad([[1] * len(e.ids) for e in encs], 0, width)
    lab = _pad(labels, IGNORE, width)
    offsets = torch.zeros(len(encs), width, 2, dtype=torch.long)
    for b, e in enumerate(encs):
        spans = torch.tensor(e.offsets, dtype=torch.long).reshape(-1, 2)
        offsets[b, : len(e.ids)] = torch.where(spans[:, :1] < spans[:, 1:], spans, 0)
    return ids, mask, lab, offsets
