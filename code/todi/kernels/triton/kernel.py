"""The loss kernel: one program per row (rows shared out over the grid), float32 math in base 2.

Per row r with student logits x_s, teacher logits x_t (columns [0, V)), temperature T, the tempered
softmaxes ``q = softmax(x_s/T)`` and ``p = softmax(x_t/T)``, it writes

* ``kd[r] = D(p, q)``, the divergence of the objective's branch (:mod:`todi.kernels.triton.terms`),
  on rows whose KD mask is set, else 0;
* ``ce[r] = lse(x_s) − x_s[label]`` over the student's columns [0, VS) (VS ≥ V: a student
  vocabulary padded beyond the teacher's), and ``correct[r] = [argmax x_s == label]``, on rows whose
  label is not the ignore index, else 0;
* with WRITE_GRAD, ``grad[r] = kd_w·∂D/∂x_s + ce_w·∂CE/∂x_s
  = (kd_w/T)(g − q·G) + ce_w·(softmax(x_s) − onehot(label))`` in the student's dtype, with
  ``g = ∂f/∂s`` per entry and ``G = Σ g`` (zeros on inactive rows);
* with WANT_DIAG, the branch's diagnostic sum (ToDi: Σ p α).

Each pass is written to spend few instructions per entry (ToDi: about 65 per entry over its three
passes, 8 of them exp2/rcp, against about 166 for a straightforward version, which made it bound by
instruction issue; these loops are bound by memory bandwidth at 8192 × 50,257 on an H100):

* tiles are ``[J, TH, VEC]`` (:mod:`todi.kernels.triton.tiles`): every running quantity is kept
  per thread, so the reductions inside the loops never leave the thread;
* log-probabilities are kept in base 2 (``s2 = log2 q``): ``q = exp2(s2)`` is one instruction, and
  the online log-sum-exp (:mod:`todi.kernels.triton.lse`) rescales once per tile and thread;
* rows without a ±inf entry (found in the first pass) take loops without the ±inf masks; the
  others are recomputed with them (the reference's semantics: +inf is −inf, entries where either
  logit is ±inf do not count);
* forward and reverse KL need no second pass: with pass 1's online sums and the log-sum-exps of
  the tempered logits, ``FKL = Σ p (x_t − x_s)/T − (lse_t − lse_s)`` and ``G = −1`` (Σ p = 1),
  ``RKL = Σ q (x_s − x_t)/T − (lse_s − lse_t)`` and ``G = Σ q (s − t + 1) = RKL + 1``.

The passes of an active row (:mod:`todi.kernels.triton.passes`): 1. the log-sum-exps, the argmax
and the online KL sums; 2. the divergence and G (AKL: :mod:`todi.kernels.triton.akl`), except for
forward/reverse KL on rows without ±inf; 3. the gradient.
"""

from __future__ import annotations

import triton
import triton.language as tl

from todi.kernels.triton.akl import akl_weight
from todi.kernels.triton.lse import lse_diff, lse_parts
from todi.kernels.triton.numerics import LN2, LOG2E
from todi.kernels.triton.passes import (
    ce_tail_gradient_pass, ce_tail_lse_pass, divergence_pass, gradient_pass, lse_pass,
)
from todi.kernels.triton.terms import ADAPTIVE_KL, ONLINE_FKL, ONLINE_NONE, ONLINE_RKL
from todi.kernels.triton.tiles import pad_value


@triton.jit
def _lse_row(
    S, T, s_start, t_start, V, VS, c, kd_on,
    HAS_CE: tl.constexpr, CE_SHARED: tl.constexpr, ONLINE: tl.constexpr, PADDED: tl.constexpr,
    ALIGNED_T: tl.constexpr, J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Pass 1 of an active row (see lse_pass), and whether the row needs the masked loops."""
    special = False
    hh = 0.0
    if kd_on:
        ms, ls, mt, lt, hh, m1, l1, top, top_i, big = lse_pass(
            S=S, T=T, s_start=s_start, t_start=t_start, n=V, c=c,
            WITH_KD=True, WITH_CE=HAS_CE, CE_OWN=HAS_CE and not CE_SHARED, ONLINE=ONLINE, MASKED=False,
            ALIGNED_T=ALIGNED_T, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
        )
        # a ±inf entry, or a maximum near the pads (see load_tile): the masked loops, where
        # +inf counts as −inf and entries with ±inf drop out
        special = (big == float("inf")) | (ms < 0.5 * pad_value(S)) | (mt < 0.5 * pad_value(T))
        if special:
            ms, ls, mt, lt, hh, m1, l1, top, top_i, big = lse_pass(
                S=S, T=T, s_start=s_start, t_start=t_start, n=V, c=c,
                WITH_KD=True, WITH_CE=HAS_CE, CE_OWN=HAS_CE and not CE_SHARED, ONLINE=ONLINE_NONE, MASKED=True,
                ALIGNED_T=ALIGNED_T, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
            )
        if PADDED:
            m1, l1, top_i = ce_tail_lse_pass(
                S=S, s_start=s_start, V=V, VS=VS, m1=m1, l1=l1, top=top, top_i=top_i, BLOCK=TH * VEC,
            )
    else:
        ms, ls, mt, lt, hh, m1, l1, top, top_i, big = lse_pass(
            S=S, T=T, s_start=s_start, t_start=t_start, n=VS, c=c,
            WITH_KD=False, WITH_CE=HAS_CE, CE_OWN=HAS_CE, ONLINE=ONLINE_NONE, MASKED=True,
            ALIGNED_T=ALIGNED_T, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
        )
    return ms, ls, mt, lt, hh, m1, l1, top_i, special


@triton.jit
def _divergence_row(
    S, T, s_start, t_start, V, c, inv_t, m_s, ll_s, m_t, ll_t, ls, lt, hh, p0, p1, special,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, WANT_DIAG: tl.constexpr, ONLINE: tl.constexpr,
    ALIGNED_T: tl.constexpr, J: tl.constexpr, TH: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Pass 2 of a row with a divergence: (D, G, AKL's head weight, the diagnostic sum)."""
    kd_val = 0.0
    G = 0.0
    w_akl = 0.0
    alpha_sum = 0.0
    if OBJ == ADAPTIVE_KL:
        if special:
            kd_val, G, w_akl = akl_weight(
                S=S, T=T, s_start=s_start, t_start=t_start, n=V, c=c, m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t,
                akl_alpha=p0, MASKED=True, ALIGNED_T=ALIGNED_T, TH=TH, K=K, VEC=VEC, STAGES=STAGES,
            )
        else:
            kd_val, G, w_akl = akl_weight(
                S=S, T=T, s_start=s_start, t_start=t_start, n=V, c=c, m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t,
                akl_alpha=p0, MASKED=False, ALIGNED_T=ALIGNED_T, TH=TH, K=K, VEC=VEC, STAGES=STAGES,
            )
    elif special:
        kd_val, G, alpha_sum = divergence_pass(
            S=S, T=T, s_start=s_start, t_start=t_start, n=V, c=c, m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t,
            p0=p0, p1=p1, OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE, WANT_DIAG=WANT_DIAG, MASKED=True,
            ALIGNED_T=ALIGNED_T, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
        )
    elif ONLINE == ONLINE_FKL:  # Σ p = 1: FKL = Σ p (x_t − x_s)/T − (lse_t − lse_s), G = −1
        kd_val = (hh / lt) * inv_t - lse_diff(m_t, ll_t, m_s, ll_s, c)
        G = -1.0
    elif ONLINE == ONLINE_RKL:  # Σ q = 1: RKL likewise, G = Σ q (s − t + 1) = RKL + 1
        kd_val = (hh / ls) * inv_t - lse_diff(m_s, ll_s, m_t, ll_t, c)
        G = kd_val + 1.0
    else:
        kd_val, G, alpha_sum = divergence_pass(
            S=S, T=T, s_start=s_start, t_start=t_start, n=V, c=c, m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t,
            p0=p0, p1=p1, OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE, WANT_DIAG=WANT_DIAG, MASKED=False,
            ALIGNED_T=ALIGNED_T, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
        )
    return kd_val, G, w_akl, alpha_sum


@triton.jit
def _gradient_row(
    S, T, GRAD, s_start, t_start, g_start, V, VS, label, c, m_s, ll_s, m_t, ll_t, m_1, ll_1, G, w_akl,
    kd_coef, ce_coef, p0, p1, kd_on, special,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, CE_GRAD: tl.constexpr, CE_SHARED: tl.constexpr,
    PADDED: tl.constexpr, ALIGNED_T: tl.constexpr, ALIGNED_G: tl.constexpr,
    J: tl.constexpr, TH: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Pass 3 of an active row: the gradient of ce_w·CE + kd_w·D (kd_coef = kd_w/T)."""
    if kd_on:
        if special:
            gradient_pass(
                S=S, T=T, GRAD=GRAD, s_start=s_start, t_start=t_start, g_start=g_start, n=V, label=label, c=c,
                m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t, m_1=m_1, ll_1=ll_1, G=G, w_akl=w_akl,
                kd_coef=kd_coef, ce_coef=ce_coef, p0=p0, p1=p1, OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE,
                WITH_KD=True, CE_GRAD=CE_GRAD, CE_SHARED=CE_SHARED, MASKED=True,
                ALIGNED_T=ALIGNED_T, ALIGNED_G=ALIGNED_G, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
            )
        else:
            gradient_pass(
                S=S, T=T, GRAD=GRAD, s_start=s_start, t_start=t_start, g_start=g_start, n=V, label=label, c=c,
                m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t, m_1=m_1, ll_1=ll_1, G=G, w_akl=w_akl,
                kd_coef=kd_coef, ce_coef=ce_coef, p0=p0, p1=p1, OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE,
                WITH_KD=True, CE_GRAD=CE_GRAD, CE_SHARED=CE_SHARED, MASKED=False,
                ALIGNED_T=ALIGNED_T, ALIGNED_G=ALIGNED_G, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
            )
        if PADDED:
            ce_tail_gradient_pass(
                S=S, GRAD=GRAD, s_start=s_start, g_start=g_start, V=V, VS=VS, label=label, m_1=m_1, ll_1=ll_1,
                ce_coef=ce_coef, CE_GRAD=CE_GRAD, BLOCK=TH * VEC,
            )
    else:
        gradient_pass(
            S=S, T=T, GRAD=GRAD, s_start=s_start, t_start=t_start, g_start=g_start, n=VS, label=label, c=c,
            m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t, m_1=m_1, ll_1=ll_1, G=G, w_akl=w_akl,
            kd_coef=kd_coef, ce_coef=ce_coef, p0=p0, p1=p1, OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE,
            WITH_KD=False, CE_GRAD=CE_GRAD, CE_SHARED=CE_SHARED, MASKED=False,
            ALIGNED_T=ALIGNED_T, ALIGNED_G=ALIGNED_G, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
        )


@triton.jit
def loss_kernel(
    S, T, LABELS, TEMP, KDW, KDMASK, GRAD, OUT_KD, OUT_CE, OUT_CORRECT, OUT_DIAG,
    n_rows, n_programs, rows_per_program, V, VS, stride_s, stride_t, stride_g,
    temp, kd_w_scalar, ce_w, p0, p1, ignore_index,
    OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr, ONLINE: tl.constexpr, HAS_KD: tl.constexpr,
    HAS_CE: tl.constexpr, CE_GRAD: tl.constexpr, CE_SHARED: tl.constexpr, PADDED: tl.constexpr,
    TEMP_ROWS: tl.constexpr, KDW_ROWS: tl.constexpr, WRITE_GRAD: tl.constexpr, WANT_DIAG: tl.constexpr,
    ALIGNED_T: tl.constexpr, ALIGNED_G: tl.constexpr,
    J: tl.constexpr, TH: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Rows pid, pid + n_programs, …: kd, ce, correct (and grad, diagnostics); see the module docstring."""
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
                ms, ls, mt, lt, hh, m1, l1, top_i, special = _lse_row(
                    S=S, T=T, s_start=s_start, t_start=t_start, V=V, VS=VS, c=c, kd_on=kd_on,
                    HAS_CE=HAS_CE, CE_SHARED=CE_SHARED, ONLINE=ONLINE, PADDED=PADDED,
                    ALIGNED_T=ALIGNED_T, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
                )
                m_s, ll_s = lse_parts(ms, ls)
                m_t, ll_t = lse_parts(mt, lt)
                m_1, ll_1 = lse_parts(m1, l1)
                if CE_SHARED:
                    if kd_on:
                        m_1 = m_s
                        ll_1 = ll_s
                if ce_on:
                    x_label = tl.load(S + s_start + label).to(tl.float32)
                    ce_val = (m_1 - x_label) + ll_1 * LN2
                    correct = tl.where(top_i == label, 1.0, 0.0)

                w_akl = 0.0
                G = 0.0
                if kd_on:
                    kd_val, G, w_akl, alpha_sum = _divergence_row(
                        S=S, T=T, s_start=s_start, t_start=t_start, V=V, c=c, inv_t=inv_t,
                        m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t, ls=ls, lt=lt, hh=hh, p0=p0, p1=p1, special=special,
                        OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE, WANT_DIAG=WANT_DIAG, ONLINE=ONLINE,
                        ALIGNED_T=ALIGNED_T, J=J, TH=TH, K=K, VEC=VEC, STAGES=STAGES,
                    )

                if WRITE_GRAD:
                    _gradient_row(
                        S=S, T=T, GRAD=GRAD, s_start=s_start, t_start=t_start, g_start=g_start, V=V, VS=VS,
                        label=label, c=c, m_s=m_s, ll_s=ll_s, m_t=m_t, ll_t=ll_t, m_1=m_1, ll_1=ll_1, G=G,
                        w_akl=w_akl, kd_coef=kd_w * inv_t, ce_coef=tl.where(ce_on, ce_w, 0.0), p0=p0, p1=p1,
                        kd_on=kd_on, special=special, OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE, CE_GRAD=CE_GRAD,
                        CE_SHARED=CE_SHARED, PADDED=PADDED, ALIGNED_T=ALIGNED_T, ALIGNED_G=ALIGNED_G,
                        J=J, TH=TH, VEC=VEC, STAGES=STAGES,
                    )
            else:
                if WRITE_GRAD:  # an inactive row's gradient is zero
                    gradient_pass(
                        S=S, T=T, GRAD=GRAD, s_start=s_start, t_start=t_start, g_start=g_start, n=VS, label=label,
                        c=c, m_s=0.0, ll_s=0.0, m_t=0.0, ll_t=0.0, m_1=0.0, ll_1=0.0, G=0.0, w_akl=0.0,
                        kd_coef=0.0, ce_coef=0.0, p0=p0, p1=p1, OBJ=OBJ, TODI_BETA_ONE=TODI_BETA_ONE,
                        WITH_KD=False, CE_GRAD=False, CE_SHARED=False, MASKED=False,
                        ALIGNED_T=ALIGNED_T, ALIGNED_G=ALIGNED_G, J=J, TH=TH, VEC=VEC, STAGES=STAGES,
                    )
            tl.store(OUT_KD + row, kd_val)
            tl.store(OUT_CE + row, ce_val)
            tl.store(OUT_CORRECT + row, correct)
            if WANT_DIAG:
                tl.store(OUT_DIAG + row, alpha_sum)


@triton.jit
def scale_kernel(GRAD, SCALE, ACTIVE, stride_g, stride_scale, VS, BLOCK: tl.constexpr):
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
