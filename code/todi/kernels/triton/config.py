"""Launch settings of the Triton loss kernel: the tile shape, the grid, ``TODI_TRITON_CONFIG``.

A program walks its rows in tiles of ``vectors × threads`` 16-byte vectors (``threads`` = 32 per
warp); the grid holds ``min(rows, SMs × programs_per_sm)`` programs, each taking every
``programs``-th row. Under the interpreter (``TRITON_INTERPRET=1``) small tiles keep the CPU fast.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

THREADS_PER_WARP = 32
INTERPRET_THREADS = 4  # few threads per tile keep the CPU interpreter fast and give rows of several tiles
INTERPRET_PROGRAMS = 4  # the grid's cap off CUDA


@dataclass
class KernelConfig:
    """Launch settings: warps per program (one thread per tile column of 16-byte vectors), vectors
    per thread and tile (J), resident programs per SM (a cap on the grid; rows are shared out over
    the programs), software-pipelining stages, AKL pivots per search pass."""

    num_warps: int = 8
    vectors: int = 2
    programs_per_sm: int = 4
    stages: int = 1
    search_k: int = 4


def _config_from_env() -> KernelConfig:
    """``TODI_TRITON_CONFIG=warps,vectors,programs_per_sm[,stages]`` overrides the defaults."""
    value = os.environ.get("TODI_TRITON_CONFIG")
    if not value:
        return KernelConfig()
    try:
        fields = [int(x) for x in value.split(",")]
        if len(fields) not in (3, 4):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"TODI_TRITON_CONFIG must be 'warps,vectors,programs_per_sm[,stages]', got {value!r}"
        ) from None
    warps, vectors, per_sm = fields[:3]
    stages = fields[3] if len(fields) == 4 else KernelConfig.stages
    if warps & (warps - 1) or vectors & (vectors - 1) or per_sm < 1 or stages < 1:
        raise ValueError(f"TODI_TRITON_CONFIG: warps and vectors must be powers of two, the rest >= 1; got {value!r}")
    return KernelConfig(num_warps=warps, vectors=vectors, programs_per_sm=per_sm, stages=stages)


# Defaults tested and timed on an H100 with bf16 logits. (scripts/bench/bench_loss.py --sweep times the
# others by assigning this module's CONFIG; at 2048 tokens one call is bound by the host's per-call
# overhead, so sweep at 8192.)
CONFIG = _config_from_env()
INTERPRET_CONFIG = KernelConfig(num_warps=1, vectors=2, programs_per_sm=1, stages=1, search_k=4)


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def active_config() -> KernelConfig:
    """The settings of the next launch: CONFIG as it is now (the sweep assigns it), or the interpreter's."""
    return INTERPRET_CONFIG if interpreting() else CONFIG


def threads_per_program(cfg: KernelConfig) -> int:
    """TH: the threads of a program, one per column of a tile."""
    return INTERPRET_THREADS if interpreting() else THREADS_PER_WARP * cfg.num_warps


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs(n_rows: int, device: torch.device, cfg: KernelConfig) -> int:
    """The grid: enough resident programs to fill the GPU, never more than the rows."""
    if device.type != "cuda":
        return max(1, min(n_rows, INTERPRET_PROGRAMS))
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(n_rows, _multiprocessors(index) * cfg.programs_per_sm))
