"""The three passes over a row, and the cross-entropy's passes over a padded student vocabulary.

With ``c = log2(e)/T``, student logits x_s and teacher logits x_t over columns [0, n):

1. :func:`lse_pass`: the online log-sum-exps (see :mod:`todi.kernels.triton.lse`) of the tempered
   student and teacher and of the untempered student (for the cross-entropy), the untempered
   student's first argmax, the largest |logit| (+inf when the row holds a ±inf), and optionally the
   online KL sums ``Σ exp2((x_t − m_t)c)(x_t − x_s)`` (forward) or ``Σ exp2((x_s − m_s)c)(x_s − x_t)``
   (reverse), rescaled with the teacher's (student's) l: divided by l they are Σ p (x_t − x_s),
   Σ q (x_s − x_t);
2. :func:`divergence_pass`: ``D = Σ f`` and ``G = Σ g`` of :func:`todi.kernels.triton.terms.entry`,
   and the sum of its diagnostic term;
3. :func:`gradient_pass`: the gradient ``kd_coef (g_j − q_j G) + ce_coef (softmax_j − onehot_j)``
   written in the gradient's dtype (``kd_coef = kd_w/T``).

Each pass walks the row's aligned frame in ``[J, TH, VEC]`` tiles, then its two edge pieces (see
:mod:`todi.kernels.triton.tiles`). MASKED loops treat +inf as −inf and drop entries where either
logit is ±inf; the others need no per-entry mask (pads contribute 0).
"""

from __future__ import annotations

import triton
import triton.language as tl

from todi.kernels.triton.lse import lse_merge, lse_piece, lse_threads, lse_tile, log_probs, sum_exp2
from todi.kernels.triton.numerics import INT32_MAX, LOG2E, NEG_INF
from todi.kernels.triton.terms import ONLINE_FKL, ONLINE_RKL, entry, f_scale
from todi.kernels.triton.tiles import (
    aligned_frame, edges, frame_bases, load_f32, load_tile, n_tiles, per_thread, thread_max, thread_sum, tile,
)


@triton.jit
def lse_pass(
    S, T, s_start, t_start, n, c,
    WITH_KD: tl.constexpr, WITH_CE: tl.constexpr, CE_OWN: tl.constexpr, ONLINE: tl.constexpr,
    MASKED: tl.constexpr, ALIGNED_T: tl.constexpr,
    J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Pass 1 over columns [0, n): (m, l) of the tempered student and teacher (c = log2(e)/T) and of
    the raw student (CE_OWN), the raw student's max and first argmax, the largest |logit| of either
    row (+inf when the row holds a ±inf), and with ONLINE = 1 (2) the sum
    Σ exp2((x_t − m_t)c)(x_t − x_s) (Σ exp2((x_s − m_s)c)(x_s − x_t)) scaled like the teacher's
    (student's) l. Returns the row's (m_s, l_s, m_t, l_t, online sum, m_1, l_1, max, argmax, max |x|).

    MASKED: +inf counts as −inf in the tempered log-sum-exps (for rows with ±inf; no ONLINE sum).
    """
    shift, g_lo, g_hi, head_end, tail_start = aligned_frame(s_start, n, VEC)
    s_base, t_base = frame_bases(s_start, t_start, shift, ALIGNED_T, VEC)
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
    for j in tl.range(0, n_tiles(g_hi, J, TH), num_stages=STAGES):
        idx, ok = tile(j, g_lo, g_hi, J, TH, VEC)
        xs = load_tile(S + s_base + idx, ok, MASKED)
        if WITH_CE:
            b = thread_max(xs)
            # the first column of the thread's tile maximum (the tile's columns grow with j)
            cand = tl.min(tl.min(tl.where(xs == per_thread(b), idx, INT32_MAX), axis=2), axis=0)
            better = b > best
            best_i = tl.where(better, (cand - shift).to(tl.int32), best_i)
            best = tl.maximum(best, b)
            if CE_OWN:
                m_1, l_1, _, _ = lse_tile(m_1, l_1, xs, LOG2E)
        if WITH_KD:
            xt = load_tile(T + t_base + idx, ok, MASKED)
            zs = xs
            zt = xt
            if MASKED:
                zs = tl.where(xs == float("inf"), NEG_INF, xs)
                zt = tl.where(xt == float("inf"), NEG_INF, xt)
            else:  # the pad is finite: +inf here means a ±inf logit
                big = tl.maximum(big, thread_max(tl.maximum(tl.abs(xs), tl.abs(xt))))
            m_s, l_s, sc_s, e_s = lse_tile(m_s, l_s, zs, c)
            m_t, l_t, sc_t, e_t = lse_tile(m_t, l_t, zt, c)
            # (pads: e is 0, or 1 while a thread has seen only pads, and x_t − x_s is 0)
            if ONLINE == ONLINE_FKL:
                h = h * sc_t + thread_sum(e_t * (xt - xs))
            elif ONLINE == ONLINE_RKL:
                h = h * sc_s + thread_sum(e_s * (xs - xt))
    ms, ls, sc_s = lse_threads(m_s, l_s, c)
    mt, lt, sc_t = lse_threads(m_t, l_t, c)
    m1, l1, _ = lse_threads(m_1, l_1, LOG2E)
    hh = 0.0
    if ONLINE == ONLINE_FKL:
        hh = tl.sum(h * sc_t, axis=0)
    elif ONLINE == ONLINE_RKL:
        hh = tl.sum(h * sc_s, axis=0)
    top = tl.max(best, axis=0)
    top_i = tl.min(tl.where(best == top, best_i, INT32_MAX), axis=0)
    big_row = tl.max(big, axis=0)
    # the edge entries, with block reductions (once per row)
    cols, ok = edges(head_end, tail_start, n, VEC)
    xs = load_f32(S + s_start + cols, ok)
    if WITH_CE:
        e_top = tl.max(xs, axis=0)
        e_i = tl.min(tl.where(xs == e_top, cols.to(tl.int32), INT32_MAX), axis=0)
        top_i = tl.where(e_top > top, e_i, tl.where(e_top == top, tl.minimum(top_i, e_i), top_i))
        top = tl.maximum(top, e_top)
        if CE_OWN:
            pm, pl, _ = lse_piece(xs, LOG2E)
            m1, l1, _, _ = lse_merge(m1, l1, pm, pl, LOG2E)
    if WITH_KD:
        xt = load_f32(T + t_start + cols, ok)
        zs = xs
        zt = xt
        if MASKED:
            zs = tl.where(xs == float("inf"), NEG_INF, xs)
            zt = tl.where(xt == float("inf"), NEG_INF, xt)
        else:
            big_row = tl.maximum(big_row, tl.max(tl.where(ok, tl.maximum(tl.abs(xs), tl.abs(xt)), 0.0), axis=0))
        pm, pl, pe_s = lse_piece(zs, c)
        ms, ls, a_s, b_s = lse_merge(ms, ls, pm, pl, c)
        pm, pl, pe_t = lse_piece(zt, c)
        mt, lt, a_t, b_t = lse_merge(mt, lt, pm, pl, c)
        if ONLINE == ONLINE_FKL:
            hh = hh * a_t + b_t * tl.sum(tl.where(ok, pe_t * (xt - xs), 0.0), axis=0)
        elif ONLINE == ONLINE_RKL:
            hh = hh * a_s + b_s * tl.sum(tl.where(ok, pe_s * (xs - xt), 0.0), axis=0)
    return ms, ls, mt, lt, hh, m1, l1, top, top_i, big_row


@triton.jit
def ce_tail_lse_pass(S, s_start, V, VS, m1, l1, top, top_i, BLOCK: tl.constexpr):
    """Pass 1 of the cross-entropy over columns [V, VS) (a student vocabulary padded beyond the
    teacher's): (m_1, l_1) and the argmax, continued from those of columns [0, V)."""
    for off in range(V, VS, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        xs = load_f32(S + s_start + cols, cols < VS)
        b_top = tl.max(xs, axis=0)
        b_i = tl.min(tl.where(xs == b_top, cols, INT32_MAX), axis=0)
        top_i = tl.where(b_top > top, b_i, top_i)
        top = tl.maximum(top, b_top)
        m1, l1, _, _ = lse_merge(m1, l1, b_top, sum_exp2(xs, LOG2E), LOG2E)
    return m1, l1, top_i


@triton.jit
def divergence_pass(
    S, T, s_start, t_start, n, c, m_s, ll_s, m_t, ll_t, p0, p1,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, WANT_DIAG: tl.constexpr, MASKED: tl.constexpr,
    ALIGNED_T: tl.constexpr, J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Pass 2 over columns [0, n): the divergence Σ f in nats, G = Σ g and the diagnostic Σ p α."""
    shift, g_lo, g_hi, head_end, tail_start = aligned_frame(s_start, n, VEC)
    s_base, t_base = frame_bases(s_start, t_start, shift, ALIGNED_T, VEC)
    acc_f = tl.zeros([TH], tl.float32)
    acc_g = tl.zeros([TH], tl.float32)
    acc_a = tl.zeros([TH], tl.float32)
    for j in tl.range(0, n_tiles(g_hi, J, TH), num_stages=STAGES):
        idx, ok = tile(j, g_lo, g_hi, J, TH, VEC)
        s2, t2, q, p, keep = log_probs(
            load_tile(S + s_base + idx, ok, MASKED), load_tile(T + t_base + idx, ok, MASKED), ok, c,
            m_s, ll_s, m_t, ll_t, MASKED,
        )
        f, g, ap = entry(s2, t2, q, p, 0.0, p0, p1, OBJ, TODI_BETA_ONE)
        if MASKED:
            f = tl.where(keep, f, 0.0)
            g = tl.where(keep, g, 0.0)
            ap = tl.where(keep, ap, 0.0)
        acc_f += thread_sum(f)  # without MASKED the pads' terms are 0
        acc_g += thread_sum(g)
        if WANT_DIAG:
            acc_a += thread_sum(ap)
    cols, ok = edges(head_end, tail_start, n, VEC)
    s2, t2, q, p, keep = log_probs(
        load_f32(S + s_start + cols, ok), load_f32(T + t_start + cols, ok), ok, c, m_s, ll_s, m_t, ll_t, MASKED
    )
    f, g, ap = entry(s2, t2, q, p, 0.0, p0, p1, OBJ, TODI_BETA_ONE)
    value = (tl.sum(acc_f, axis=0) + tl.sum(tl.where(keep, f, 0.0), axis=0)) * f_scale(OBJ)
    G = tl.sum(acc_g, axis=0) + tl.sum(tl.where(keep, g, 0.0), axis=0)
    alpha = tl.sum(acc_a, axis=0) + tl.sum(tl.where(keep, ap, 0.0), axis=0)
    return value, G, alpha


@triton.jit
def _gradient_piece(
    xs, xt, ok, cols, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl, kd_coef, ce_coef, p0, p1,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, WITH_KD: tl.constexpr, CE_GRAD: tl.constexpr,
    CE_SHARED: tl.constexpr, MASKED: tl.constexpr,
):
    """The gradient of a tile or piece: kd_coef (g − q G) + ce_coef (softmax − onehot)."""
    val = tl.zeros_like(xs)
    if WITH_KD:
        s2, t2, q, p, keep = log_probs(xs, xt, ok, c, m_s, ll_s, m_t, ll_t, MASKED)
        _, g, _ = entry(s2, t2, q, p, w_akl, p0, p1, OBJ, TODI_BETA_ONE)
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
def gradient_pass(
    S, T, GRAD, s_start, t_start, g_start, n, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl,
    kd_coef, ce_coef, p0, p1,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, WITH_KD: tl.constexpr, CE_GRAD: tl.constexpr,
    CE_SHARED: tl.constexpr, MASKED: tl.constexpr, ALIGNED_T: tl.constexpr, ALIGNED_G: tl.constexpr,
    J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Pass 3: writes the gradient of columns [0, n) (zeros when neither term is on)."""
    shift, g_lo, g_hi, head_end, tail_start = aligned_frame(s_start, n, VEC)
    s_base, t_base = frame_bases(s_start, t_start, shift, ALIGNED_T, VEC)
    g_base = g_start - shift
    if ALIGNED_G:
        g_base = tl.multiple_of(g_base, VEC)
    out_ty = GRAD.dtype.element_ty
    for j in tl.range(0, n_tiles(g_hi, J, TH), num_stages=STAGES):
        idx, ok = tile(j, g_lo, g_hi, J, TH, VEC)
        xs = tl.zeros([J, TH, VEC], tl.float32)
        if WITH_KD or CE_GRAD:
            xs = load_tile(S + s_base + idx, ok, MASKED)
        xt = xs
        if WITH_KD:
            xt = load_tile(T + t_base + idx, ok, MASKED)
        val = _gradient_piece(
            xs=xs, xt=xt, ok=ok, cols=idx - shift, label=label, c=c, m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t,
            m_1=m_1, ll_1=ll_1, G=G, w_akl=w_akl, kd_coef=kd_coef, ce_coef=ce_coef, p0=p0, p1=p1,
            OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE, WITH_KD=WITH_KD, CE_GRAD=CE_GRAD, CE_SHARED=CE_SHARED,
            MASKED=MASKED,
        )
        tl.store(GRAD + g_base + idx, val.to(out_ty), mask=ok)
    cols, ok = edges(head_end, tail_start, n, VEC)
    xs = load_f32(S + s_start + cols, ok)
    xt = xs
    if WITH_KD:
        xt = load_f32(T + t_start + cols, ok)
    val = _gradient_piece(
        xs=xs, xt=xt, ok=ok, cols=cols, label=label, c=c, m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t,
        m_1=m_1, ll_1=ll_1, G=G, w_akl=w_akl, kd_coef=kd_coef, ce_coef=ce_coef, p0=p0, p1=p1,
        OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE, WITH_KD=WITH_KD, CE_GRAD=CE_GRAD, CE_SHARED=CE_SHARED,
        MASKED=True,
    )
    tl.store(GRAD + g_start + cols, val.to(out_ty), mask=ok)


@triton.jit
def ce_tail_gradient_pass(
    S, GRAD, s_start, g_start, V, VS, label, m_1, ll_1, ce_coef, CE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 3 of the cross-entropy over columns [V, VS) (a student vocabulary padded beyond the
    teacher's): ce_coef (softmax − onehot), or zeros without CE_GRAD."""
    for off in range(V, VS, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        ok = cols < VS
        val = tl.zeros([BLOCK], tl.float32)
        if CE_GRAD:
            soft = tl.exp2(tl.fma(load_f32(S + s_start + cols, ok) - m_1, LOG2E, -ll_1))
            val = ce_coef * (soft - tl.where(cols == label, 1.0, 0.0))
        tl.store(GRAD + g_start + cols, val.to(GRAD.dtype.element_ty), mask=ok)
