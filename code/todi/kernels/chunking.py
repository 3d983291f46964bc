"""How many rows a chunk holds: one memory budget for every chunked loop of the package.

A chunk's float32 ``[rows, V]`` temporary stays within ``TEMPORARY_BYTES`` of its device: cache-sized
on a CPU; on a GPU large enough that kernel launches do not dominate. Loops whose temporaries are
cheaper to recompute than to launch (the fused lm_head's matmuls) ask for a multiple of it.
"""

from __future__ import annotations

import math

__all__ = ["FUSED_HEAD_FACTOR", "TEMPORARY_BYTES", "rows_per_chunk"]

TEMPORARY_BYTES = {"cpu": 2 * 1024 * 1024, "cuda": 64 * 1024 * 1024}
# The fused lm_head computes a [chunk, H] × [H, V] matmul per chunk: bigger chunks keep it efficient.
FUSED_HEAD_FACTOR = 4


def rows_per_chunk(n_rows: int, vocab: int, device_type: str = "cpu", *, element_size: int = 4,
                   factor: int = 1, min_chunks: int = 1) -> int:
    """Rows per chunk for ``n_rows`` rows of ``vocab`` entries (at least 1).

    ``element_size``: bytes per entry of the temporaries (float32 at least); ``factor``: multiple of
    the device's budget; ``min_chunks``: split into at least this many chunks (so the temporaries
    stay a fraction of an ``N × V`` buffer even for small inputs).
    """
    budget = TEMPORARY_BYTES.get(device_type, TEMPORARY_BYTES["cuda"]) * factor
    by_bytes = max(1, budget // (max(element_size, 4) * max(vocab, 1)))
    return max(1, min(by_bytes, math.ceil(n_rows / min_chunks)))
