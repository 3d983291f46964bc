"""The Triton backend: one program per row (persistent over rows), float32 math, any input dtype.

Per active row (a row with a divergence or a cross-entropy term):

1. one pass over both rows: online log-sum-exp of the tempered student and teacher logits (+inf
   treated as −inf, as the reference), and for the cross-entropy the untempered student's
   log-sum-exp (shared when the temperature is 1) and its argmax;
2. one pass: the divergence and ``G = Σ_i g_i`` (``g = ∂f/∂s`` per entry, see
   :mod:`todi.kernels.chunked`), and ToDi's Σ p α when asked;
3. one pass writing the gradient of the weighted loss, ``kd_w (g_j − q_j G)/T + ce_w (softmax_j −
   onehot_j)``, in the student's dtype.

Rows without any term only get zeros written. AKL needs the tail of the teacher distribution (the
smallest probabilities whose mass stays ≤ α, see :func:`todi.divergences.akl_head_weight`): instead
of sorting, a K-ary search over the float32 bit patterns of p (monotone for p ≥ 0) finds the
smallest value ``v*`` at which the cumulative mass Σ_{p_i ≤ v} p_i exceeds α, reading only the
teacher row, 31 bits in ceil(31 / log2 K) passes. Entries below ``v*`` are tail; of the entries
equal to ``v*`` (ties, common with bf16 teachers), the first ``⌊(α − mass below v*) / v*⌋`` in
vocabulary order are tail, which is what the reference's stable sort and cumulative sum give, up to
float32 rounding of the cumulative mass exactly at the boundary.
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



@dataclass
class KernelConfig:
    """Launch settings: columns per block, warps per program, resident programs per SM, AKL search width."""

    block: int = 2048
    num_warps: int = 8
    programs_per_sm: int = 4
    search_block: int = 512
    search_k: int = 16


def _config_from_env() -> KernelConfig:
    """``TODI_TRITON_CONFIG=block,warps,programs_per_sm`` overrides the defaults (e.g. after a sweep)."""
    value = os.environ.get("TODI_TRITON_CONFIG")
    if not value:
        return KernelConfig()
    try:
        block, warps, per_sm = (int(x) for x in value.split(","))
    except ValueError:
        raise ValueError(f"TODI_TRITON_CONFIG must be 'block,warps,programs_per_sm', got {value!r}") from None
    if block & (block - 1) or warps & (warps - 1) or per_sm < 1:
        raise ValueError(f"TODI_TRITON_CONFIG: block and warps must be powers of two, got {value!r}")
    return KernelConfig(block=block, num_warps=warps, programs_per_sm=per_sm)


# Defaults chosen on an H100 with bf16 logits (scripts/bench/bench_loss.py --sweep).
CONFIG = _config_from_env()
# Small blocks keep the CPU interpreter (tests) fast.
INTERPRET_CONFIG = KernelConfig(block=64, num_warps=1, programs_per_sm=1, search_block=32, search_k=8)


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


@triton.jit
def _load_kd(s_ptr, t_ptr, offs, V, inv_t, m_s, ll_s, m_t, ll_t):
    """Tempered log-probabilities of one block: s, t (0 off keep), the student's q, keep.

    log p = (z − max) − log Σ e^{z − max}, as torch's log_softmax: subtracting a rounded
    log-sum-exp of large logits at once would lose digits.
    """
    in_v = offs < V
    xs = tl.load(s_ptr + offs, mask=in_v, other=-float("inf")).to(tl.float32)
    xt = tl.load(t_ptr + offs, mask=in_v, other=-float("inf")).to(tl.float32)
    keep = in_v & (tl.abs(xs) != float("inf")) & (tl.abs(xt) != float("inf"))
    zs = tl.where(xs == float("inf"), -float("inf"), xs * inv_t)
    zt = tl.where(xt == float("inf"), -float("inf"), xt * inv_t)
    s_full = (zs - m_s) - ll_s
    q = tl.exp(s_full)
    s = tl.where(keep, s_full, 0.0)
    t = tl.where(keep, (zt - m_t) - ll_t, 0.0)
    return s, t, q, keep


@triton.jit
def _teacher_p(s_ptr, t_ptr, offs, V, inv_t, m_t, ll_t, s_has_inf):
    """The teacher's p of one block (0 off keep), exactly as the other passes compute it."""
    in_v = offs < V
    xt = tl.load(t_ptr + offs, mask=in_v, other=-float("inf")).to(tl.float32)
    keep = in_v & (tl.abs(xt) != float("inf"))
    if s_has_inf:  # the student row has ±inf entries: they are outside keep too
        xs = tl.load(s_ptr + offs, mask=in_v, other=-float("inf")).to(tl.float32)
        keep = keep & (tl.abs(xs) != float("inf"))
    zt = tl.where(xt == float("inf"), -float("inf"), xt * inv_t)
    return tl.where(keep, tl.exp((zt - m_t) - ll_t), 0.0)


@triton.jit
def _online(m, l, z):
    """Online log-sum-exp update of a running (max m, sum l) with a block z."""
    m_new = tl.maximum(m, tl.max(z, axis=0))
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    l = l * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe), axis=0)
    return m_new, l


@triton.jit
def _lse_parts(m, l):
    """(max, log Σ e^{z − max}); (0, 0) for a row without a finite entry (its terms are all dropped)."""
    no_entry = m == -float("inf")
    return tl.where(no_entry, 0.0, m), tl.log(tl.where(no_entry, 1.0, l))  # l >= 1 when m is finite


@triton.jit
def _rows_kernel(
    S, T, LABELS, TEMP, KDW, KDMASK, GRAD, OUT_KD, OUT_CE, OUT_CORRECT, OUT_ALPHA,
    n_rows, n_programs, rows_per_program, V, VS, stride_s, stride_t, stride_g,
    temp, kd_w_scalar, ce_w, beta, lam, akl_alpha, ignore_index,
    OBJ: tl.constexpr, BETA_ONE: tl.constexpr, HAS_KD: tl.constexpr, HAS_CE: tl.constexpr, CE_GRAD: tl.constexpr,
    CE_SHARED: tl.constexpr, TEMP_ROWS: tl.constexpr, KDW_ROWS: tl.constexpr,
    WRITE_GRAD: tl.constexpr, WANT_ALPHA: tl.constexpr,
    BLOCK: tl.constexpr, SBLOCK: tl.constexpr, K: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    for it in range(0, rows_per_program):
        row = pid + it * n_programs
        if row < n_rows:
            row64 = row.to(tl.int64)
            s_ptr = S + row64 * stride_s
            t_ptr = T + row64 * stride_t
            g_ptr = GRAD + row64 * stride_g
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
                m_s = -float("inf")
                l_s = 0.0
                m_t = -float("inf")
                l_t = 0.0
                m_1 = -float("inf")
                l_1 = 0.0
                best = -float("inf")
                best_idx = 0
                s_has_inf = False
                n_cols = V
                if HAS_CE:
                    n_cols = VS
                for off in range(0, n_cols, BLOCK):
                    offs = off + cols
                    in_s = offs < VS
                    xs = tl.load(s_ptr + offs, mask=in_s, other=-float("inf")).to(tl.float32)
                    if HAS_CE:
                        blk_best = tl.max(xs, axis=0)
                        blk_idx = tl.argmax(xs, axis=0)
                        better = blk_best > best
                        best_idx = tl.where(better, off + blk_idx, best_idx)
                        best = tl.where(better, blk_best, best)
                    if kd_on:
                        in_v = offs < V
                        xt = tl.load(t_ptr + offs, mask=in_v, other=-float("inf")).to(tl.float32)
                        xs_v = tl.where(in_v, xs, -float("inf"))
                        zs = tl.where(xs_v == float("inf"), -float("inf"), xs_v * inv_t)
                        zt = tl.where(xt == float("inf"), -float("inf"), xt * inv_t)
                        m_s, l_s = _online(m_s, l_s, zs)
                        m_t, l_t = _online(m_t, l_t, zt)
                        s_has_inf = s_has_inf | (tl.sum((in_v & (tl.abs(xs) == float("inf"))).to(tl.int32), axis=0) > 0)
                    if HAS_CE:
                        if CE_SHARED:
                            if not kd_on:
                                m_1, l_1 = _online(m_1, l_1, xs)
                        else:
                            m_1, l_1 = _online(m_1, l_1, xs)
                m_s, ll_s = _lse_parts(m_s, l_s)
                m_t, ll_t = _lse_parts(m_t, l_t)
                m_1, ll_1 = _lse_parts(m_1, l_1)
                if CE_SHARED:
                    if kd_on:
                        m_1 = m_s
                        ll_1 = ll_s
                if ce_on:
                    x_label = tl.load(s_ptr + label).to(tl.float32)
                    ce_val = (m_1 - x_label) + ll_1
                    correct = tl.where(best_idx == label, 1.0, 0.0)

                # ---- pass 2: the divergence and G = Σ g (AKL: tail search first) ----
                w_akl = 0.0
                G = 0.0
                if kd_on:
                    if OBJ == 7:
                        # K-ary search over the bit patterns of p for v* (see the module docstring).
                        kk = tl.arange(0, K)
                        scols = tl.arange(0, SBLOCK)
                        lo = tl.full([], -1, tl.int32)
                        hi = tl.full([], 0x7F800000, tl.int32)  # the bits of +inf: above every probability
                        s_lo = tl.zeros([], dtype=tl.float32)
                        while hi - lo > 1:
                            span = (hi - lo).to(tl.int64)
                            pts = (lo + (span * (kk + 1).to(tl.int64)) // K).to(tl.int32)
                            acc = tl.zeros([K], dtype=tl.float32)
                            for off in range(0, V, SBLOCK):
                                p = _teacher_p(s_ptr, t_ptr, off + scols, V, inv_t, m_t, ll_t, s_has_inf)
                                bits = p.to(tl.int32, bitcast=True)
                                sel = bits[:, None] <= pts[None, :]
                                acc += tl.sum(tl.where(sel, p[:, None], 0.0), axis=0)
                            le = acc <= akl_alpha
                            new_lo = tl.max(tl.where(le, pts, lo), axis=0)
                            s_lo = tl.max(tl.where(le, acc, s_lo), axis=0)
                            hi = tl.min(tl.where(le, hi, pts), axis=0)
                            lo = new_lo
                        # v* (inf when the whole mass is ≤ α: everything is tail) and the tied entries
                        # at v* that still fit under α, taken in vocabulary order.
                        v_star = hi.to(tl.float32, bitcast=True)
                        n_ties = tl.minimum(tl.maximum((akl_alpha - s_lo) / v_star, 0.0), 2147483000.0)
                        n_ties = tl.where(lo >= hi, 0.0, n_ties)
                        v_star = tl.where(lo >= hi, float("inf"), v_star)
                        ties_in_tail = n_ties.to(tl.int32)
                        ties_seen = 0
                        acc_fkl = tl.zeros([BLOCK], dtype=tl.float32)
                        acc_rkl = tl.zeros([BLOCK], dtype=tl.float32)
                        acc_gf = tl.zeros([BLOCK], dtype=tl.float32)
                        acc_gr = tl.zeros([BLOCK], dtype=tl.float32)
                        acc_tail = tl.zeros([BLOCK], dtype=tl.float32)
                        acc_gap = tl.zeros([BLOCK], dtype=tl.float32)
                        for off in range(0, V, BLOCK):
                            offs = off + cols
                            s, t, q, keep = _load_kd(s_ptr, t_ptr, offs, V, inv_t, m_s, ll_s, m_t, ll_t)
                            # bit-identical to _teacher_p's p on kept entries: same operations
                            p = tl.where(keep, tl.exp(t), 0.0)
                            q = tl.where(keep, q, 0.0)
                            d = s - t
                            acc_fkl += tl.where(keep, -p * d, 0.0)
                            acc_rkl += tl.where(keep, q * d, 0.0)
                            acc_gf += -p
                            acc_gr += tl.where(keep, q * (d + 1.0), 0.0)
                            gap = tl.abs(p - q)
                            tie = keep & (p == v_star)
                            rank = ties_seen + tl.cumsum(tie.to(tl.int32), axis=0)
                            tail = (p < v_star) | (tie & (rank <= ties_in_tail))
                            acc_tail += tl.where(tail, gap, 0.0)
                            acc_gap += gap
                            ties_seen += tl.sum(tie.to(tl.int32), axis=0)
                        g_tail = tl.sum(acc_tail, axis=0)
                        g_total = tl.sum(acc_gap, axis=0)
                        w_akl = tl.where(g_total > 0, (g_total - g_tail) / tl.maximum(g_total, 1.1754943508222875e-38), 0.5)
                        kd_val = w_akl * tl.sum(acc_fkl, axis=0) + (1.0 - w_akl) * tl.sum(acc_rkl, axis=0)
                        G = w_akl * tl.sum(acc_gf, axis=0) + (1.0 - w_akl) * tl.sum(acc_gr, axis=0)
                    else:
                        acc_f = tl.zeros([BLOCK], dtype=tl.float32)
                        acc_g = tl.zeros([BLOCK], dtype=tl.float32)
                        acc_a = tl.zeros([BLOCK], dtype=tl.float32)
                        for off in range(0, V, BLOCK):
                            offs = off + cols
                            s, t, q, keep = _load_kd(s_ptr, t_ptr, offs, V, inv_t, m_s, ll_s, m_t, ll_t)
                            f, g, ap = _entry(s, t, q, w_akl, beta, lam, OBJ, BETA_ONE)
                            acc_f += tl.where(keep, f, 0.0)
                            acc_g += tl.where(keep, g, 0.0)
                            if WANT_ALPHA:
                                acc_a += tl.where(keep, ap, 0.0)
                        kd_val = tl.sum(acc_f, axis=0)
                        G = tl.sum(acc_g, axis=0)
                        if WANT_ALPHA:
                            alpha_sum = tl.sum(acc_a, axis=0)

                # ---- pass 3: the gradient of ce_w·CE + kd_w·D ----
                if WRITE_GRAD:
                    kd_coef = kd_w * inv_t
                    ce_coef = tl.where(ce_on, ce_w, 0.0)
                    for off in range(0, VS, BLOCK):
                        offs = off + cols
                        in_s = offs < VS
                        acc = tl.zeros([BLOCK], dtype=tl.float32)
                        if kd_on:
                            s, t, q, keep = _load_kd(s_ptr, t_ptr, offs, V, inv_t, m_s, ll_s, m_t, ll_t)
                            _, g, _ = _entry(s, t, q, w_akl, beta, lam, OBJ, BETA_ONE)
                            acc += kd_coef * (tl.where(keep, g, 0.0) - q * G)
                            if CE_GRAD:
                                if CE_SHARED:  # the untempered softmax is q
                                    soft = q
                                else:
                                    xs = tl.load(s_ptr + offs, mask=in_s, other=-float("inf")).to(tl.float32)
                                    soft = tl.exp((xs - m_1) - ll_1)
                                acc += ce_coef * (soft - tl.where(offs == label, 1.0, 0.0))
                        else:
                            if CE_GRAD:
                                xs = tl.load(s_ptr + offs, mask=in_s, other=-float("inf")).to(tl.float32)
                                soft = tl.exp((xs - m_1) - ll_1)
                                acc += ce_coef * (soft - tl.where(offs == label, 1.0, 0.0))
                        tl.store(g_ptr + offs, acc.to(GRAD.dtype.element_ty), mask=in_s)
            else:
                if WRITE_GRAD:
                    for off in range(0, VS, BLOCK):
                        offs = off + cols
                        tl.store(g_ptr + offs, tl.zeros([BLOCK], dtype=GRAD.dtype.element_ty), mask=offs < VS)
            tl.store(OUT_KD + row, kd_val)
            tl.store(OUT_CE + row, ce_val)
            tl.store(OUT_CORRECT + row, correct)
            if WANT_ALPHA:
                tl.store(OUT_ALPHA + row, alpha_sum)


@triton.jit
def _scale_kernel(GRAD, SCALE, ACTIVE, stride_g, stride_scale, VS, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c = tl.load(SCALE + row.to(tl.int64) * stride_scale).to(tl.float32)
    on = tl.load(ACTIVE + row) != 0
    if on & (c != 1.0):
        ptr = GRAD + row.to(tl.int64) * stride_g + col
        g = tl.load(ptr, mask=col < VS, other=0.0).to(tl.float32)
        tl.store(ptr, (g * c).to(GRAD.dtype.element_ty), mask=col < VS)


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
        teacher.stride(0) if has_kd else 0,
        grad.stride(0) if want_grad else 0,
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
        TEMP_ROWS=temp_rows,
        KDW_ROWS=kdw_rows,
        WRITE_GRAD=want_grad,
        WANT_ALPHA=want_alpha,
        BLOCK=cfg.block,
        SBLOCK=cfg.search_block,
        K=cfg.search_k,
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
    block = 1024 if not _interpreting() else 64
    scale = scale.reshape(n) if scale.dim() != 1 else scale
    _scale_kernel[(n, triton.cdiv(v, block))](
        grad, scale, active.to(torch.int8), grad.stride(0), scale.stride(0), v, BLOCK=block, num_warps=4
    )
