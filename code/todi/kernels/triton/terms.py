"""The per-entry terms of each objective: the kernel's branches.

A divergence is ``D = Σ_i f(p_i, q_i)`` over the kept entries of a row, with the teacher's p and the
student's q (tempered softmaxes), and its gradient with respect to the student's logits x is
``∂D/∂x_j = (g_j − q_j G)/T`` with ``g = ∂f/∂s`` (s = log q) and ``G = Σ_i g_i`` (see
:mod:`todi.kernels.chunked`). :func:`entry` gives, per entry, f, g and an optional diagnostic term
(ToDi's ``p·α``), from the base-2 log-probabilities ``s2 = log2 q``, ``t2 = log2 p``; most f are then
in units of ``log2`` and :func:`f_scale` turns their sum into nats.

Adding a Triton branch for a new objective edits only this file (the objective's registry entry
names the branch): a code below, its ``BRANCHES`` entry, its case in :func:`entry` (with at most
``MAX_PARAMS`` parameters, in registry order), its case in :func:`f_scale` if its f is already in
nats, and a ``BRANCH_DIAGNOSTICS`` entry if its third term is a diagnostic.
"""

from __future__ import annotations

import triton
import triton.language as tl

from todi.kernels.triton.numerics import LN2, TINY, fast_log2, fast_rcp

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
MAX_PARAMS = 2  # p0, p1: an objective's parameters in registry order

# Forward and reverse KL are summed during the first pass (no second pass).
ONLINE_NONE = tl.constexpr(0)
ONLINE_FKL = tl.constexpr(1)
ONLINE_RKL = tl.constexpr(2)
ONLINE_SUMS = {FORWARD_KL.value: ONLINE_FKL.value, REVERSE_KL.value: ONLINE_RKL.value}


def todi_beta_one(code: int, p0: float) -> bool:
    """ToDi at β = 1 takes a cheaper gradient (α = p / (p + q))."""
    return code == TODI.value and p0 == 1.0


@triton.jit
def f_scale(OBJ: tl.constexpr):
    """The factor turning the summed f of :func:`entry` into nats (base-2 logs inside f)."""
    if OBJ == TVD:
        return 1.0
    elif OBJ == AB_DIVERGENCE:
        return 1.0
    else:
        return LN2


@triton.jit
def entry(s2, t2, q, p, w, p0, p1, OBJ: tl.constexpr, TODI_BETA_ONE: tl.constexpr):
    """f (times f_scale), g = ∂f/∂s and p·α (ToDi) per entry (derivations in
    todi.objectives.builtin; here s = s2·ln2, t = t2·ln2). ``p0``, ``p1``: the objective's
    parameters in the order of its registry entry; ``w``: AKL's head weight of the row."""
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
        lm2 = fast_log2(tl.maximum(0.5 * (p + q), TINY))
        gs = s2 - lm2
        f = 0.5 * (p * (t2 - lm2) + q * gs)
        g = (0.5 * LN2) * q * gs
    elif OBJ == TVD:
        diff = q - p
        f = 0.5 * tl.abs(diff)
        g = tl.where(diff > 0, 0.5 * q, tl.where(diff < 0, -0.5 * q, 0.0))
    elif OBJ == SKEWED_FORWARD_KL:  # 0 < λ = p0 < 1: M = λp + (1−λ)q
        mix = tl.maximum(p0 * p + (1.0 - p0) * q, TINY)
        f = p * (t2 - fast_log2(mix))
        g = -(1.0 - p0) * p * (q * fast_rcp(mix))
    elif OBJ == SKEWED_REVERSE_KL:  # 0 < λ = p0 < 1: M = λq + (1−λ)p
        mix = tl.maximum(p0 * q + (1.0 - p0) * p, TINY)
        gs = s2 - fast_log2(mix)
        f = q * gs
        g = q * (gs * LN2 + 1.0 - p0 * (q * fast_rcp(mix)))
    elif OBJ == ADAPTIVE_KL:  # with the row's head weight w (gradient only; the sums are in akl.py)
        d = (s2 - t2) * LN2
        f = zero
        g = -w * p + (1.0 - w) * q * (d + 1.0)
    elif OBJ == TODI:  # d = t − s, α = σ(βd), β = p0
        dd = t2 - s2
        if TODI_BETA_ONE:  # α = p / (p + q): d(αp − (1−α)q) = d(p − q); one reciprocal for g
            r = fast_rcp(tl.maximum(p + q, TINY))
            f = dd * (p - q)
            g = r * (q * q * (1.0 - dd * LN2) - p * p)
            ap = p * p * r
        else:
            alpha = fast_rcp(1.0 + tl.exp2(-p0 * dd))
            ap = alpha * p
            omq = (1.0 - alpha) * q
            f = dd * (ap - omq)
            g = omq * (1.0 - dd * LN2) - ap
    elif OBJ == GENERALIZED_JSD:  # 0 < β = p0 < 1: m = βp + (1−β)q; g = (1−β) q (s − log m)
        lm2 = fast_log2(tl.maximum(p0 * p + (1.0 - p0) * q, TINY))
        gs = s2 - lm2
        f = p0 * p * (t2 - lm2) + (1.0 - p0) * q * gs
        g = ((1.0 - p0) * LN2) * q * gs
    elif OBJ == AB_DIVERGENCE:  # α = p0 > 0, β = p1 > 0 (f in nats: f_scale is 1)
        pa = tl.exp2(p0 * t2)
        qb = tl.exp2(p1 * s2)
        qa = tl.exp2(p0 * s2)
        f = (pa * qb - (p0 / (p0 + p1)) * pa * tl.exp2(p1 * t2) - (p1 / (p0 + p1)) * qa * qb) * (-1.0 / (p0 * p1))
        g = qb * (qa - pa) * (1.0 / p0)
    else:  # ZERO: a skewed KL at λ = 1 compares a distribution with itself
        f = zero
        g = zero
    return f, g, ap
