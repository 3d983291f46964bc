"""Online log-sum-exp in base 2, and log-probabilities from it.

The state of a (partial) row is ``(m, l)`` with ``m = max x`` and ``l = Σ exp2((x − m)·c)``, where
``c = log2(e)/T`` for a temperature T (``c = log2 e`` untempered). Adding entries with a larger
maximum ``m'`` rescales ``l`` by ``exp2((m − m')·c)``; sums kept alongside ``l`` are rescaled by the
same factor. A row's ``lse = (m·c + log2 l)·ln 2`` (in units of x), and its base-2 log-probabilities
are ``log2 q = (x − m)·c − log2 l``. A maximum of −inf (no finite entry) counts as 0 in every
rescale, so such a row's terms drop out instead of becoming NaN.
"""

from __future__ import annotations

import triton
import triton.language as tl

from todi.kernels.triton.numerics import LN2, NEG_INF
from todi.kernels.triton.tiles import per_thread, thread_max, thread_sum


@triton.jit
def _finite(m):
    """A maximum fit to subtract: −inf (no finite entry yet) becomes 0."""
    return tl.where(m == NEG_INF, 0.0, m)


@triton.jit
def lse_tile(m, l, x, c):
    """Per-thread state (m, l) [TH] updated with tile x: one rescale per thread, one exp2 per entry.

    Returns the new (m, l), the rescale factor [TH] and the tile's terms exp2((x − m) c).
    """
    mx = tl.maximum(m, thread_max(x))
    safe = _finite(mx)
    scale = tl.exp2((m - safe) * c)
    e = tl.exp2((x - per_thread(safe)) * c)
    return mx, l * scale + thread_sum(e), scale, e


@triton.jit
def lse_threads(m, l, c):
    """Per-thread (m, l) [TH] → the row's (m, l), and each thread's rescale factor."""
    mx = tl.max(m, axis=0)
    scale = tl.exp2((m - _finite(mx)) * c)
    return mx, tl.sum(l * scale, axis=0), scale


@triton.jit
def lse_piece(x, c):
    """(m, l) of a small 1D piece, and its terms."""
    mx = tl.max(x, axis=0)
    e = tl.exp2((x - _finite(mx)) * c)
    return mx, tl.sum(e, axis=0), e


@triton.jit
def sum_exp2(z, c):
    """l of a 1D block: Σ exp2((z − max z)·c)."""
    mx = tl.max(z, axis=0)
    return tl.sum(tl.exp2((z - _finite(mx)) * c), axis=0)


@triton.jit
def lse_merge(m1, l1, m2, l2, c):
    """Merge two (m, l); also returns the two rescale factors (for sums kept alongside l)."""
    mx = tl.maximum(m1, m2)
    safe = _finite(mx)
    a = tl.exp2((m1 - safe) * c)
    b = tl.exp2((m2 - safe) * c)
    return mx, l1 * a + l2 * b, a, b


@triton.jit
def lse_parts(m, l):
    """(max, log2 Σ) of a row; (0, 0) for a row without a finite entry (its terms all drop out).

    log2 p is then (x − max)·c − log2 Σ, subtracting before scaling as torch's log_softmax does.
    """
    no_entry = m == NEG_INF
    return tl.where(no_entry, 0.0, m), tl.log2(tl.where(no_entry, 1.0, l))


@triton.jit
def lse_diff(m_a, ll_a, m_b, ll_b, c):
    """lse_a − lse_b in nats, from the rows' (max, log2 Σ) (the maxima subtracted first)."""
    return ((m_a - m_b) * c + (ll_a - ll_b)) * LN2


@triton.jit
def log_probs(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, MASKED: tl.constexpr):
    """Base-2 log-probabilities s2, t2, probabilities q, p and the kept entries, from raw logits.

    Without MASKED the row has no ±inf: only the tile mask matters. With it, +inf is −inf for the
    softmax and entries where either logit is ±inf are not kept (q stays the true softmax there).
    """
    keep = ok
    zs = xs
    zt = xt
    if MASKED:
        keep = ok & (tl.abs(xs) != float("inf")) & (tl.abs(xt) != float("inf"))
        zs = tl.where(xs == float("inf"), NEG_INF, xs)
        zt = tl.where(xt == float("inf"), NEG_INF, xt)
    s2 = tl.fma(zs - m_s, c, -ll_s)
    t2 = tl.fma(zt - m_t, c, -ll_t)
    return s2, t2, tl.exp2(s2), tl.exp2(t2), keep
