"""AKL (adaptive KL): the tail of the teacher distribution, the head weight, and the row's value.

AKL = w·FKL + (1 − w)·RKL, with the head weight ``w = Σ_head |p − q| / Σ |p − q|`` (0.5 when
p = q), where the tail is the smallest teacher probabilities whose ascending cumulative mass stays
≤ α and the head is the rest (see :func:`todi.loss.divergence.akl_head_weight`); its G is
``w·G_FKL + (1 − w)·G_RKL``. Instead of sorting, a K-ary search over the float32 bit patterns of p
(monotone for p ≥ 0) finds the smallest value ``v*`` at which the cumulative mass
``Σ_{p_i ≤ v} p_i`` exceeds α, reading only the teacher row, with per-thread mass accumulators.
Entries below ``v*`` are tail; of the entries equal to ``v*`` (ties, common with bf16 teachers),
the first ``⌊(α − mass below v*) / v*⌋`` in vocabulary order are tail, which is what the reference's
stable sort and cumulative sum give, up to float32 rounding of the cumulative mass exactly at the
boundary.
"""

from __future__ import annotations

import triton
import triton.language as tl

from todi.kernels.triton.lse import log_probs
from todi.kernels.triton.numerics import LN2, NEG_INF, TINY
from todi.kernels.triton.tiles import aligned_frame, edges, frame_bases, load_f32, load_tile, n_tiles, tile

TIES_CAP = tl.constexpr(2147483000.0)  # below INT32_MAX as a float32: the tie count's cast stays in range


@triton.jit
def _teacher_p(xt, xs, ok, c, m_t, ll_t, MASKED: tl.constexpr):
    """The teacher's p (0 off the kept entries and on pads), with exactly the operations log_probs uses."""
    zt = xt
    if MASKED:
        zt = tl.where(xt == float("inf"), NEG_INF, xt)
    p = tl.exp2(tl.fma(zt - m_t, c, -ll_t))
    if MASKED:
        p = tl.where(ok & (tl.abs(xt) != float("inf")) & (tl.abs(xs) != float("inf")), p, 0.0)
    return p


@triton.jit
def _tail_mass(
    S, T, s_start, t_start, n, c, m_t, ll_t, pts,
    MASKED: tl.constexpr, ALIGNED_T: tl.constexpr, TH: tl.constexpr, K: tl.constexpr,
    VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """For each of the K points (float32 bit patterns, [K]): Σ of the p whose bits are ≤ it."""
    shift, g_lo, g_hi, head_end, tail_start = aligned_frame(s_start, n, VEC)
    s_base, t_base = frame_bases(s_start, t_start, shift, ALIGNED_T, VEC)
    acc = tl.zeros([K, TH], tl.float32)
    piv = pts[:, None, None]
    for j in tl.range(0, n_tiles(g_hi, 1, TH), num_stages=STAGES):
        idx, ok = tile(j, g_lo, g_hi, 1, TH, VEC)
        xt = load_tile(T + t_base + idx, ok, MASKED)
        xs = xt
        if MASKED:
            xs = load_tile(S + s_base + idx, ok, MASKED)
        p = _teacher_p(xt, xs, ok, c, m_t, ll_t, MASKED)  # [1, TH, VEC]
        bits = p.to(tl.int32, bitcast=True)
        acc += tl.sum(tl.where(bits <= piv, p, 0.0), axis=2)
    cols, ok = edges(head_end, tail_start, n, VEC)
    p = _teacher_p(load_f32(T + t_start + cols, ok), load_f32(S + s_start + cols, ok), ok, c, m_t, ll_t, True)
    bits = p.to(tl.int32, bitcast=True)
    edge = tl.sum(tl.where(bits[None, :] <= pts[:, None], p[None, :], 0.0), axis=1)
    return tl.sum(acc, axis=1) + edge


@triton.jit
def _tail_search(
    S, T, s_start, t_start, n, c, m_t, ll_t, akl_alpha,
    MASKED: tl.constexpr, ALIGNED_T: tl.constexpr, TH: tl.constexpr, K: tl.constexpr,
    VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """v* and how many entries tied at v* are tail (see the module docstring)."""
    kk = tl.arange(0, K)
    lo = tl.full([], -1, tl.int32)
    # above every p: the largest p is exp2(-ll_t) (the max entry's t2 is exactly -ll_t)
    hi = tl.exp2(-ll_t).to(tl.int32, bitcast=True) + 1
    s_lo = tl.zeros([], tl.float32)
    while hi - lo > 1:
        span = (hi - lo).to(tl.int64)
        pts = (lo + (span * (kk + 1).to(tl.int64)) // (K + 1)).to(tl.int32)
        pts = tl.maximum(pts, lo + 1)
        acc = _tail_mass(
            S=S, T=T, s_start=s_start, t_start=t_start, n=n, c=c, m_t=m_t, ll_t=ll_t, pts=pts,
            MASKED=MASKED, ALIGNED_T=ALIGNED_T, TH=TH, K=K, VEC=VEC, STAGES=STAGES,
        )
        le = acc <= akl_alpha
        new_lo = tl.max(tl.where(le, pts, lo), axis=0)
        s_lo = tl.max(tl.where(le, acc, s_lo), axis=0)
        hi = tl.min(tl.where(le, hi, pts), axis=0)
        lo = new_lo
    # v* (above every p when the whole mass is ≤ α: everything is tail) and how many entries
    # tied at v* still fit under α, taken in vocabulary order.
    v_star = hi.to(tl.float32, bitcast=True)
    ties_in_tail = tl.minimum(tl.maximum((akl_alpha - s_lo) / v_star, 0.0), TIES_CAP).to(tl.int32)
    return v_star, ties_in_tail


@triton.jit
def _akl_piece(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, v_star, ties_in_tail, ties_seen, MASKED: tl.constexpr):
    """FKL, RKL, their Σ g, the gaps |p − q| in the tail and in total, for one 1D piece in column
    order, and the ties at v* seen so far."""
    s2, t2, q, p, keep = log_probs(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, MASKED)
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
def akl_weight(
    S, T, s_start, t_start, n, c, m_s, ll_s, m_t, ll_t, akl_alpha,
    MASKED: tl.constexpr, ALIGNED_T: tl.constexpr, TH: tl.constexpr, K: tl.constexpr,
    VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """(AKL value, G, head weight w) of a row: pass 2 for AKL."""
    v_star, ties_in_tail = _tail_search(
        S=S, T=T, s_start=s_start, t_start=t_start, n=n, c=c, m_t=m_t, ll_t=ll_t, akl_alpha=akl_alpha,
        MASKED=MASKED, ALIGNED_T=ALIGNED_T, TH=TH, K=K, VEC=VEC, STAGES=STAGES,
    )
    shift, g_lo, g_hi, head_end, tail_start = aligned_frame(s_start, n, VEC)
    s_base, t_base = frame_bases(s_start, t_start, shift, ALIGNED_T, VEC)
    # column order for the tie ranks: the head edge, the interior vectors, the tail edge
    head = tl.arange(0, VEC)
    head_ok = head < head_end
    fkl, rkl, gf, gr, g_tail, g_total, ties = _akl_piece(
        load_f32(S + s_start + head, head_ok), load_f32(T + t_start + head, head_ok), head_ok, c,
        m_s, ll_s, m_t, ll_t, v_star, ties_in_tail, 0, MASKED,
    )
    for j in range(0, tl.cdiv(g_hi * VEC, TH * VEC)):
        idx = j * (TH * VEC) + tl.arange(0, TH * VEC)
        grp = idx // VEC
        ok = (grp >= g_lo) & (grp < g_hi)
        a, b, c2, d, e_tail, e_total, ties = _akl_piece(
            load_f32(S + s_base + idx, ok), load_f32(T + t_base + idx, ok), ok, c, m_s, ll_s, m_t, ll_t,
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
        load_f32(S + s_start + tail, tail_ok), load_f32(T + t_start + tail, tail_ok), tail_ok, c,
        m_s, ll_s, m_t, ll_t, v_star, ties_in_tail, ties, MASKED,
    )
    fkl = (fkl + a) * LN2
    rkl = (rkl + b) * LN2
    gf += c2
    gr += d
    g_tail += e_tail
    g_total += e_total
    w = tl.where(g_total > 0, (g_total - g_tail) / tl.maximum(g_total, TINY), 0.5)
    return w * fkl + (1.0 - w) * rkl, w * gf + (1.0 - w) * gr, w
