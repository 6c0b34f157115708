"""How many token rows one chunk holds: a byte budget per device, in the dtype chunks are computed in."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every input dtype except float64, which is kept (gradcheck needs it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class ChunkBudget:
    """Bytes of one ``[rows, V]`` intermediate in the compute dtype: at least ``bytes``, and at least ``min_rows``
    rows unless that exceeds ``max_bytes``."""

    bytes: int
    min_rows: int
    max_bytes: int


# On a CPU small chunks are reused from the heap from one chunk to the next (the gradient is then the only memory
# faulted in per call), while intermediates of tens of MiB are mapped and faulted afresh in every chunk; but each
# operation costs a synchronisation of the threads, which on a loaded machine takes longer than the arithmetic of
# a few rows, so thousands of one-row chunks (V = 151936 at 512 KiB) are slow: hence a floor of rows. A GPU wants
# few large chunks (each kernel filling the device, one launch per operation) at a bounded transient memory.
# The floor stops at 4 MiB per intermediate: beyond it, large chunks are faulted afresh and cost more than the
# synchronisations they save (the timings: benchmarks/README.md). The CPU's 512 KiB and floor of at most 32 rows
# keep the rows the demo's vocabularies (V <= 4096) always had, 512 KiB // (4 V): its results stay bit-identical
# (pinned by a test).
CHUNK_BUDGETS = {
    "cpu": ChunkBudget(bytes=512 * 2**10, min_rows=32, max_bytes=4 * 2**20),
    "cuda": ChunkBudget(bytes=128 * 2**20, min_rows=64, max_bytes=2**30),
}


def rows_per_chunk(
    device: torch.device | str, vocab: int, dtype: torch.dtype = torch.float32, cpu_bytes: int | None = None
) -> int:
    """Rows per chunk of ``[rows, V]`` logits on ``device`` under its :data:`CHUNK_BUDGETS` entry, one
    intermediate being ``V`` values of ``compute_dtype(dtype)`` per row. ``cpu_bytes`` replaces the CPU's
    ``bytes`` for a computation that wants larger chunks there. Every device but the CPU is budgeted as
    ``"cuda"``.

    The chunks never change the formula, only how many rows each operation sees. At V <= 4096 on a CPU in
    float32 they are ``512 KiB // (4 V)`` rows, as before this rule existed.
    """
    kind = "cpu" if torch.device(device).type == "cpu" else "cuda"
    budget = CHUNK_BUDGETS[kind]
    least = cpu_bytes if cpu_bytes is not None and kind == "cpu" else budget.bytes
    row_bytes = vocab * compute_dtype(dtype).itemsize
    return max(least // row_bytes, min(budget.min_rows, budget.max_bytes // row_bytes), 1)

