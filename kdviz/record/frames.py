"""The record file format: length-prefixed, checksummed frames of JSON attributes plus raw arrays.

A stream file (``*.kdr``) is a sequence of frames, appended and never rewritten::

    magic b"KDVR" | header_len u32 | body_len u64 | crc32 u32 | header (UTF-8 JSON) | body (array bytes)

all integers little-endian, the CRC-32 taken over ``header + body``. The header is
``{"attrs": {...}, "arrays": [{"name", "dtype", "shape", "offset"}, ...]}``; every array is stored
C-contiguous at its ``offset`` in the body (8-byte aligned). Only plain numeric and boolean dtypes are
accepted, so decoding is ``numpy.frombuffer`` and nothing is ever unpickled.

A frame is written with one ``write`` call. A reader that meets a frame it cannot verify (a torn tail
after a crash, or a damaged byte) reports it and, when the frame's length is intact, skips it; a frame
that runs past the end of the file is left in place so a later read can pick it up once the writer
finishes it.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"KDVR"
PREFIX = struct.Struct("<4sIQI")
ALLOWED_KINDS = frozenset("fiub")  # float, signed, unsigned, bool: never object, never structured
_ALIGN = 8
_MAX_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its JSON attributes, its arrays and where it sits in the file."""

    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]
    offset: int
    size: int


@dataclass(frozen=True)
class Problem:
    """A frame that could not be read: where, why, and whether it may still be completed by a writer."""

    offset: int
    reason: str
    incomplete: bool


def encode(attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Serialise one frame. Arrays must have a numeric or boolean dtype."""
    descriptors, chunks, offset = [], [], 0
    for name, value in (arrays or {}).items():
        array = np.ascontiguousarray(value)
        if array.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"array {name!r} has dtype {array.dtype}; only numeric and bool are allowed")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        shape = list(array.shape)
        descriptors.append({"name": name, "dtype": array.dtype.str, "shape": shape, "offset": offset})
        data = array.tobytes()
        pad = -len(data) % _ALIGN
        chunks.append(data + b"\0" * pad)
        offset += len(data) + pad
    header = json.dumps({"attrs": attrs, "arrays": descriptors}, separators=(",", ":")).encode()
    body = b"".join(chunks)
    return PREFIX.pack(MAGIC, len(header), len(body), zlib.crc32(header + body)) + header + body


def _decode(header: bytes, body: memoryview, offset: int, size: int) -> Frame:
    meta = json.loads(header)
    arrays = {}
    for d in meta["arrays"]:
        dtype = np.dtype(d["dtype"])
        if dtype.kind not in ALLOWED_KINDS:
            raise ValueError(f"array {d['name']!r} has a forbidden dtype {dtype}")
        count = int(np.prod(d["shape"], dtype=np.int64))
        flat = np.frombuffer(body, dtype=dtype, count=count, offset=d["offset"])
        arrays[d["name"]] = flat.reshape(d["shape"])
    return Frame(meta["attrs"], arrays, offset, size)


def _frame_at(data: bytes, pos: int) -> tuple[int, str | None, bool]:
    """Size of the frame at ``pos``, why it does not verify (None when it does), and whether it is
    merely cut short (a writer may still be completing it)."""
    remaining = len(data) - pos
    if remaining < PREFIX.size:
        cut = MAGIC.startswith(data[pos : pos + len(MAGIC)])
        return 0, f"{remaining} trailing bytes, shorter than a frame prefix", cut
    magic, header_len, body_len, crc = PREFIX.unpack_from(data, pos)
    size = PREFIX.size + header_len + body_len
    if magic != MAGIC or header_len > _MAX_HEADER:
        return size, "bad frame prefix", False
    if size > remaining:
        return size, f"frame of {size} bytes but only {remaining} remain", True
    if zlib.crc32(memoryview(data)[pos + PREFIX.size : pos + size]) != crc:
        return size, "checksum mismatch", False
    return size, None, False


def _next_good(data: bytes, pos: int) -> int:
    """Offset of the next frame after ``pos`` that verifies, or -1."""
    found = data.find(MAGIC, pos + 1)
    while found >= 0 and _frame_at(data, found)[1] is not None:
        found = data.find(MAGIC, found + 1)
    return found


def scan(data: bytes, start: int = 0) -> Iterator[Frame | Problem]:
    """Yield every frame from ``start`` on, and a :class:`Problem` for each stretch that does not verify.

    After a damaged stretch the scan resumes at the next frame that verifies. When no verifiable frame
    follows, the scan ends with a problem marked ``incomplete`` if the last frame may still be being
    written (it runs past the end of ``data``), or not when its bytes are simply wrong.
    """
    pos = start
    while pos < len(data):
        size, reason, cut = _frame_at(data, pos)
        if reason is None:
            header_len = PREFIX.unpack_from(data, pos)[1]
            header = data[pos + PREFIX.size : pos + PREFIX.size + header_len]
            body = memoryview(data)[pos + PREFIX.size + header_len : pos + size]
            try:
                yield _decode(header, body, pos, size)
            except (ValueError, KeyError, TypeError) as error:
                yield Problem(pos, f"undecodable frame ({error})", incomplete=False)
            pos += size
            continue
        following = _next_good(data, pos)
        if following < 0:
            yield Problem(pos, reason, incomplete=cut)
            return
        yield Problem(pos, reason, incomplete=False)
        pos = following
