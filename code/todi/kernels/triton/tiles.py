"""Tiles of a row: the aligned frame, ``[J, TH, VEC]`` tiles, edge pieces, loads, per-thread reductions.

A row of ``n`` entries starting at element ``start`` of its tensor is walked in an *aligned frame*:
frame index ``i`` is column ``i − shift`` with ``shift = start mod VEC``, so that the full 16-byte
vectors of the row are the groups ``[g_lo, g_hi)`` of VEC frame indices. Tile ``j`` holds groups
``j·J·TH + a·TH + t`` (``a < J``, thread ``t < TH``): each of the TH threads holds J vectors, its mask
changes only at vector boundaries (16-byte loads and stores), and reductions over a tile's
``J`` and ``VEC`` axes stay within a thread (``[J, TH, VEC] → [TH]``). The columns before the first
and after the last full vector (fewer than VEC each) form the two *edge pieces*, ``2·VEC`` slots
with per-entry masks.
"""

from __future__ import annotations

import triton
import triton.language as tl

from todi.kernels.triton.numerics import NEG_INF


@triton.jit
def thread_sum(x):
    """[J, TH, VEC] → [TH]: a sum within each thread."""
    return tl.sum(tl.sum(x, axis=2), axis=0)


@triton.jit
def thread_max(x):
    """[J, TH, VEC] → [TH]: a maximum within each thread."""
    return tl.max(tl.max(x, axis=2), axis=0)


@triton.jit
def per_thread(v):
    """[TH] → [1, TH, 1], to combine a per-thread value with a tile."""
    return v[None, :, None]


@triton.jit
def aligned_frame(start, n, VEC: tl.constexpr):
    """The aligned frame of a row of ``n`` entries starting at element ``start`` of its tensor.

    Frame index i is column i − shift; full vectors are groups [g_lo, g_hi) of VEC frame indices.
    Columns [0, head_end) and [tail_start, n) are outside them (fewer than VEC each).
    """
    shift = start % VEC
    g_lo = (shift > 0).to(tl.int64)
    g_hi = (n + shift) // VEC
    head_end = tl.minimum(g_lo * VEC - shift, n)
    tail_start = tl.maximum(head_end, g_hi * VEC - shift)
    return shift, g_lo, g_hi, head_end, tail_start


@triton.jit
def frame_bases(s_start, t_start, shift, ALIGNED_T: tl.constexpr, VEC: tl.constexpr):
    """Where frame index 0 of the student's and the teacher's row lies (the student's is aligned)."""
    s_base = tl.multiple_of(s_start - shift, VEC)
    t_base = t_start - shift
    if ALIGNED_T:
        t_base = tl.multiple_of(t_base, VEC)
    return s_base, t_base


@triton.jit
def tile(j, g_lo, g_hi, J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr):
    """Frame indices ``[J, TH, VEC]`` of tile j and the mask of its full vectors ``[J, TH, 1]``."""
    grp = j * (J * TH) + tl.arange(0, J)[:, None, None] * TH + tl.arange(0, TH)[None, :, None]
    idx = grp * VEC + tl.arange(0, VEC)[None, None, :]
    return idx, (grp >= g_lo) & (grp < g_hi)


@triton.jit
def n_tiles(g_hi, J: tl.constexpr, TH: tl.constexpr):
    """The tiles covering the full vectors [0, g_hi) of a frame."""
    return tl.cdiv(g_hi, J * TH)


@triton.jit
def edges(head_end, tail_start, n, VEC: tl.constexpr):
    """Columns and mask of the two edge pieces: [0, head_end) then [tail_start, n), VEC slots each."""
    e = tl.arange(0, 2 * VEC)
    head = e < VEC
    cols = tl.where(head, e, tail_start + e - VEC)
    return cols, tl.where(head, e < head_end, cols < n)


@triton.jit
def load_f32(ptr, mask):
    """Logits as float32, −inf outside the mask."""
    return tl.load(ptr, mask=mask, other=NEG_INF).to(tl.float32)


@triton.jit
def pad_value(ptr):
    """A finite stand-in for entries outside the row in loops without ±inf masks (see load_tile)."""
    if ptr.dtype.element_ty == tl.float16:
        return -65504.0
    else:
        return -1e30


@triton.jit
def load_tile(ptr, ok, MASKED: tl.constexpr):
    """A tile's logits as float32. With MASKED, entries outside the row are −inf and the loops mask
    every term. Without, they are a very negative finite number (the row's maximum is far above it,
    else the row takes the masked loops): exp2 of it is 0 and every term is 0 without a mask."""
    if MASKED:
        x = tl.load(ptr, mask=ok, other=NEG_INF)
    else:
        x = tl.load(ptr, mask=ok, other=pad_value(ptr))
    return x.to(tl.float32)
