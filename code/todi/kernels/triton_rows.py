"""The Triton backend: one program per row, float32 math, bf16/fp16/fp32 inputs.

Per active row (a row with a divergence or a cross-entropy term):

1. one pass over both rows: online log-sum-exp of the tempered student and teacher logits (+inf
   treated as −inf, as the reference), and for the cross-entropy the untempered student's
   log-sum-exp (shared when the temperature is 1) and its argmax;
2. one pass: the divergence and ``G = Σ_i g_i`` (``g = ∂f/∂s`` per entry, see
   :mod:`todi.kernels.chunked`), and ToDi's Σ p α when asked;
3. one pass writing the gradient of the weighted loss, ``kd_w (g_j − q_j G)/T + ce_w (softmax_j −
   onehot_j)``, in the student's dtype.

Rows without any term only get zeros written. Memory access: a row of an odd vocabulary (50,257)
starts anywhere within a 16-byte vector, so each row is walked in an *aligned frame*: the full
16-byte vectors inside the row are loaded by tiles whose mask only changes at vector boundaries
(16-byte loads and stores), and the at most 2 × (vector − 1) entries before the first and after
the last full vector form a small "edge" tile with per-entry masks. Accumulators are kept per lane
inside the loops (no block reductions there), and the loops are software-pipelined.

AKL needs the tail of the teacher distribution (the smallest probabilities whose mass stays ≤ α,
see :func:`todi.divergences.akl_head_weight`): instead of sorting, a K-ary search over the float32
bit patterns of p (monotone for p ≥ 0) finds the smallest value ``v*`` at which the cumulative mass
Σ_{p_i ≤ v} p_i exceeds α, reading only the teacher row, 31 bits in ceil(31 / log2 K) passes.
Entries below ``v*`` are tail; of the entries equal to ``v*`` (ties, common with bf16 teachers),
the first ``⌊(α − mass below v*) / v*⌋`` in vocabulary order are tail, which is what the
reference's stable sort and cumulative sum give, up to float32 rounding of the cumulative mass
exactly at the boundary.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from todi.kernels.spec import LossSpec, RowsInput, RowsResult

__all__ = ["KernelConfig", "CONFIG", "forward", "scale_rows_"]

NEG_INF = tl.constexpr(float("-inf"))
TINY = tl.constexpr(1.1754943508222875e-38)  # the smallest normal float32


@dataclass
class KernelConfig:
    """Launch settings: columns per tile, warps per program, resident programs per SM (a cap on
    the grid; rows are shared out over the programs), software-pipelining stages, AKL search tile
    and width."""

    block: int = 4096
    num_warps: int = 16
    programs_per_sm: int = 64
    stages: int = 2
    search_block: int = 512
    search_k: int = 16


def _config_from_env() -> KernelConfig:
    """``TODI_TRITON_CONFIG=block,warps,programs_per_sm[,stages]`` overrides the defaults."""
    value = os.environ.get("TODI_TRITON_CONFIG")
    if not value:
        return KernelConfig()
    try:
        fields = [int(x) for x in value.split(",")]
        if len(fields) not in (3, 4):
            raise ValueError
    except ValueError:
        raise ValueError(f"TODI_TRITON_CONFIG must be 'block,warps,programs_per_sm[,stages]', got {value!r}") from None
    block, warps, per_sm = fields[:3]
    stages = fields[3] if len(fields) == 4 else KernelConfig.stages
    if block & (block - 1) or warps & (warps - 1) or per_sm < 1 or stages < 1:
        raise ValueError(f"TODI_TRITON_CONFIG: block and warps must be powers of two, the rest >= 1; got {value!r}")
    return KernelConfig(block=block, num_warps=warps, programs_per_sm=per_sm, stages=stages)


# Defaults chosen for an H100 with bf16 logits (scripts/bench/bench_loss.py --sweep).
CONFIG = _config_from_env()
# Small tiles keep the CPU interpreter (tests) fast.
INTERPRET_CONFIG = KernelConfig(block=64, num_warps=1, programs_per_sm=1, stages=1, search_block=32, search_k=8)


# ---------------------------------------------------------------------------------------------
# Per-entry terms: value f, g = ∂f/∂s, and p·α (ToDi), from log-probabilities s, t (0 off keep).
# ---------------------------------------------------------------------------------------------

@triton.jit
def _log_clamped(mix):
    # Where a mixture of probabilities underflows, every term multiplying its log underflowed too.
    return tl.log(tl.maximum(mix, 1.1754943508222875e-38))


@triton.jit
def _entry(s, t, q, w, beta, lam, OBJ: tl.constexpr, BETA_ONE: tl.constexpr):
    """f, g = ∂f/∂s and p·α of the objective (derivations in todi.kernels.chunked.entry_terms).

    q = e^s is passed in (every pass computes it anyway).
    """
    zero = tl.zeros_like(s)
    ap = zero
    if OBJ == 1:  # forward KL
        p = tl.exp(t)
        f = p * (t - s)
        g = -p
    elif OBJ == 2:  # reverse KL
        f = q * (s - t)
        g = f + q
    elif OBJ == 3:  # Jensen-Shannon, m = (p + q)/2
        p = tl.exp(t)
        log_m = _log_clamped(0.5 * (p + q))
        f = 0.5 * (p * (t - log_m) + q * (s - log_m))
        g = 0.5 * q * (s - log_m)
    elif OBJ == 4:  # total variation
        diff = q - tl.exp(t)
        f = 0.5 * tl.abs(diff)
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        g = 0.5 * sign * q
    elif OBJ == 5:  # skewed forward KL, 0 < λ < 1: M = λp + (1−λ)q
        p = tl.exp(t)
        mix = tl.maximum(lam * p + (1.0 - lam) * q, 1.1754943508222875e-38)
        f = p * (t - tl.log(mix))
        g = -(1.0 - lam) * p * (q / mix)
    elif OBJ == 6:  # skewed reverse KL, 0 < λ < 1: M = λq + (1−λ)p
        mix = tl.maximum(lam * q + (1.0 - lam) * tl.exp(t), 1.1754943508222875e-38)
        gs = s - tl.log(mix)
        f = q * gs
        g = q * (gs + 1.0 - lam * (q / mix))
    elif OBJ == 7:  # adaptive KL with the row's head weight w
        p = tl.exp(t)
        d = s - t
        f = -w * p * d + (1.0 - w) * q * d
        g = -w * p + (1.0 - w) * q * (d + 1.0)
    elif OBJ == 8:  # ToDi
        d = t - s
        p = tl.exp(t)
        if BETA_ONE:  # σ(log p − log q) = p / (p + q): no extra exponential
            alpha = p / tl.maximum(p + q, 1.1754943508222875e-38)
        else:
            alpha = tl.sigmoid(beta * d)
        ap = alpha * p
        omq = (1.0 - alpha) * q
        f = d * (ap - omq)
        g = omq * (1.0 - d) - ap
    else:  # a skewed KL at λ = 1 compares a distribution with itself
        f = zero
        g = zero
    return f, g, ap


# ---------------------------------------------------------------------------------------------
# Rows in an aligned frame
# ---------------------------------------------------------------------------------------------

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
def _tile(j, shift, g_lo, g_hi, BLOCK: tl.constexpr, VEC: tl.constexpr):
    """Frame indices, columns and mask of interior tile j (the mask is constant per vector)."""
    idx = j * BLOCK + tl.arange(0, BLOCK)
    grp = idx // VEC
    return idx, idx - shift, (grp >= g_lo) & (grp < g_hi)


@triton.jit
def _edges(head_end, tail_start, n, VEC: tl.constexpr):
    """Columns and mask of the two edge pieces: [0, head_end) then [tail_start, n), VEC slots each."""
    e = tl.arange(0, 2 * VEC)
    head = e < VEC
    cols = tl.where(head, e, tail_start + e - VEC)
    return cols, tl.where(head, e < head_end, cols < n)


@triton.jit
def _lane_lse(m, l, z):
    """Per-lane online log-sum-exp: one exponential per entry, no cross-lane communication."""
    mx = tl.maximum(m, z)
    e = tl.exp(tl.where(mx == NEG_INF, NEG_INF, tl.minimum(m, z) - mx))
    return mx, tl.where(z > m, l * e + 1.0, l + e)


@triton.jit
def _reduce_lse(m, l):
    """(max, Σ e^{z − max}) of per-lane partial sums."""
    mx = tl.max(m, axis=0)
    safe = tl.where(mx == NEG_INF, 0.0, mx)
    return mx, tl.sum(l * tl.exp(m - safe), axis=0)


@triton.jit
def _merge_lse(m1, l1, m2, l2):
    mx = tl.maximum(m1, m2)
    safe = tl.where(mx == NEG_INF, 0.0, mx)
    return mx, l1 * tl.exp(m1 - safe) + l2 * tl.exp(m2 - safe)


@triton.jit
def _lse_parts(m, l):
    """(max, log Σ e^{z − max}); (0, 0) for a row without a finite entry (its terms are all dropped).

    log p is then (z − max) − log Σ, as torch's log_softmax: subtracting a rounded log-sum-exp of
    large logits at once would lose digits.
    """
    no_entry = m == NEG_INF
    return tl.where(no_entry, 0.0, m), tl.log(tl.where(no_entry, 1.0, l))  # l >= 1 when m is finite


@triton.jit
def _tempered(x, inv_t):
    return tl.where(x == float("inf"), NEG_INF, x * inv_t)


@triton.jit
def _log_probs(xs, xt, ok, inv_t, m_s, ll_s, m_t, ll_t):
    """s, t (0 off keep), the student's q and keep, from raw logits (masked-off entries: keep False)."""
    keep = ok & (tl.abs(xs) != float("inf")) & (tl.abs(xt) != float("inf"))
    s_full = (_tempered(xs, inv_t) - m_s) - ll_s
    q = tl.exp(s_full)
    s = tl.where(keep, s_full, 0.0)
    t = tl.where(keep, (_tempered(xt, inv_t) - m_t) - ll_t, 0.0)
    return s, t, q, keep


@triton.jit
def _load(ptr, mask):
    return tl.load(ptr, mask=mask, other=NEG_INF).to(tl.float32)


# ---- pass 1 ----------------------------------------------------------------------------------

@triton.jit
def _pass1(
    S, T, s_start, t_start, n, inv_t,
    WITH_KD: tl.constexpr, WITH_CE: tl.constexpr, CE_OWN: tl.constexpr,
    ALIGNED_T: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Over columns [0, n): (m, l) of the tempered student and teacher and of the raw student,
    the raw student's max and first argmax, and whether the student has a ±inf entry."""
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base = tl.multiple_of(s_start - shift, VEC)
    t_base = t_start - shift
    if ALIGNED_T:
        t_base = tl.multiple_of(t_base, VEC)
    m_s = tl.full([BLOCK], NEG_INF, tl.float32)
    l_s = tl.zeros([BLOCK], tl.float32)
    m_t = tl.full([BLOCK], NEG_INF, tl.float32)
    l_t = tl.zeros([BLOCK], tl.float32)
    m_1 = tl.full([BLOCK], NEG_INF, tl.float32)
    l_1 = tl.zeros([BLOCK], tl.float32)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.zeros([BLOCK], tl.int32)
    infs = tl.zeros([BLOCK], tl.int32)
    for j in tl.range(0, tl.cdiv(g_hi * VEC, BLOCK), num_stages=STAGES):
        idx, cols, ok = _tile(j, shift, g_lo, g_hi, BLOCK, VEC)
        xs = _load(S + s_base + idx, ok)
        if WITH_CE:
            better = xs > best
            best = tl.where(better, xs, best)
            best_i = tl.where(better, cols.to(tl.int32), best_i)
            if CE_OWN:
                m_1, l_1 = _lane_lse(m_1, l_1, xs)
        if WITH_KD:
            xt = _load(T + t_base + idx, ok)
            m_s, l_s = _lane_lse(m_s, l_s, _tempered(xs, inv_t))
            m_t, l_t = _lane_lse(m_t, l_t, _tempered(xt, inv_t))
            infs = tl.maximum(infs, (ok & (tl.abs(xs) == float("inf"))).to(tl.int32))
    ms, ls = _reduce_lse(m_s, l_s)
    mt, lt = _reduce_lse(m_t, l_t)
    m1, l1 = _reduce_lse(m_1, l_1)
    top = tl.max(best, axis=0)
    top_i = tl.min(tl.where(best == top, best_i, 2147483647), axis=0)
    any_inf = tl.max(infs, axis=0)
    # the edge entries, with block reductions (once per row)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    xs = _load(S + s_start + cols, ok)
    if WITH_CE:
        e_top = tl.max(xs, axis=0)
        e_i = tl.min(tl.where(xs == e_top, cols.to(tl.int32), 2147483647), axis=0)
        top_i = tl.where(e_top > top, e_i, tl.where(e_top == top, tl.minimum(top_i, e_i), top_i))
        top = tl.maximum(top, e_top)
        if CE_OWN:
            m1, l1 = _merge_lse(m1, l1, tl.max(xs, axis=0), _sum_exp(xs))
    if WITH_KD:
        xt = _load(T + t_start + cols, ok)
        zs = _tempered(xs, inv_t)
        zt = _tempered(xt, inv_t)
        ms, ls = _merge_lse(ms, ls, tl.max(zs, axis=0), _sum_exp(zs))
        mt, lt = _merge_lse(mt, lt, tl.max(zt, axis=0), _sum_exp(zt))
        any_inf = tl.maximum(any_inf, tl.max((ok & (tl.abs(xs) == float("inf"))).to(tl.int32), axis=0))
    return ms, ls, mt, lt, m1, l1, top, top_i, any_inf > 0


@triton.jit
def _sum_exp(z):
    mx = tl.max(z, axis=0)
    return tl.sum(tl.exp(z - tl.where(mx == NEG_INF, 0.0, mx)), axis=0)


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
        m1, l1 = _merge_lse(m1, l1, b_top, _sum_exp(xs))
    return m1, l1, top_i


# ---- pass 2 ----------------------------------------------------------------------------------

@triton.jit
def _pass2(
    S, T, s_start, t_start, n, inv_t, m_s, ll_s, m_t, ll_t, beta, lam,
    OBJ: tl.constexpr, BETA_ONE: tl.constexpr, WANT_ALPHA: tl.constexpr,
    ALIGNED_T: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Σ f (the divergence), G = Σ g and Σ p α over columns [0, n)."""
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base = tl.multiple_of(s_start - shift, VEC)
    t_base = t_start - shift
    if ALIGNED_T:
        t_base = tl.multiple_of(t_base, VEC)
    acc_f = tl.zeros([BLOCK], tl.float32)
    acc_g = tl.zeros([BLOCK], tl.float32)
    acc_a = tl.zeros([BLOCK], tl.float32)
    for j in tl.range(0, tl.cdiv(g_hi * VEC, BLOCK), num_stages=STAGES):
        idx, cols, ok = _tile(j, shift, g_lo, g_hi, BLOCK, VEC)
        s, t, q, keep = _log_probs(_load(S + s_base + idx, ok), _load(T + t_base + idx, ok), ok, inv_t, m_s, ll_s, m_t, ll_t)
        f, g, ap = _entry(s, t, q, 0.0, beta, lam, OBJ, BETA_ONE)
        acc_f += tl.where(keep, f, 0.0)
        acc_g += tl.where(keep, g, 0.0)
        if WANT_ALPHA:
            acc_a += tl.where(keep, ap, 0.0)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    s, t, q, keep = _log_probs(_load(S + s_start + cols, ok), _load(T + t_start + cols, ok), ok, inv_t, m_s, ll_s, m_t, ll_t)
    f, g, ap = _entry(s, t, q, 0.0, beta, lam, OBJ, BETA_ONE)
    value = tl.sum(acc_f, axis=0) + tl.sum(tl.where(keep, f, 0.0), axis=0)
    G = tl.sum(acc_g, axis=0) + tl.sum(tl.where(keep, g, 0.0), axis=0)
    alpha = tl.sum(acc_a, axis=0) + tl.sum(tl.where(keep, ap, 0.0), axis=0)
    return value, G, alpha


# ---- AKL: the tail search and the head weight --------------------------------------------------

@triton.jit
def _teacher_p(xt, xs, ok, inv_t, m_t, ll_t, WITH_S: tl.constexpr):
    """The teacher's p (0 off keep), with exactly the operations _log_probs uses for t."""
    keep = ok & (tl.abs(xt) != float("inf"))
    if WITH_S:  # the student row has ±inf entries: they are outside keep too
        keep = keep & (tl.abs(xs) != float("inf"))
    return tl.where(keep, tl.exp((_tempered(xt, inv_t) - m_t) - ll_t), 0.0)


@triton.jit
def _mass_below(p, pts):
    """For each of the K points, Σ of the p whose bit pattern is ≤ the point."""
    bits = p.to(tl.int32, bitcast=True)
    return tl.sum(tl.where(bits[:, None] <= pts[None, :], p[:, None], 0.0), axis=0)


@triton.jit
def _akl_mass(
    S, T, s_start, t_start, n, inv_t, m_t, ll_t, pts,
    WITH_S: tl.constexpr, ALIGNED_T: tl.constexpr, SBLOCK: tl.constexpr, K: tl.constexpr,
    VEC: tl.constexpr, STAGES: tl.constexpr,
):
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base = tl.multiple_of(s_start - shift, VEC)
    t_base = t_start - shift
    if ALIGNED_T:
        t_base = tl.multiple_of(t_base, VEC)
    acc = tl.zeros([K], tl.float32)
    for j in tl.range(0, tl.cdiv(g_hi * VEC, SBLOCK), num_stages=STAGES):
        idx, cols, ok = _tile(j, shift, g_lo, g_hi, SBLOCK, VEC)
        xs = tl.zeros([SBLOCK], tl.float32)
        if WITH_S:
            xs = _load(S + s_base + idx, ok)
        acc += _mass_below(_teacher_p(_load(T + t_base + idx, ok), xs, ok, inv_t, m_t, ll_t, WITH_S), pts)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    xs = _load(S + s_start + cols, ok)
    acc += _mass_below(_teacher_p(_load(T + t_start + cols, ok), xs, ok, inv_t, m_t, ll_t, WITH_S), pts)
    return acc


@triton.jit
def _akl_piece(xs, xt, ok, inv_t, m_s, ll_s, m_t, ll_t, v_star, ties_in_tail, ties_seen):
    """FKL, RKL, their Σ g, the gaps |p − q| in the tail and in total, for one tile in column order."""
    s, t, q, keep = _log_probs(xs, xt, ok, inv_t, m_s, ll_s, m_t, ll_t)
    p = tl.where(keep, tl.exp(t), 0.0)  # bit-identical to _teacher_p on kept entries
    q = tl.where(keep, q, 0.0)
    d = s - t
    gap = tl.abs(p - q)
    tie = keep & (p == v_star)
    rank = ties_seen + tl.cumsum(tie.to(tl.int32), axis=0)
    tail = (p < v_star) | (tie & (rank <= ties_in_tail))
    return (tl.sum(-p * d, axis=0), tl.sum(q * d, axis=0), tl.sum(-p, axis=0),
            tl.sum(tl.where(keep, q * (d + 1.0), 0.0), axis=0), tl.sum(tl.where(tail, gap, 0.0), axis=0),
            tl.sum(gap, axis=0), ties_seen + tl.sum(tie.to(tl.int32), axis=0))


@triton.jit
def _akl_weight(
    S, T, s_start, t_start, n, inv_t, m_s, ll_s, m_t, ll_t, akl_alpha, s_has_inf,
    ALIGNED_T: tl.constexpr, BLOCK: tl.constexpr, SBLOCK: tl.constexpr, K: tl.constexpr,
    VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """(AKL value, G, head weight w) of a row (see the module docstring for the tail search)."""
    kk = tl.arange(0, K)
    lo = tl.full([], -1, tl.int32)
    hi = tl.full([], 0x7F800000, tl.int32)  # the bits of +inf: above every probability
    s_lo = tl.zeros([], tl.float32)
    while hi - lo > 1:
        span = (hi - lo).to(tl.int64)
        pts = (lo + (span * (kk + 1).to(tl.int64)) // K).to(tl.int32)
        if s_has_inf:
            acc = _akl_mass(S, T, s_start, t_start, n, inv_t, m_t, ll_t, pts, True, ALIGNED_T, SBLOCK, K, VEC, STAGES)
        else:
            acc = _akl_mass(S, T, s_start, t_start, n, inv_t, m_t, ll_t, pts, False, ALIGNED_T, SBLOCK, K, VEC, STAGES)
        le = acc <= akl_alpha
        new_lo = tl.max(tl.where(le, pts, lo), axis=0)
        s_lo = tl.max(tl.where(le, acc, s_lo), axis=0)
        hi = tl.min(tl.where(le, hi, pts), axis=0)
        lo = new_lo
    # v* (inf when the whole mass is ≤ α: everything is tail) and how many entries tied at v*
    # still fit under α, taken in vocabulary order.
    no_head = lo >= hi
    v_star = tl.where(no_head, float("inf"), hi.to(tl.float32, bitcast=True))
    n_ties = tl.minimum(tl.maximum((akl_alpha - s_lo) / v_star, 0.0), 2147483000.0)
    ties_in_tail = tl.where(no_head, 0.0, n_ties).to(tl.int32)

    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base = tl.multiple_of(s_start - shift, VEC)
    t_base = t_start - shift
    if ALIGNED_T:
        t_base = tl.multiple_of(t_base, VEC)
    # column order for the tie ranks: the head edge, the interior tiles, the tail edge
    head = tl.arange(0, VEC)
    head_ok = head < head_end
    fkl, rkl, gf, gr, g_tail, g_total, ties = _akl_piece(
        _load(S + s_start + head, head_ok), _load(T + t_start + head, head_ok), head_ok, inv_t, m_s, ll_s, m_t, ll_t,
        v_star, ties_in_tail, 0,
    )
    for j in range(0, tl.cdiv(g_hi * VEC, BLOCK)):
        idx, cols, ok = _tile(j, shift, g_lo, g_hi, BLOCK, VEC)
        a, b, c, d, e_tail, e_total, ties = _akl_piece(
            _load(S + s_base + idx, ok), _load(T + t_base + idx, ok), ok, inv_t, m_s, ll_s, m_t, ll_t,
            v_star, ties_in_tail, ties,
        )
        fkl += a
        rkl += b
        gf += c
        gr += d
        g_tail += e_tail
        g_total += e_total
    tail = tail_start + tl.arange(0, VEC)
    tail_ok = tail < n
    a, b, c, d, e_tail, e_total, ties = _akl_piece(
        _load(S + s_start + tail, tail_ok), _load(T + t_start + tail, tail_ok), tail_ok, inv_t, m_s, ll_s, m_t, ll_t,
        v_star, ties_in_tail, ties,
    )
    fkl += a
    rkl += b
    gf += c
    gr += d
    g_tail += e_tail
    g_total += e_total
    w = tl.where(g_total > 0, (g_total - g_tail) / tl.maximum(g_total, TINY), 0.5)
    return w * fkl + (1.0 - w) * rkl, w * gf + (1.0 - w) * gr, w


# ---- pass 3 ----------------------------------------------------------------------------------

@triton.jit
def _grad_tile(
    xs, xt, cols, ok, label, inv_t, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl, kd_coef, ce_coef, beta, lam,
    OBJ: tl.constexpr, BETA_ONE: tl.constexpr, WITH_KD: tl.constexpr, CE_GRAD: tl.constexpr,
    CE_SHARED: tl.constexpr,
):
    acc = tl.zeros_like(xs)
    soft = acc
    if WITH_KD:
        s, t, q, keep = _log_probs(xs, xt, ok, inv_t, m_s, ll_s, m_t, ll_t)
        _, g, _ = _entry(s, t, q, w_akl, beta, lam, OBJ, BETA_ONE)
        acc += kd_coef * (tl.where(keep, g, 0.0) - q * G)
        if CE_SHARED:  # the untempered softmax is q
            soft = q
        else:
            soft = tl.exp((xs - m_1) - ll_1)
    else:
        soft = tl.exp((xs - m_1) - ll_1)
    if CE_GRAD:
        acc += ce_coef * (soft - tl.where(cols == label, 1.0, 0.0))
    return acc


@triton.jit
def _pass3(
    S, T, GRAD, s_start, t_start, g_start, n, label, inv_t, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl,
    kd_coef, ce_coef, beta, lam,
    OBJ: tl.constexpr, BETA_ONE: tl.constexpr, WITH_KD: tl.constexpr, CE_GRAD: tl.constexpr,
    CE_SHARED: tl.constexpr, ALIGNED_T: tl.constexpr, ALIGNED_G: tl.constexpr,
    BLOCK: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Writes the gradient of columns [0, n) (zeros when neither term is on)."""
    shift, g_lo, g_hi, head_end, tail_start = _frame(s_start, n, VEC)
    s_base = tl.multiple_of(s_start - shift, VEC)
    t_base = t_start - shift
    if ALIGNED_T:
        t_base = tl.multiple_of(t_base, VEC)
    g_base = g_start - shift
    if ALIGNED_G:
        g_base = tl.multiple_of(g_base, VEC)
    out_ty = GRAD.dtype.element_ty
    for j in tl.range(0, tl.cdiv(g_hi * VEC, BLOCK), num_stages=STAGES):
        idx, cols, ok = _tile(j, shift, g_lo, g_hi, BLOCK, VEC)
        xs = tl.zeros([BLOCK], tl.float32)
        if WITH_KD or CE_GRAD:
            xs = _load(S + s_base + idx, ok)
        xt = xs
        if WITH_KD:
            xt = _load(T + t_base + idx, ok)
        val = _grad_tile(xs, xt, cols, ok, label, inv_t, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl, kd_coef, ce_coef,
                         beta, lam, OBJ, BETA_ONE, WITH_KD, CE_GRAD, CE_SHARED)
        tl.store(GRAD + g_base + idx, val.to(out_ty), mask=ok)
    cols, ok = _edges(head_end, tail_start, n, VEC)
    xs = _load(S + s_start + cols, ok)
    xt = xs
    if WITH_KD:
        xt = _load(T + t_start + cols, ok)
    val = _grad_tile(xs, xt, cols, ok, label, inv_t, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl, kd_coef, ce_coef,
                     beta, lam, OBJ, BETA_ONE, WITH_KD, CE_GRAD, CE_SHARED)
    tl.store(GRAD + g_start + cols, val.to(out_ty), mask=ok)


@triton.jit
def _ce_tail_pass3(S, GRAD, s_start, g_start, V, VS, label, m_1, ll_1, ce_coef, CE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """The cross-entropy gradient of columns [V, VS) (a student vocabulary padded beyond the teacher's)."""
    for off in range(V, VS, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        ok = cols < VS
        val = tl.zeros([BLOCK], tl.float32)
        if CE_GRAD:
            soft = tl.exp((_load(S + s_start + cols, ok) - m_1) - ll_1)
            val = ce_coef * (soft - tl.where(cols == label, 1.0, 0.0))
        tl.store(GRAD + g_start + cols, val.to(GRAD.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------

@triton.jit
def _rows_kernel(
    S, T, LABELS, TEMP, KDW, KDMASK, GRAD, OUT_KD, OUT_CE, OUT_CORRECT, OUT_ALPHA,
    n_rows, n_programs, rows_per_program, V, VS, stride_s, stride_t, stride_g,
    temp, kd_w_scalar, ce_w, beta, lam, akl_alpha, ignore_index,
    OBJ: tl.constexpr, BETA_ONE: tl.constexpr, HAS_KD: tl.constexpr, HAS_CE: tl.constexpr,
    CE_GRAD: tl.constexpr, CE_SHARED: tl.constexpr, PADDED: tl.constexpr, TEMP_ROWS: tl.constexpr,
    KDW_ROWS: tl.constexpr, WRITE_GRAD: tl.constexpr, WANT_ALPHA: tl.constexpr,
    ALIGNED_T: tl.constexpr, ALIGNED_G: tl.constexpr,
    BLOCK: tl.constexpr, SBLOCK: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
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
            kd_w = kd_w_scalar
            if KDW_ROWS:
                kd_w = tl.load(KDW + row)

            kd_val = 0.0
            ce_val = 0.0
            correct = 0.0
            alpha_sum = 0.0
            if kd_on | ce_on:
                # ---- pass 1: log-sum-exps (and the argmax for the accuracy) ----
                if kd_on:
                    ms, ls, mt, lt, m1, l1, top, top_i, s_has_inf = _pass1(
                        S, T, s_start, t_start, V, inv_t, True, HAS_CE, HAS_CE and not CE_SHARED,
                        ALIGNED_T, BLOCK, VEC, STAGES,
                    )
                    if PADDED:
                        m1, l1, top_i = _ce_tail_pass1(S, s_start, V, VS, m1, l1, top, top_i, BLOCK)
                else:
                    ms, ls, mt, lt, m1, l1, top, top_i, s_has_inf = _pass1(
                        S, T, s_start, t_start, VS, inv_t, False, HAS_CE, HAS_CE, ALIGNED_T, BLOCK, VEC, STAGES,
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
                    ce_val = (m_1 - x_label) + ll_1
                    correct = tl.where(top_i == label, 1.0, 0.0)

                # ---- pass 2: the divergence and G = Σ g ----
                w_akl = 0.0
                G = 0.0
                if kd_on:
                    if OBJ == 7:
                        kd_val, G, w_akl = _akl_weight(
                            S, T, s_start, t_start, V, inv_t, m_s, ll_s, m_t, ll_t, akl_alpha, s_has_inf,
                            ALIGNED_T, BLOCK, SBLOCK, K, VEC, STAGES,
                        )
                    else:
                        kd_val, G, alpha_sum = _pass2(
                            S, T, s_start, t_start, V, inv_t, m_s, ll_s, m_t, ll_t, beta, lam,
                            OBJ, BETA_ONE, WANT_ALPHA, ALIGNED_T, BLOCK, VEC, STAGES,
                        )

                # ---- pass 3: the gradient of ce_w·CE + kd_w·D ----
                if WRITE_GRAD:
                    kd_coef = kd_w * inv_t
                    ce_coef = tl.where(ce_on, ce_w, 0.0)
                    if kd_on:
                        _pass3(S, T, GRAD, s_start, t_start, g_start, V, label, inv_t, m_s, ll_s, m_t, ll_t, m_1, ll_1,
                               G, w_akl, kd_coef, ce_coef, beta, lam, OBJ, BETA_ONE, True, CE_GRAD, CE_SHARED,
                               ALIGNED_T, ALIGNED_G, BLOCK, VEC, STAGES)
                        if PADDED:
                            _ce_tail_pass3(S, GRAD, s_start, g_start, V, VS, label, m_1, ll_1, ce_coef, CE_GRAD, BLOCK)
                    else:
                        _pass3(S, T, GRAD, s_start, t_start, g_start, VS, label, inv_t, m_s, ll_s, m_t, ll_t, m_1, ll_1,
                               G, w_akl, kd_coef, ce_coef, beta, lam, OBJ, BETA_ONE, False, CE_GRAD, CE_SHARED,
                               ALIGNED_T, ALIGNED_G, BLOCK, VEC, STAGES)
            else:
                if WRITE_GRAD:
                    _pass3(S, T, GRAD, s_start, t_start, g_start, VS, label, inv_t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                           0.0, 0.0, 0.0, 0.0, beta, lam, OBJ, BETA_ONE, False, False, False,
                           ALIGNED_T, ALIGNED_G, BLOCK, VEC, STAGES)
            tl.store(OUT_KD + row, kd_val)
            tl.store(OUT_CE + row, ce_val)
            tl.store(OUT_CORRECT + row, correct)
            if WANT_ALPHA:
                tl.store(OUT_ALPHA + row, alpha_sum)


@triton.jit
def _scale_kernel(GRAD, SCALE, ACTIVE, stride_g, stride_scale, VS, BLOCK: tl.constexpr):
    """grad[row] *= scale[row] for active rows whose scale is not 1 (one program per row)."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.load(SCALE + row * stride_scale).to(tl.float32)
    on = tl.load(ACTIVE + row) != 0
    if on & (c != 1.0):
        for off in range(0, VS, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            ptr = GRAD + row * stride_g + cols
            g = tl.load(ptr, mask=cols < VS, other=0.0).to(tl.float32)
            tl.store(ptr, (g * c).to(GRAD.dtype.element_ty), mask=cols < VS)


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


def forward(spec: LossSpec, inp: RowsInput, *, want_grad: bool, want_alpha: bool) -> RowsResult:
    """Values of every row and, with ``want_grad``, the gradient of the weighted loss (see spec)."""
    cfg = _config()
    student, teacher = inp.student, inp.teacher
    n, v_student = student.shape
    device = student.device
    has_kd = teacher is not None and spec.objective is not None
    has_ce = inp.labels is not None
    if student.stride(1) != 1 or (teacher is not None and teacher.stride(1) != 1):
        raise ValueError("the Triton kernels need the last dimension of the logits to be contiguous")

    kd = torch.empty(n, dtype=torch.float32, device=device)
    ce = torch.empty(n, dtype=torch.float32, device=device)
    correct = torch.empty(n, dtype=torch.float32, device=device)
    want_alpha = want_alpha and has_kd and spec.objective == "ToDi"
    alpha = torch.empty(n, dtype=torch.float32, device=device) if want_alpha else None
    grad = torch.empty(n, v_student, dtype=student.dtype, device=device) if want_grad else None
    if n == 0:
        return RowsResult(kd=kd, ce=ce, correct=correct, alpha=alpha, grad=grad)

    temp_rows = isinstance(inp.temperature, Tensor)
    kdw_rows = isinstance(inp.kd_weight, Tensor)
    lam = spec.skew_lambda
    dummy = kd
    programs = _num_programs(n, device, cfg)
    vec = 16 // student.element_size()  # entries per 16-byte vector: the aligned frame's unit
    stride_t = teacher.stride(0) if has_kd else student.stride(0)
    stride_g = grad.stride(0) if want_grad else student.stride(0)
    _rows_kernel[(programs,)](
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
        alpha if want_alpha else dummy,
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
        spec.beta,
        lam,
        spec.adaptive_kl_alpha,
        inp.ignore_index,
        OBJ=_kernel_objective(spec) if has_kd else 0,
        BETA_ONE=spec.beta == 1.0,
        HAS_KD=has_kd,
        HAS_CE=has_ce,
        CE_GRAD=has_ce and want_grad and inp.ce_weight != 0.0,
        CE_SHARED=has_kd and not temp_rows and float(inp.temperature) == 1.0 and inp.vocab == v_student,
        PADDED=has_kd and has_ce and inp.vocab < v_student,
        TEMP_ROWS=temp_rows,
        KDW_ROWS=kdw_rows,
        WRITE_GRAD=want_grad,
        WANT_ALPHA=want_alpha,
        # the teacher's and the gradient's rows start at the same offset within a vector as the
        # student's (same stride modulo the vector): their interior tiles are aligned too
        ALIGNED_T=(stride_t - student.stride(0)) % vec == 0,
        ALIGNED_G=(stride_g - student.stride(0)) % vec == 0,
        BLOCK=cfg.block,
        SBLOCK=cfg.search_block,
        K=cfg.search_k,
        VEC=vec,
        STAGES=cfg.stages,
        num_warps=cfg.num_warps,
    )
    return RowsResult(kd=kd, ce=ce, correct=correct, alpha=alpha, grad=grad)


def _kernel_objective(spec: LossSpec) -> int:
    """The kernel's objective code; the skewed KLs at λ = 0 or 1 are other objectives."""
    if spec.objective in ("skewed_forward_kl", "skewed_reverse_kl") and spec.skew_lambda in (0.0, 1.0):
        if spec.skew_lambda == 1.0:
            return 9  # KL of a distribution with itself: 0
        return 1 if spec.objective == "skewed_forward_kl" else 2
    return spec.code


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
