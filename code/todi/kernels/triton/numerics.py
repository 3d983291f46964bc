"""Float32 constants of the kernel and its one-instruction special functions.

The kernel works in base 2: ``exp x = exp2(x · LOG2E)``, ``ln x = log2 x · LN2``. On a GPU, 1/x and
log2 x are PTX's approximate instructions (``rcp.approx.ftz``, ``lg2.approx.ftz``: one
special-function instruction each); the interpreter, which cannot run inline assembly, uses numpy's.
"""

from __future__ import annotations

import triton
import triton.language as tl

from todi.kernels.triton.config import interpreting

NEG_INF = tl.constexpr(float("-inf"))
TINY = tl.constexpr(1.1754943508222875e-38)  # the smallest normal float32
LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
INT32_MAX = tl.constexpr(2147483647)  # "no column" in argmin reductions
FAST_MATH = tl.constexpr(not interpreting())


@triton.jit
def fast_rcp(x):
    """1/x, one special-function instruction (``/`` adds range checks, not needed here)."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def fast_log2(x):
    """log2 x, one special-function instruction (tl.log2 is libdevice's polynomial)."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)
