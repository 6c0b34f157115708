"""The record file format: length-prefixed, checksummed frames of JSON attributes plus raw arrays.

A stream file (``*.kdr``) is a sequence of frames, appended and never rewritten::

    magic b"KDVR" | header_len u32 | body_len u64 | crc32 u32 | header (UTF-8 JSON) | body (array bytes)

all integers little-endian, the CRC-32 taken over ``header + body``. The header is
``{"attrs": {...}, "arrays": [{"name", "dtype", "shape", "offset"}, ...]}``; every array is stored
C-contiguous at its ``offset`` in the body (8-byte aligned). Only plain numeric and boolean dtypes are
accepted, so decoding is ``numpy.frombuffer`` and nothing is ever unpickled.

A frame is written with one ``write`` call. A reader that meets a frame it cannot verify (a torn tail
after a crash, or a damaged byte) reports it and resumes at the next frame that verifies; a frame that
runs past the end of the file is left in place so a later read can pick it up once the writer finishes
it. Finding the next good frame takes time linear in the file's size whatever its bytes: the checksum
of any candidate frame comes from prefix checksums of the file computed in one pass. A frame whose
checksum verifies but whose header is not a well-formed frame header is reported like a damaged one.
"""

from __future__ import annotations

import functools
import json
import math
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


class FrameError(ValueError):
    """A frame whose bytes verify but whose header does not describe a valid frame."""


def _decode(header: bytes, body: memoryview, offset: int, size: int) -> Frame:
    try:
        meta = json.loads(header)
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, or nesting too deep
        raise FrameError(f"header is not JSON ({type(error).__name__})") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("attrs"), dict) and isinstance(meta.get("arrays"), list)):
        raise FrameError("header lacks an 'attrs' object and an 'arrays' list")
    arrays = {}
    for d in meta["arrays"]:
        name, dtype, shape, start = _descriptor(d)
        count = math.prod(shape)
        if start + count * dtype.itemsize > len(body):
            raise FrameError(f"array {name!r} runs past the frame's body")
        arrays[name] = np.frombuffer(body, dtype=dtype, count=count, offset=start).reshape(shape)
    return Frame(meta["attrs"], arrays, offset, size)


def _descriptor(d: Any) -> tuple[str, np.dtype, list[int], int]:
    """``(name, dtype, shape, offset)`` of one array descriptor, checked."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise FrameError("an array descriptor is not an object with a 'name'")
    name, shape, start = d["name"], d.get("shape"), d.get("offset")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise FrameError(f"array {name!r} has an invalid shape {shape!r}")
    if type(start) is not int or start < 0:
        raise FrameError(f"array {name!r} has an invalid offset {start!r}")
    try:
        dtype = np.dtype(d.get("dtype"))
    except (TypeError, ValueError):
        raise FrameError(f"array {name!r} has an invalid dtype {d.get('dtype')!r}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
        raise FrameError(f"array {name!r} has a forbidden dtype {dtype}")
    return name, dtype, shape, start


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


_POLY = 0xEDB88320  # CRC-32 (zlib), reflected


def _zero_byte(register: int) -> int:
    for _ in range(8):
        register = (register >> 1) ^ (_POLY if register & 1 else 0)
    return register


@functools.cache
def _zero_tables() -> list[tuple[list[int], ...]]:
    """For k = 0..63, byte-sliced tables of the linear map "feed 2**k zero bytes" on a CRC register."""
    columns = [_zero_byte(1 << i) for i in range(32)]  # the map for one zero byte, column by column
    levels = []
    for _ in range(64):
        tables = []
        for part in range(4):
            table = [0] * 256
            for b in range(1, 256):
                low = b & -b
                table[b] = table[b ^ low] ^ columns[8 * part + low.bit_length() - 1]
            tables.append(table)
        levels.append(tuple(tables))
        columns = [_apply(tables, c) for c in columns]  # square: twice as many zero bytes
    return levels


def _apply(tables: tuple[list[int], ...], v: int) -> int:
    return tables[0][v & 255] ^ tables[1][(v >> 8) & 255] ^ tables[2][(v >> 16) & 255] ^ tables[3][v >> 24]


class _RangeChecksums:
    """CRC-32 of any stretch ``data[a:b]`` between chosen offsets, from one pass over ``data``.

    With ``P(x) = crc32(data[:x])``, ``crc32(data[a:b]) = Z(P(a), b - a) ^ P(b)``, where ``Z(r, n)`` feeds
    ``n`` zero bytes to the register ``r`` (a linear map, applied by powers of two).
    """

    def __init__(self, data: bytes, offsets: list[int]):
        self.prefix: dict[int, int] = {}
        view, done, crc = memoryview(data), 0, 0
        for x in sorted(set(offsets)):
            crc = zlib.crc32(view[done:x], crc)
            self.prefix[x], done = crc, x

    def crc(self, a: int, b: int) -> int:
        value, n, levels = self.prefix[a], b - a, _zero_tables()
        for k in range(n.bit_length()):
            if n >> k & 1:
                value = _apply(levels[k], value)
        return value ^ self.prefix[b]


class _Resync:
    """Finds the next frame that verifies after a damaged stretch, in time linear in ``len(data)``."""

    def __init__(self, data: bytes, pos: int):
        self.data = data
        self.candidates: list[tuple[int, int, int]] = []  # (offset, size, crc) of frames that fit
        found = data.find(MAGIC, pos + 1)
        while found >= 0:
            if len(data) - found >= PREFIX.size:
                _, header_len, body_len, crc = PREFIX.unpack_from(data, found)
                size = PREFIX.size + header_len + body_len
                if header_len <= _MAX_HEADER and size <= len(data) - found:
                    self.candidates.append((found, size, crc))
            found = data.find(MAGIC, found + 1)
        offsets = [x for offset, size, _ in self.candidates for x in (offset + PREFIX.size, offset + size)]
        self.checksums = _RangeChecksums(data, offsets)
        self.index = 0

    def next_good(self, pos: int) -> int:
        """Offset of the first frame after ``pos`` that verifies, or -1."""
        while self.index < len(self.candidates):
            offset, size, crc = self.candidates[self.index]
            if offset > pos and self.checksums.crc(offset + PREFIX.size, offset + size) == crc:
                return offset
            self.index += 1
        return -1


def scan(data: bytes, start: int = 0) -> Iterator[Frame | Problem]:
    """Yield every frame from ``start`` on, and a :class:`Problem` for each stretch that does not verify.

    After a damaged stretch the scan resumes at the next frame that verifies. When no verifiable frame
    follows, the scan ends with a problem marked ``incomplete`` if the last frame may still be being
    written (it runs past the end of ``data``), or not when its bytes are simply wrong.
    """
    pos, resync = start, None
    while pos < len(data):
        size, reason, cut = _frame_at(data, pos)
        if reason is None:
            header_len = PREFIX.unpack_from(data, pos)[1]
            header = data[pos + PREFIX.size : pos + PREFIX.size + header_len]
            body = memoryview(data)[pos + PREFIX.size + header_len : pos + size]
            try:
                frame = _decode(header, body, pos, size)
            except FrameError as error:
                yield Problem(pos, f"undecodable frame ({error})", incomplete=False)
            else:
                yield frame
            pos += size
            continue
        resync = resync or _Resync(data, pos)
        following = resync.next_good(pos)
        if following < 0:
            yield Problem(pos, reason, incomplete=cut)
            return
        yield Problem(pos, reason, incomplete=False)
        pos = following
