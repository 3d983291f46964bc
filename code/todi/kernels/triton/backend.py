"""The Triton backend: one program per row, float32 math in base-2 units, bf16/fp16/fp32 inputs.

Each pass is written to spend few instructions per entry (ToDi: about 65 per entry over its three
passes, 8 of them exp2/rcp, against about 166 for a straightforward version, which made it bound by
instruction issue; these loops are bound by memory bandwidth at 8192 × 50,257 on an H100):

* tiles are ``[J, TH, VEC]``: each of the TH threads holds J 16-byte vectors, and every running
  quantity is kept per thread (``[TH]``), so the reductions inside the loops never leave the thread;
* log-probabilities are kept in base 2 (``s2 = log2 q``): ``q = exp2(s2)`` is one instruction,
  and the online log-sum-exp rescales once per tile and thread, not once per entry;
* rows without a ±inf entry (found in the first pass) take loops without the ±inf masks; the
  others are recomputed with them (the reference's semantics: +inf is −inf, entries where either
  logit is ±inf do not count);
* forward and reverse KL need no second pass: Σ p (x_t − x_s) and Σ q (x_s − x_t) are summed online
  during the log-sum-exp (rescaled with it), and Σ_i ∂f/∂s_i is −1 and KL + 1 analytically.

Per active row (a row with a divergence or a cross-entropy term):

1. one pass over both rows: online log-sum-exps of the tempered student and teacher logits, the
   untempered student's for the cross-entropy (shared when the temperature is 1) and its argmax,
   the online sums of forward/reverse KL, and whether the row holds a ±inf;
2. except for forward/reverse KL on rows without ±inf: one pass for the divergence and
   ``G = Σ_i g_i`` (``g = ∂f/∂s`` per entry, see :mod:`todi.kernels.chunked`), and ToDi's Σ p α;
3. one pass writing the gradient ``kd_w (g_j − q_j G)/T + ce_w (softmax_j − onehot_j)`` in the
   student's dtype.

Memory access: a row of an odd vocabulary (50,257) starts anywhere within a 16-byte vector, so each
row is walked in an *aligned frame*: the full vectors inside the row are loaded by tiles whose mask
only changes at vector boundaries (16-byte loads and stores), and the at most 2 × (VEC − 1) entries
before the first and after the last full vector form a small "edge" piece with per-entry masks.

AKL needs the tail of the teacher distribution (the smallest probabilities whose ascending
cumulative mass stays ≤ α, see :func:`todi.loss.divergence.akl_head_weight`): instead of sorting, a
K-ary search over the float32 bit patterns of p (monotone for p ≥ 0) finds the smallest value
``v*`` at which the cumulative mass Σ_{p_i ≤ v} p_i exceeds α, reading only the teacher row, with
per-thread mass accumulators. Entries below ``v*`` are tail; of the entries equal to ``v*`` (ties,
common with bf16 teachers), the first ``⌊(α − mass below v*) / v*⌋`` in vocabulary order are tail,
which is what the reference's stable sort and cumulative sum give, up to float32 rounding of the
cumulative mass exactly at the boundary.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from todi.kernels.rows import BackendOutput, LossInputs, LossSpec

__all__ = ["BRANCHES", "CONFIG", "KernelConfig", "branch_code", "forward", "scale_rows_"]

NEG_INF = tl.constexpr(float("-inf"))
TINY = tl.constexpr(1.1754943508222875e-38)  # the smallest normal float32
LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
# PTX's approximate reciprocal and log2 on a GPU (inline assembly); the interpreter uses numpy's.
FAST_MATH = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


# The kernel's objective branches (compile-time codes; registry entries name them, see BRANCHES).
CE_ONLY = tl.constexpr(0)
FORWARD_KL = tl.constexpr(1)
REVERSE_KL = tl.constexpr(2)
JS_DIVERGENCE = tl.constexpr(3)
TVD = tl.constexpr(4)
SKEWED_FORWARD_KL = tl.constexpr(5)
SKEWED_REVERSE_KL = tl.constexpr(6)
ADAPTIVE_KL = tl.constexpr(7)
TODI = tl.constexpr(8)
ZERO = tl.constexpr(9)
GENERALIZED_JSD = tl.constexpr(10)
AB_DIVERGENCE = tl.constexpr(11)
BRANCHES = {
    "forward_kl": FORWARD_KL, "reverse_kl": REVERSE_KL, "js_divergence": JS_DIVERGENCE, "tvd": TVD,
    "skewed_forward_kl": SKEWED_FORWARD_KL, "skewed_reverse_kl": SKEWED_REVERSE_KL, "adaptive_kl": ADAPTIVE_KL,
    "todi": TODI, "zero": ZERO, "generalized_jsd": GENERALIZED_JSD, "ab_divergence": AB_DIVERGENCE,
}
# Diagnostics a branch computes in the kernel (name of the statistic; see the objectives' records).
BRANCH_DIAGNOSTICS = {"todi": "todi_alpha"}
# Forward and reverse KL are summed during the first pass (no second pass).
ONLINE_NONE = tl.constexpr(0)
ONLINE_FKL = tl.constexpr(1)
ONLINE_RKL = tl.constexpr(2)
MAX_PARAMS = 2  # p0, p1: an objective's parameters in registry order


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
# others; at 2048 tokens one call is bound by the host's per-call overhead, so sweep at 8192.)
CONFIG = _config_from_env()
# Few threads per tile keep the CPU interpreter (tests) fast and give rows of several tiles.
INTERPRET_CONFIG = KernelConfig(num_warps=1, vectors=2, programs_per_sm=1, stages=1, search_k=4)
INTERPRET_THREADS = 4


# ---------------------------------------------------------------------------------------------
# Tiles: [J, TH, VEC], per-thread reductions
# ---------------------------------------------------------------------------------------------

@triton.jit
def _rsum(x):
    """[J, TH, VEC] → [TH]: a sum within each thread."""
    return tl.sum(tl.sum(x, axis=2), axis=0)


@triton.jit
def _rmax(x):
    return tl.max(tl.max(x, axis=2), axis=0)


@triton.jit
def _bc(v):
    """[TH] → [1, TH, 1], to combine a per-thread value with a tile."""
    return v[None, :, None]


@triton.jit
def _frame(start, n, VEC: tl.constexpr):
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
def _tile(j, g_lo, g_hi, J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr):
    """Frame indices ``[J, TH, VEC]`` of tile j and the mask of its full vectors ``[J, TH, 1]``."""
    grp = j * (J * TH) + tl.arange(0, J)[:, None, None] * TH + tl.arange(0, TH)[None, :, None]
    idx = grp * VEC + tl.arange(0, VEC)[None, None, :]
    return idx, (grp >= g_lo) & (grp < g_hi)


@triton.jit
def _n_tiles(g_hi, J: tl.constexpr, TH: tl.constexpr):
    return tl.cdiv(g_hi, J * TH)


@triton.jit
def _edges(head_end, tail_start, n, VEC: tl.constexpr):
    """Columns and mask of the two edge pieces: [0, head_end) then [tail_start, n), VEC slots each."""
    e = tl.arange(0, 2 * VEC)
    head = e < VEC
    cols = tl.where(head, e, tail_start + e - VEC)
    return cols, tl.where(head, e < head_end, cols < n)


@triton.jit
def _load(ptr, mask):
    return tl.load(ptr, mask=mask, other=NEG_INF).to(tl.float32)


@triton.jit
def _pad(ptr):
    """A finite stand-in for entries outside the row in loops without ±inf masks (see _tload)."""
    if ptr.dtype.element_ty == tl.float16:
        return -65504.0
    else:
        return -1e30


@triton.jit
def _tload(ptr, ok, MASKED: tl.constexpr):
    """A tile's logits as float32. With MASKED, entries outside the row are −inf and the loops mask
    every term. Without, they are a very negative finite number (the row's maximum is far above it,
    else the row takes the masked loops): exp2 of it is 0 and every term is 0 without a mask."""
    if MASKED:
        x = tl.load(ptr, mask=ok, other=NEG_INF)
    else:
        x = tl.load(ptr, mask=ok, other=_pad(ptr))
    return x.to(tl.float32)


@triton.jit
def _rcp(x):
    """1/x, one special-function instruction (``/`` adds range checks, not needed here)."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def _log2(x):
    """log2 x, one special-function instruction (tl.log2 is libdevice's polynomial)."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _bases(s_start, t_start, shift, ALIGNED_T: tl.constexpr, VEC: tl.constexpr):
    s_base = tl.multiple_of(s_start - shift, VEC)
    t_base = t_start - shift
    if ALIGNED_T:
        t_base = tl.multiple_of(t_base, VEC)
    return s_base, t_base


# ---------------------------------------------------------------------------------------------
# Online log-sum-exp, base 2: (m, l) with l = Σ exp2((x − m) c), c = log2(e) / T
# ---------------------------------------------------------------------------------------------

@triton.jit
def _safe(m):
    return tl.where(m == NEG_INF, 0.0, m)


@triton.jit
def _lse_tile(m, l, x, c):
    """Per-thread state (m, l) [TH] updated with tile x: one rescale per thread, one exp2 per entry.

    Returns the new (m, l), the rescale factor [TH] and the tile's terms exp2((x − m) c).
    """
    mx = tl.maximum(m, _rmax(x))
    safe = _safe(mx)
    scale = tl.exp2((m - safe) * c)
    e = tl.exp2((x - _bc(safe)) * c)
    return mx, l * scale + _rsum(e), scale, e


@triton.jit
def _lse_lanes(m, l, c):
    """Per-thread (m, l) [TH] → the row's (m, l), and each thread's rescale factor."""
    mx = tl.max(m, axis=0)
    scale = tl.exp2((m - _safe(mx)) * c)
    return mx, tl.sum(l * scale, axis=0), scale


@triton.jit
def _lse_piece(x, c):
    """(m, l) of a small 1D piece, and its terms."""
    mx = tl.max(x, axis=0)
    e = tl.exp2((x - _safe(mx)) * c)
    return mx, tl.sum(e, axis=0), e


@triton.jit
def _merge(m1, l1, m2, l2, c):
    """Merge two (m, l); also returns the two rescale factors (for sums kept alongside l)."""
    mx = tl.maximum(m1, m2)
    safe = _safe(mx)
    a = tl.exp2((m1 - safe) * c)
    b = tl.exp2((m2 - safe) * c)
    return mx, l1 * a + l2 * b, a, b


@triton.jit
def _lse_parts(m, l):
    """(max, log2 Σ) of a row; (0, 0) for a row without a finite entry (its terms all drop out).

    log2 p is then (x − max)·c − log2 Σ, subtracting before scaling as torch's log_softmax does.
    """
    no_entry = m == NEG_INF
    return tl.where(no_entry, 0.0, m), tl.log2(tl.where(no_entry, 1.0, l))


@triton.jit
def _lse_diff(m_a, ll_a, m_b, ll_b, c):
    """lse_a − lse_b in nats, from the rows' (max, log2 Σ) (the maxima subtracted first)."""
    return ((m_a - m_b) * c + (ll_a - ll_b)) * LN2


# ---------------------------------------------------------------------------------------------
# Per-entry terms
# ---------------------------------------------------------------------------------------------

@triton.jit
def _logp(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, MASKED: tl.constexpr):
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


@triton.jit
def _f_scale(OBJ: tl.constexpr):
    """The factor turning the summed f of :func:`_entry` into nats (base-2 logs inside f)."""
    if OBJ == TVD:
        return 1.0
    elif OBJ == AB_DIVERGENCE:
        return 1.0
    else:
        return LN2


@triton.jit
def _entry(s2, t2, q, p, w, p0, p1, OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr):
    """f (times _f_scale), g = ∂f/∂s and p·α (ToDi) per entry (derivations in
    todi.objectives.builtin; here s = s2·ln2, t = t2·ln2). ``p0``, ``p1``: the objective's
    parameters in the order of its registry entry."""
    zero = tl.zeros_like(s2)
    ap = zero
    if OBJ == FORWARD_KL:  # f = p (t − s), g = −p
        f = p * (t2 - s2)
        g = -p
    elif OBJ == REVERSE_KL:  # f = q (s − t), g = q (s − t + 1)
        d2 = s2 - t2
        f = q * d2
        g = q * (d2 * LN2 + 1.0)
    elif OBJ == JS_DIVERGENCE:  # m = (p + q)/2
        lm2 = _log2(tl.maximum(0.5 * (p + q), TINY))
        gs = s2 - lm2
        f = 0.5 * (p * (t2 - lm2) + q * gs)
        g = (0.5 * LN2) * q * gs
    elif OBJ == TVD:
        diff = q - p
        f = 0.5 * tl.abs(diff)
        g = tl.where(diff > 0, 0.5 * q, tl.where(diff < 0, -0.5 * q, 0.0))
    elif OBJ == SKEWED_FORWARD_KL:  # 0 < λ = p0 < 1: M = λp + (1−λ)q
        mix = tl.maximum(p0 * p + (1.0 - p0) * q, TINY)
        f = p * (t2 - _log2(mix))
        g = -(1.0 - p0) * p * (q * _rcp(mix))
    elif OBJ == SKEWED_REVERSE_KL:  # 0 < λ = p0 < 1: M = λq + (1−λ)p
        mix = tl.maximum(p0 * q + (1.0 - p0) * p, TINY)
        gs = s2 - _log2(mix)
        f = q * gs
        g = q * (gs * LN2 + 1.0 - p0 * (q * _rcp(mix)))
    elif OBJ == ADAPTIVE_KL:  # with the row's head weight w (gradient only; sums in _akl_piece)
        d = (s2 - t2) * LN2
        f = zero
        g = -w * p + (1.0 - w) * q * (d + 1.0)
    elif OBJ == TODI:  # d = t − s, α = σ(βd), β = p0
        dd = t2 - s2
        if TODI_BETA_ONE:  # α = p / (p + q): d(αp − (1−α)q) = d(p − q); one reciprocal for g
            r = _rcp(tl.maximum(p + q, TINY))
            f = dd * (p - q)
            g = r * (q * q * (1.0 - dd * LN2) - p * p)
            ap = p * p * r
        else:
            alpha = _rcp(1.0 + tl.exp2(-p0 * dd))
            ap = alpha * p
            omq = (1.0 - alpha) * q
            f = dd * (ap - omq)
            g = omq * (1.0 - dd * LN2) - ap
    elif OBJ == GENERALIZED_JSD:  # 0 < β = p0 < 1: m = βp + (1−β)q; g = (1−β) q (s − log m)
        lm2 = _log2(tl.maximum(p0 * p + (1.0 - p0) * q, TINY))
        gs = s2 - lm2
        f = p0 * p * (t2 - lm2) + (1.0 - p0) * q * gs
        g = ((1.0 - p0) * LN2) * q * gs
    elif OBJ == AB_DIVERGENCE:  # α = p0 > 0, β = p1 > 0 (f in nats: _f_scale is 1)
        pa = tl.exp2(p0 * t2)
        qb = tl.exp2(p1 * s2)
        qa = tl.exp2(p0 * s2)
        f = (pa * qb - (p0 / (p0 + p1)) * pa * tl.exp2(p1 * t2) - (p1 / (p0 + p1)) * qa * qb) * (-1.0 / (p0 * p1))
        g = qb * (qa - pa) * (1.0 / p0)
    else:  # ZERO: a skewed KL at λ = 1 compares a distribution with itself
        f = zero
        g = zero
    return f, g, ap


# ---------------------------------------------------------------------------------------------
# Pass 1: log-sum-exps, online KL sums, argmax
# ---------------------------------------------------------------------------------------------

@triton.jit
def _pass1(
    S, T, s_start, t_start, n, c,
    WITH_KD: tl.constexpr, WITH_CE: tl.constexpr, CE_OWN: tl.constexpr, ONLINE: tl.constexpr,
    MASKED: tl.constexpr, ALIGNED_T: tl.constexpr,
    J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Over columns [0, n): (m, l) of the tempered student and teacher (c = log2(e)/T) and of the
    raw student, the raw student's max and first argmax, the largest |logit| of either row (+inf
    when the row holds a ±inf), and with ONLINE = 1 (2) the sum Σ exp2((x_t − m_t)c)(x_t − x_s)
    (Σ exp2((x_s − m_s)c)(x_s − x_t)) scaled like the teacher's (student's) l.

    MASKED: +inf counts as −inf in the tempered log-sum-exps (for rows with ±inf; no ONLINE sum).
    """
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base, t_base = _bases(s_start, t_start, shift, ALIGNED_T, VEC)
    m_s = tl.full([TH], NEG_INF, tl.float32)
    l_s = tl.zeros([TH], tl.float32)
    m_t = tl.full([TH], NEG_INF, tl.float32)
    l_t = tl.zeros([TH], tl.float32)
    h = tl.zeros([TH], tl.float32)
    big = tl.zeros([TH], tl.float32)
    m_1 = tl.full([TH], NEG_INF, tl.float32)
    l_1 = tl.zeros([TH], tl.float32)
    best = tl.full([TH], NEG_INF, tl.float32)
    best_i = tl.zeros([TH], tl.int32)
    for j in tl.range(0, _n_tiles(g_hi, J, TH), num_stages=STAGES):
        idx, ok = _tile(j, g_lo, g_hi, J, TH, VEC)
        xs = _tload(S + s_base + idx, ok, MASKED)
        if WITH_CE:
            b = _rmax(xs)
            # the first column of the thread's tile maximum (the tile's columns grow with j)
            cand = tl.min(tl.min(tl.where(xs == _bc(b), idx, 2147483647), axis=2), axis=0)
            better = b > best
            best_i = tl.where(better, (cand - shift).to(tl.int32), best_i)
            best = tl.maximum(best, b)
            if CE_OWN:
                m_1, l_1, _, _ = _lse_tile(m_1, l_1, xs, LOG2E)
        if WITH_KD:
            xt = _tload(T + t_base + idx, ok, MASKED)
            zs = xs
            zt = xt
            if MASKED:
                zs = tl.where(xs == float("inf"), NEG_INF, xs)
                zt = tl.where(xt == float("inf"), NEG_INF, xt)
            else:  # the pad is finite: +inf here means a ±inf logit
                big = tl.maximum(big, _rmax(tl.maximum(tl.abs(xs), tl.abs(xt))))
            m_s, l_s, sc_s, e_s = _lse_tile(m_s, l_s, zs, c)
            m_t, l_t, sc_t, e_t = _lse_tile(m_t, l_t, zt, c)
            # (pads: e is 0, or 1 while a thread has seen only pads, and x_t − x_s is 0)
            if ONLINE == ONLINE_FKL:
                h = h * sc_t + _rsum(e_t * (xt - xs))
            elif ONLINE == ONLINE_RKL:
                h = h * sc_s + _rsum(e_s * (xs - xt))
    ms, ls, sc_s = _lse_lanes(m_s, l_s, c)
    mt, lt, sc_t = _lse_lanes(m_t, l_t, c)
    m1, l1, _ = _lse_lanes(m_1, l_1, LOG2E)
    hh = 0.0
    if ONLINE == ONLINE_FKL:
        hh = tl.sum(h * sc_t, axis=0)
    elif ONLINE == ONLINE_RKL:
        hh = tl.sum(h * sc_s, axis=0)
    top = tl.max(best, axis=0)
    top_i = tl.min(tl.where(best == top, best_i, 2147483647), axis=0)
    big_row = tl.max(big, axis=0)
    # the edge entries, with block reductions (once per row)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    xs = _load(S + s_start + cols, ok)
    if WITH_CE:
        e_top = tl.max(xs, axis=0)
        e_i = tl.min(tl.where(xs == e_top, cols.to(tl.int32), 2147483647), axis=0)
        top_i = tl.where(e_top > top, e_i, tl.where(e_top == top, tl.minimum(top_i, e_i), top_i))
        top = tl.maximum(top, e_top)
        if CE_OWN:
            pm, pl, _ = _lse_piece(xs, LOG2E)
            m1, l1, _, _ = _merge(m1, l1, pm, pl, LOG2E)
    if WITH_KD:
        xt = _load(T + t_start + cols, ok)
        zs = xs
        zt = xt
        if MASKED:
            zs = tl.where(xs == float("inf"), NEG_INF, xs)
            zt = tl.where(xt == float("inf"), NEG_INF, xt)
        else:
            big_row = tl.maximum(big_row, tl.max(tl.where(ok, tl.maximum(tl.abs(xs), tl.abs(xt)), 0.0), axis=0))
        pm, pl, pe_s = _lse_piece(zs, c)
        ms, ls, a_s, b_s = _merge(ms, ls, pm, pl, c)
        pm, pl, pe_t = _lse_piece(zt, c)
        mt, lt, a_t, b_t = _merge(mt, lt, pm, pl, c)
        if ONLINE == ONLINE_FKL:
            hh = hh * a_t + b_t * tl.sum(tl.where(ok, pe_t * (xt - xs), 0.0), axis=0)
        elif ONLINE == ONLINE_RKL:
            hh = hh * a_s + b_s * tl.sum(tl.where(ok, pe_s * (xs - xt), 0.0), axis=0)
    return ms, ls, mt, lt, hh, m1, l1, top, top_i, big_row


@triton.jit
def _sum_exp2(z, c):
    mx = tl.max(z, axis=0)
    return tl.sum(tl.exp2((z - _safe(mx)) * c), axis=0)


@triton.jit
def _ce_tail_pass1(S, s_start, V, VS, m1, l1, top, top_i, BLOCK: tl.constexpr):
    """Columns [V, VS) of the cross-entropy (a student vocabulary padded beyond the teacher's)."""
    for off in range(V, VS, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        xs = _load(S + s_start + cols, cols < VS)
        b_top = tl.max(xs, axis=0)
        b_i = tl.min(tl.where(xs == b_top, cols, 2147483647), axis=0)
        top_i = tl.where(b_top > top, b_i, top_i)
        top = tl.maximum(top, b_top)
        m1, l1, _, _ = _merge(m1, l1, b_top, _sum_exp2(xs, LOG2E), LOG2E)
    return m1, l1, top_i


# ---------------------------------------------------------------------------------------------
# Pass 2: the divergence, G = Σ g and Σ p α
# ---------------------------------------------------------------------------------------------

@triton.jit
def _pass2(
    S, T, s_start, t_start, n, c, m_s, ll_s, m_t, ll_t, p0, p1,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, WANT_DIAG: tl.constexpr, MASKED: tl.constexpr,
    ALIGNED_T: tl.constexpr, J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base, t_base = _bases(s_start, t_start, shift, ALIGNED_T, VEC)
    acc_f = tl.zeros([TH], tl.float32)
    acc_g = tl.zeros([TH], tl.float32)
    acc_a = tl.zeros([TH], tl.float32)
    for j in tl.range(0, _n_tiles(g_hi, J, TH), num_stages=STAGES):
        idx, ok = _tile(j, g_lo, g_hi, J, TH, VEC)
        s2, t2, q, p, keep = _logp(
            _tload(S + s_base + idx, ok, MASKED), _tload(T + t_base + idx, ok, MASKED), ok, c, m_s, ll_s, m_t, ll_t,
            MASKED,
        )
        f, g, ap = _entry(s2, t2, q, p, 0.0, p0, p1, OBJ, TODI_BETA_ONE)
        if MASKED:
            f = tl.where(keep, f, 0.0)
            g = tl.where(keep, g, 0.0)
            ap = tl.where(keep, ap, 0.0)
        acc_f += _rsum(f)  # without MASKED the pads' terms are 0
        acc_g += _rsum(g)
        if WANT_DIAG:
            acc_a += _rsum(ap)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    s2, t2, q, p, keep = _logp(
        _load(S + s_start + cols, ok), _load(T + t_start + cols, ok), ok, c, m_s, ll_s, m_t, ll_t, MASKED
    )
    f, g, ap = _entry(s2, t2, q, p, 0.0, p0, p1, OBJ, TODI_BETA_ONE)
    value = (tl.sum(acc_f, axis=0) + tl.sum(tl.where(keep, f, 0.0), axis=0)) * _f_scale(OBJ)
    G = tl.sum(acc_g, axis=0) + tl.sum(tl.where(keep, g, 0.0), axis=0)
    alpha = tl.sum(acc_a, axis=0) + tl.sum(tl.where(keep, ap, 0.0), axis=0)
    return value, G, alpha


# ---------------------------------------------------------------------------------------------
# AKL: the tail search and the head weight
# ---------------------------------------------------------------------------------------------

@triton.jit
def _teacher_p(xt, xs, ok, c, m_t, ll_t, MASKED: tl.constexpr):
    """The teacher's p (0 off the kept entries and on pads), with exactly the operations _logp uses."""
    zt = xt
    if MASKED:
        zt = tl.where(xt == float("inf"), NEG_INF, xt)
    p = tl.exp2(tl.fma(zt - m_t, c, -ll_t))
    if MASKED:
        p = tl.where(ok & (tl.abs(xt) != float("inf")) & (tl.abs(xs) != float("inf")), p, 0.0)
    return p


@triton.jit
def _akl_mass(
    S, T, s_start, t_start, n, c, m_t, ll_t, pts,
    MASKED: tl.constexpr, ALIGNED_T: tl.constexpr, TH: tl.constexpr, K: tl.constexpr,
    VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """For each of the K points (float32 bit patterns, [K]): Σ of the p whose bits are ≤ it."""
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base, t_base = _bases(s_start, t_start, shift, ALIGNED_T, VEC)
    acc = tl.zeros([K, TH], tl.float32)
    piv = pts[:, None, None]
    for j in tl.range(0, _n_tiles(g_hi, 1, TH), num_stages=STAGES):
        idx, ok = _tile(j, g_lo, g_hi, 1, TH, VEC)
        xt = _tload(T + t_base + idx, ok, MASKED)
        xs = xt
        if MASKED:
            xs = _tload(S + s_base + idx, ok, MASKED)
        p = _teacher_p(xt, xs, ok, c, m_t, ll_t, MASKED)  # [1, TH, VEC]
        bits = p.to(tl.int32, bitcast=True)
        acc += tl.sum(tl.where(bits <= piv, p, 0.0), axis=2)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    p = _teacher_p(_load(T + t_start + cols, ok), _load(S + s_start + cols, ok), ok, c, m_t, ll_t, True)
    bits = p.to(tl.int32, bitcast=True)
    edge = tl.sum(tl.where(bits[None, :] <= pts[:, None], p[None, :], 0.0), axis=1)
    return tl.sum(acc, axis=1) + edge


@triton.jit
def _akl_piece(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, v_star, ties_in_tail, ties_seen, MASKED: tl.constexpr):
    """FKL, RKL, their Σ g, the gaps |p − q| in the tail and in total, for one 1D piece in column order."""
    s2, t2, q, p, keep = _logp(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, MASKED)
    p = tl.where(keep, p, 0.0)  # bit-identical to _teacher_p on kept entries
    q = tl.where(keep, q, 0.0)
    d2 = s2 - t2
    gap = tl.abs(p - q)
    tie = keep & (p == v_star)
    rank = ties_seen + tl.cumsum(tie.to(tl.int32), axis=0)
    tail = (p < v_star) | (tie & (rank <= ties_in_tail))
    return (tl.sum(tl.where(keep, -p * d2, 0.0), axis=0), tl.sum(tl.where(keep, q * d2, 0.0), axis=0),
            tl.sum(-p, axis=0), tl.sum(tl.where(keep, q * (d2 * LN2 + 1.0), 0.0), axis=0),
            tl.sum(tl.where(tail, gap, 0.0), axis=0), tl.sum(gap, axis=0),
            ties_seen + tl.sum(tie.to(tl.int32), axis=0))


@triton.jit
def _akl_weight(
    S, T, s_start, t_start, n, c, m_s, ll_s, m_t, ll_t, akl_alpha,
    MASKED: tl.constexpr, ALIGNED_T: tl.constexpr, TH: tl.constexpr, K: tl.constexpr,
    VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """(AKL value, G, head weight w) of a row (see the module docstring for the tail search)."""
    kk = tl.arange(0, K)
    lo = tl.full([], -1, tl.int32)
    # above every p: the largest p is exp2(-ll_t) (the max entry's t2 is exactly -ll_t)
    hi = tl.exp2(-ll_t).to(tl.int32, bitcast=True) + 1
    s_lo = tl.zeros([], tl.float32)
    while hi - lo > 1:
        span = (hi - lo).to(tl.int64)
        pts = (lo + (span * (kk + 1).to(tl.int64)) // (K + 1)).to(tl.int32)
        pts = tl.maximum(pts, lo + 1)
        acc = _akl_mass(S, T, s_start, t_start, n, c, m_t, ll_t, pts, MASKED, ALIGNED_T, TH, K, VEC, STAGES)
        le = acc <= akl_alpha
        new_lo = tl.max(tl.where(le, pts, lo), axis=0)
        s_lo = tl.max(tl.where(le, acc, s_lo), axis=0)
        hi = tl.min(tl.where(le, hi, pts), axis=0)
        lo = new_lo
    # v* (above every p when the whole mass is ≤ α: everything is tail) and how many entries
    # tied at v* still fit under α, taken in vocabulary order.
    v_star = hi.to(tl.float32, bitcast=True)
    ties_in_tail = tl.minimum(tl.maximum((akl_alpha - s_lo) / v_star, 0.0), 2147483000.0).to(tl.int32)

    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base, t_base = _bases(s_start, t_start, shift, ALIGNED_T, VEC)
    # column order for the tie ranks: the head edge, the interior vectors, the tail edge
    head = tl.arange(0, VEC)
    head_ok = head < head_end
    fkl, rkl, gf, gr, g_tail, g_total, ties = _akl_piece(
        _load(S + s_start + head, head_ok), _load(T + t_start + head, head_ok), head_ok, c, m_s, ll_s, m_t, ll_t,
        v_star, ties_in_tail, 0, MASKED,
    )
    for j in range(0, tl.cdiv(g_hi * VEC, TH * VEC)):
        idx = j * (TH * VEC) + tl.arange(0, TH * VEC)
        grp = idx // VEC
        ok = (grp >= g_lo) & (grp < g_hi)
        a, b, c2, d, e_tail, e_total, ties = _akl_piece(
            _load(S + s_base + idx, ok), _load(T + t_base + idx, ok), ok, c, m_s, ll_s, m_t, ll_t,
            v_star, ties_in_tail, ties, MASKED,
        )
        fkl += a
        rkl += b
        gf += c2
        gr += d
        g_tail += e_tail
        g_total += e_total
    tail = tail_start + tl.arange(0, VEC)
    tail_ok = tail < n
    a, b, c2, d, e_tail, e_total, ties = _akl_piece(
        _load(S + s_start + tail, tail_ok), _load(T + t_start + tail, tail_ok), tail_ok, c, m_s, ll_s, m_t, ll_t,
        v_star, ties_in_tail, ties, MASKED,
    )
    fkl = (fkl + a) * LN2
    rkl = (rkl + b) * LN2
    gf += c2
    gr += d
    g_tail += e_tail
    g_total += e_total
    w = tl.where(g_total > 0, (g_total - g_tail) / tl.maximum(g_total, TINY), 0.5)
    return w * fkl + (1.0 - w) * rkl, w * gf + (1.0 - w) * gr, w


# ---------------------------------------------------------------------------------------------
# Pass 3: the gradient
# ---------------------------------------------------------------------------------------------

@triton.jit
def _grad_tile(
    xs, xt, ok, cols, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl, kd_coef, ce_coef, p0, p1,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, WITH_KD: tl.constexpr, CE_GRAD: tl.constexpr,
    CE_SHARED: tl.constexpr, MASKED: tl.constexpr,
):
    val = tl.zeros_like(xs)
    if WITH_KD:
        s2, t2, q, p, keep = _logp(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, MASKED)
        _, g, _ = _entry(s2, t2, q, p, w_akl, p0, p1, OBJ, TODI_BETA_ONE)
        if MASKED:
            g = tl.where(keep, g, 0.0)
        val = kd_coef * g - (kd_coef * G) * q
        if CE_GRAD:
            if CE_SHARED:  # the untempered softmax is q
                soft = q
            else:
                soft = tl.exp2(tl.fma(xs - m_1, LOG2E, -ll_1))
            val += ce_coef * (soft - tl.where(cols == label, 1.0, 0.0))
    elif CE_GRAD:
        soft = tl.exp2(tl.fma(xs - m_1, LOG2E, -ll_1))
        val = ce_coef * (soft - tl.where(cols == label, 1.0, 0.0))
    return val


@triton.jit
def _pass3(
    S, T, GRAD, s_start, t_start, g_start, n, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl,
    kd_coef, ce_coef, p0, p1,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, WITH_KD: tl.constexpr, CE_GRAD: tl.constexpr,
    CE_SHARED: tl.constexpr, MASKED: tl.constexpr, ALIGNED_T: tl.constexpr, ALIGNED_G: tl.constexpr,
    J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Writes the gradient of columns [0, n) (zeros when neither term is on)."""
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base, t_base = _bases(s_start, t_start, shift, ALIGNED_T, VEC)
    g_base = g_start - shift
    if ALIGNED_G:
        g_base = tl.multiple_of(g_base, VEC)
    out_ty = GRAD.dtype.element_ty
    for j in tl.range(0, _n_tiles(g_hi, J, TH), num_stages=STAGES):
        idx, ok = _tile(j, g_lo, g_hi, J, TH, VEC)
        xs = tl.zeros([J, TH, VEC], tl.float32)
        if WITH_KD or CE_GRAD:
            xs = _tload(S + s_base + idx, ok, MASKED)
        xt = xs
        if WITH_KD:
            xt = _tload(T + t_base + idx, ok, MASKED)
        val = _grad_tile(xs, xt, ok, idx - shift, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl, kd_coef,
                         ce_coef, p0, p1, OBJ, TODI_BETA_ONE, WITH_KD, CE_GRAD, CE_SHARED, MASKED)
        tl.store(GRAD + g_base + idx, val.to(out_ty), mask=ok)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    xs = _load(S + s_start + cols, ok)
    xt = xs
    if WITH_KD:
        xt = _load(T + t_start + cols, ok)
    val = _grad_tile(xs, xt, ok, cols, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl, kd_coef, ce_coef,
                     p0, p1, OBJ, TODI_BETA_ONE, WITH_KD, CE_GRAD, CE_SHARED, True)
    tl.store(GRAD + g_start + cols, val.to(out_ty), mask=ok)


@triton.jit
def _ce_tail_pass3(S, GRAD, s_start, g_start, V, VS, label, m_1, ll_1, ce_coef, CE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """The cross-entropy gradient of columns [V, VS) (a student vocabulary padded beyond the teacher's)."""
    for off in range(V, VS, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        ok = cols < VS
        val = tl.zeros([BLOCK], tl.float32)
        if CE_GRAD:
            soft = tl.exp2(tl.fma(_load(S + s_start + cols, ok) - m_1, LOG2E, -ll_1))
            val = ce_coef * (soft - tl.where(cols == label, 1.0, 0.0))
        tl.store(GRAD + g_start + cols, val.to(GRAD.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------

@triton.jit
def _loss_kernel(
    S, T, LABELS, TEMP, KDW, KDMASK, GRAD, OUT_KD, OUT_CE, OUT_CORRECT, OUT_DIAG,
    n_rows, n_programs, rows_per_program, V, VS, stride_s, stride_t, stride_g,
    temp, kd_w_scalar, ce_w, p0, p1, ignore_index,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, ONLINE: tl.constexpr, HAS_KD: tl.constexpr,
    HAS_CE: tl.constexpr, CE_GRAD: tl.constexpr, CE_SHARED: tl.constexpr, PADDED: tl.constexpr,
    TEMP_ROWS: tl.constexpr, KDW_ROWS: tl.constexpr, WRITE_GRAD: tl.constexpr, WANT_DIAG: tl.constexpr,
    ALIGNED_T: tl.constexpr, ALIGNED_G: tl.constexpr,
    J: tl.constexpr, TH: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    for it in range(0, rows_per_program):
        row = pid + it * n_programs
        if row < n_rows:
            row64 = row.to(tl.int64)
            s_start = row64 * stride_s
            t_start = row64 * stride_t
            g_start = row64 * stride_g
            kd_on = False
            if HAS_KD:
                kd_on = tl.load(KDMASK + row) != 0
            ce_on = False
            label = 0
            if HAS_CE:
                label = tl.load(LABELS + row).to(tl.int32)
                ce_on = label != ignore_index
            inv_t = 1.0 / temp
            if TEMP_ROWS:
                inv_t = 1.0 / tl.load(TEMP + row)
            c = inv_t * LOG2E
            kd_w = kd_w_scalar
            if KDW_ROWS:
                kd_w = tl.load(KDW + row)

            kd_val = 0.0
            ce_val = 0.0
            correct = 0.0
            alpha_sum = 0.0
            if kd_on | ce_on:
                # ---- pass 1: log-sum-exps, online KL sums, the argmax for the accuracy ----
                special = False
                hh = 0.0
                if kd_on:
                    ms, ls, mt, lt, hh, m1, l1, top, top_i, big = _pass1(
                        S, T, s_start, t_start, V, c, True, HAS_CE, HAS_CE and not CE_SHARED, ONLINE, False,
                        ALIGNED_T, J, TH, VEC, STAGES,
                    )
                    # a ±inf entry, or a maximum near the pads (see _tload): the masked loops, where
                    # +inf counts as −inf and entries with ±inf drop out
                    special = (big == float("inf")) | (ms < 0.5 * _pad(S)) | (mt < 0.5 * _pad(T))
                    if special:
                        ms, ls, mt, lt, hh, m1, l1, top, top_i, big = _pass1(
                            S, T, s_start, t_start, V, c, True, HAS_CE, HAS_CE and not CE_SHARED, ONLINE_NONE, True,
                            ALIGNED_T, J, TH, VEC, STAGES,
                        )
                    if PADDED:
                        m1, l1, top_i = _ce_tail_pass1(S, s_start, V, VS, m1, l1, top, top_i, TH * VEC)
                else:
                    ms, ls, mt, lt, hh, m1, l1, top, top_i, big = _pass1(
                        S, T, s_start, t_start, VS, c, False, HAS_CE, HAS_CE, ONLINE_NONE, True, ALIGNED_T, J, TH, VEC, STAGES,
                    )
                m_s, ll_s = _lse_parts(ms, ls)
                m_t, ll_t = _lse_parts(mt, lt)
                m_1, ll_1 = _lse_parts(m1, l1)
                if CE_SHARED:
                    if kd_on:
                        m_1 = m_s
                        ll_1 = ll_s
                if ce_on:
                    x_label = tl.load(S + s_start + label).to(tl.float32)
                    ce_val = (m_1 - x_label) + ll_1 * LN2
                    correct = tl.where(top_i == label, 1.0, 0.0)

                # ---- pass 2: the divergence and G = Σ g ----
                w_akl = 0.0
                G = 0.0
                if kd_on:
                    if OBJ == ADAPTIVE_KL:
                        if special:
                            kd_val, G, w_akl = _akl_weight(
                                S, T, s_start, t_start, V, c, m_s, ll_s, m_t, ll_t, p0,
                                True, ALIGNED_T, TH, K, VEC, STAGES,
                            )
                        else:
                            kd_val, G, w_akl = _akl_weight(
                                S, T, s_start, t_start, V, c, m_s, ll_s, m_t, ll_t, p0,
                                False, ALIGNED_T, TH, K, VEC, STAGES,
                            )
                    elif special:
                        kd_val, G, alpha_sum = _pass2(
                            S, T, s_start, t_start, V, c, m_s, ll_s, m_t, ll_t, p0, p1,
                            OBJ, TODI_BETA_ONE, WANT_DIAG, True, ALIGNED_T, J, TH, VEC, STAGES,
                        )
                    elif ONLINE == ONLINE_FKL:  # Σ p = 1: FKL = Σ p (x_t − x_s)/T − (lse_t − lse_s), G = −1
                        kd_val = (hh / lt) * inv_t - _lse_diff(m_t, ll_t, m_s, ll_s, c)
                        G = -1.0
                    elif ONLINE == ONLINE_RKL:  # Σ q = 1: RKL likewise, G = Σ q (s − t + 1) = RKL + 1
                        kd_val = (hh / ls) * inv_t - _lse_diff(m_s, ll_s, m_t, ll_t, c)
                        G = kd_val + 1.0
                    else:
                        kd_val, G, alpha_sum = _pass2(
                            S, T, s_start, t_start, V, c, m_s, ll_s, m_t, ll_t, p0, p1,
                            OBJ, TODI_BETA_ONE, WANT_DIAG, False, ALIGNED_T, J, TH, VEC, STAGES,
                        )

                # ---- pass 3: the gradient of ce_w·CE + kd_w·D ----
                if WRITE_GRAD:
                    kd_coef = kd_w * inv_t
                    ce_coef = tl.where(ce_on, ce_w, 0.0)
                    if kd_on:
                        if special:
                            _pass3(S, T, GRAD, s_start, t_start, g_start, V, label, c, m_s, ll_s, m_t, ll_t, m_1,
                                   ll_1, G, w_akl, kd_coef, ce_coef, p0, p1, OBJ, TODI_BETA_ONE, True, CE_GRAD,
                                   CE_SHARED, True, ALIGNED_T, ALIGNED_G, J, TH, VEC, STAGES)
                        else:
                            _pass3(S, T, GRAD, s_start, t_start, g_start, V, label, c, m_s, ll_s, m_t, ll_t, m_1,
                                   ll_1, G, w_akl, kd_coef, ce_coef, p0, p1, OBJ, TODI_BETA_ONE, True, CE_GRAD,
                                   CE_SHARED, False, ALIGNED_T, ALIGNED_G, J, TH, VEC, STAGES)
                        if PADDED:
                            _ce_tail_pass3(S, GRAD, s_start, g_start, V, VS, label, m_1, ll_1, ce_coef, CE_GRAD,
                                           TH * VEC)
                    else:
                        _pass3(S, T, GRAD, s_start, t_start, g_start, VS, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1,
                               G, w_akl, kd_coef, ce_coef, p0, p1, OBJ, TODI_BETA_ONE, False, CE_GRAD, CE_SHARED,
                               False, ALIGNED_T, ALIGNED_G, J, TH, VEC, STAGES)
            else:
                if WRITE_GRAD:
                    _pass3(S, T, GRAD, s_start, t_start, g_start, VS, label, c, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                           0.0, 0.0, 0.0, 0.0, p0, p1, OBJ, TODI_BETA_ONE, False, False, False, False,
                           ALIGNED_T, ALIGNED_G, J, TH, VEC, STAGES)
            tl.store(OUT_KD + row, kd_val)
            tl.store(OUT_CE + row, ce_val)
            tl.store(OUT_CORRECT + row, correct)
            if WANT_DIAG:
                tl.store(OUT_DIAG + row, alpha_sum)


@triton.jit
def _scale_kernel(GRAD, SCALE, ACTIVE, stride_g, stride_scale, VS, BLOCK: tl.constexpr):
    """grad[row] *= scale[row] for active rows whose scale is not 1 (one program per row)."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.load(SCALE + row * stride_scale).to(tl.float32)
    on = tl.load(ACTIVE + row) != 0
    if on & (s != 1.0):
        for off in range(0, VS, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            ptr = GRAD + row * stride_g + cols
            g = tl.load(ptr, mask=cols < VS, other=0.0).to(tl.float32)
            tl.store(ptr, (g * s).to(GRAD.dtype.element_ty), mask=cols < VS)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _config() -> KernelConfig:
    return INTERPRET_CONFIG if _interpreting() else CONFIG


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_programs(n_rows: int, device: torch.device, cfg: KernelConfig) -> int:
    if device.type != "cuda":
        return max(1, min(n_rows, 4))
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(n_rows, _multiprocessors(index) * cfg.programs_per_sm))


def branch_code(spec: LossSpec) -> int | None:
    """The kernel branch of ``spec``'s objective (its registry entry names it), or None."""
    if spec.objective is None:
        return int(CE_ONLY.value)
    name = spec.triton_branch
    return None if name is None else int(BRANCHES[name].value)


def _params(spec: LossSpec) -> list[float]:
    values = [v for _, v in spec.params]
    if len(values) > MAX_PARAMS:
        raise ValueError(f"{spec.objective}: the Triton kernel takes at most {MAX_PARAMS} parameters")
    return values + [0.0] * (MAX_PARAMS - len(values))


def forward(spec: LossSpec, inp: LossInputs, *, want_grad: bool, want_diagnostics: bool) -> BackendOutput:
    """Values of every row and, with ``want_grad``, the gradient of the weighted loss (see spec)."""
    cfg = _config()
    student, teacher = inp.student, inp.teacher
    n, v_student = student.shape
    device = student.device
    has_kd = teacher is not None and spec.objective is not None
    has_ce = inp.labels is not None
    if student.stride(1) != 1 or (teacher is not None and teacher.stride(1) != 1):
        raise ValueError("the Triton kernels need the last dimension of the logits to be contiguous")
    code = branch_code(spec) if has_kd else int(CE_ONLY.value)
    if code is None:
        raise ValueError(f"objective {spec.objective} {spec.kwargs} has no Triton branch; use impl 'chunked' or 'auto'")

    new = lambda: torch.empty(n, dtype=torch.float32, device=device)  # noqa: E731
    kd, ce, correct = new(), new(), new()
    diag_name = BRANCH_DIAGNOSTICS.get(spec.triton_branch) if has_kd and want_diagnostics else None
    diagnostics = {diag_name: new()} if diag_name is not None else {}
    grad = torch.empty(n, v_student, dtype=student.dtype, device=device) if want_grad else None
    out = BackendOutput(kd=kd, ce=ce, correct=correct, diagnostics=diagnostics, grad=grad)
    if n == 0:
        return out

    temp_rows = isinstance(inp.temperature, Tensor)
    kdw_rows = isinstance(inp.kd_weight, Tensor)
    dummy = kd
    programs = _num_programs(n, device, cfg)
    vec = 16 // student.element_size()  # entries per 16-byte vector: the aligned frame's unit
    threads = INTERPRET_THREADS if _interpreting() else 32 * cfg.num_warps
    stride_t = teacher.stride(0) if has_kd else student.stride(0)
    stride_g = grad.stride(0) if want_grad else student.stride(0)
    p0, p1 = _params(spec)
    _loss_kernel[(programs,)](
        student,
        teacher if has_kd else student,
        inp.labels.contiguous() if has_ce else dummy,
        inp.temperature.contiguous() if temp_rows else dummy,
        inp.kd_weight.contiguous() if kdw_rows else dummy,
        inp.kd_mask.to(torch.int8).contiguous() if has_kd else dummy,
        grad if want_grad else dummy,
        kd,
        ce,
        correct,
        diagnostics.get(diag_name, dummy),
        n,
        programs,
        triton.cdiv(n, programs),
        inp.vocab if has_kd else v_student,
        v_student,
        student.stride(0),
        stride_t,
        stride_g,
        1.0 if temp_rows else float(inp.temperature),
        0.0 if kdw_rows else float(inp.kd_weight),
        float(inp.ce_weight),
        p0,
        p1,
        inp.ignore_index,
        OBJ=code,
        TODI_BETA_ONE=code == TODI.value and p0 == 1.0,
        ONLINE={FORWARD_KL.value: ONLINE_FKL.value, REVERSE_KL.value: ONLINE_RKL.value}.get(code, ONLINE_NONE.value),
        HAS_KD=has_kd,
        HAS_CE=has_ce,
        CE_GRAD=has_ce and want_grad and inp.ce_weight != 0.0,
        CE_SHARED=has_kd and not temp_rows and float(inp.temperature) == 1.0 and inp.vocab == v_student,
        PADDED=has_kd and has_ce and inp.vocab < v_student,
        TEMP_ROWS=temp_rows,
        KDW_ROWS=kdw_rows,
        WRITE_GRAD=want_grad,
        WANT_DIAG=diag_name is not None,
        # the teacher's and the gradient's rows start at the same offset within a vector as the
        # student's (same stride modulo the vector): their interior tiles are aligned too
        ALIGNED_T=(stride_t - student.stride(0)) % vec == 0,
        ALIGNED_G=(stride_g - student.stride(0)) % vec == 0,
        J=cfg.vectors,
        TH=threads,
        K=cfg.search_k,
        VEC=vec,
        STAGES=cfg.stages,
        num_warps=cfg.num_warps,
    )
    return out


def scale_rows_(grad: Tensor, scale: Tensor, active: Tensor) -> None:
    """grad[r] *= scale[r] in place for active rows; rows whose scale is 1 are not touched."""
    n, v = grad.shape
    if n == 0:
        return
    block = 4096 if not _interpreting() else 64
    scale = scale.reshape(n) if scale.dim() != 1 else scale
    _scale_kernel[(n,)](
        grad, scale, active.to(torch.int8), grad.stride(0), scale.stride(0), v, BLOCK=block, num_warps=8
    )
