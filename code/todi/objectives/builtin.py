"""The built-in objectives: the official eight, GKD's generalized JSD and ABKD's α-β divergence.

Each is one :func:`~todi.objectives.registry.register` call. ``*_terms(s, t, keep, ...)`` are the
per-entry terms (the reference, differentiated by autograd); ``*_grad(s, t, q, keep, ...)`` return
the same terms ``f`` and ``g = ∂f/∂s`` for the chunked kernel, written with in-place operations on
their own temporaries (never on ``s``, ``t`` or ``q``). With s = log q, t = log p after the
temperature, the gradient of Σ_i f_i with respect to the student logits is (g − q Σ_i g_i) / T.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from todi.objectives.math import TINY, log_clamped, log_mix
from todi.objectives.registry import Objective, Param, register

__all__ = ["akl_head_weight", "todi_weight"]

UNIT = dict(low=0.0, high=1.0)  # a mixing weight or a mass


# ---- forward / reverse KL -----------------------------------------------------------------

def forward_kl_terms(s: Tensor, t: Tensor, keep=None) -> Tensor:
    """KL(p || q) per entry: p (log p − log q)."""
    return t.exp() * (t - s)


def forward_kl_grad(s, t, q, keep):  # f = p (t − s); g = −p
    p = t.exp()
    return p * (t - s), p.neg_()


def reverse_kl_terms(s: Tensor, t: Tensor, keep=None) -> Tensor:
    """KL(q || p) per entry: q (log q − log p)."""
    return s.exp() * (s - t)


def reverse_kl_grad(s, t, q, keep):  # f = q (s − t); g = q (s − t + 1)
    d = s - t
    return q * d, d.add_(1.0).mul_(q)


# ---- Jensen–Shannon, total variation ------------------------------------------------------

def js_terms(s: Tensor, t: Tensor, keep=None) -> Tensor:
    """Jensen–Shannon per entry with m = (p + q)/2, in log space (exact, no epsilon)."""
    log_m = torch.logaddexp(s, t) - math.log(2.0)
    return 0.5 * (t.exp() * (t - log_m) + s.exp() * (s - log_m))


def js_grad(s, t, q, keep):  # m = (p+q)/2; f = ½[p(t − log m) + q(s − log m)]; g = ½ q (s − log m)
    p = t.exp()
    log_m = log_clamped((p + q).mul_(0.5))
    gs = s - log_m
    f = (p.mul_(log_m.neg_().add_(t))).add_(q * gs).mul_(0.5)
    return f, gs.mul_(q).mul_(0.5)


def tvd_terms(s: Tensor, t: Tensor, keep=None) -> Tensor:
    """Total variation per entry: |q − p| / 2."""
    return 0.5 * (s.exp() - t.exp()).abs()


def tvd_grad(s, t, q, keep):  # g = ½ sign(q − p) q (sign(0) = 0, as autograd's abs)
    diff = q - t.exp()
    return diff.abs().mul_(0.5), diff.sign_().mul_(q).mul_(0.5)


# ---- skewed KLs (DistiLLM) ----------------------------------------------------------------

def skewed_forward_kl_terms(s: Tensor, t: Tensor, keep=None, *, skew_lambda: float) -> Tensor:
    """KL(p || λp + (1−λ)q) per entry."""
    return t.exp() * (t - log_mix(t, s, skew_lambda))


def skewed_forward_kl_grad(s, t, q, keep, *, skew_lambda):  # M = λp + (1−λ)q; g = −(1−λ) p q / M
    if skew_lambda == 1.0:  # KL(p || p)
        return torch.zeros_like(s), torch.zeros_like(s)
    lam = skew_lambda
    p = t.exp()
    mix = (q * (1.0 - lam)).add_(p, alpha=lam).clamp_min_(TINY)
    f = p * log_clamped(mix).neg_().add_(t)
    return f, mix.reciprocal_().mul_(q).mul_(p).mul_(-(1.0 - lam))


def skewed_reverse_kl_terms(s: Tensor, t: Tensor, keep=None, *, skew_lambda: float) -> Tensor:
    """KL(q || (1−λ)p + λq) per entry."""
    return s.exp() * (s - log_mix(s, t, skew_lambda))


def skewed_reverse_kl_grad(s, t, q, keep, *, skew_lambda):  # M = λq + (1−λ)p; g = q(s − log M + 1 − λq/M)
    if skew_lambda == 1.0:  # KL(q || q)
        return torch.zeros_like(s), torch.zeros_like(s)
    lam = skew_lambda
    mix = (t.exp().mul_(1.0 - lam)).add_(q, alpha=lam).clamp_min_(TINY)
    gs = log_clamped(mix).neg_().add_(s)
    f = q * gs
    return f, mix.reciprocal_().mul_(q).mul_(-lam).add_(gs).add_(1.0).mul_(q)


def _skew_triton(name: str):
    return lambda p: "zero" if p["skew_lambda"] == 1.0 else name


def _skew_limit(plain: str):
    return lambda p: (plain, {}) if p["skew_lambda"] == 0.0 else None


# ---- adaptive KL (Wu et al., 2024) --------------------------------------------------------

def akl_head_weight(s: Tensor, t: Tensor, keep: Tensor | None, adaptive_kl_alpha: float) -> Tensor:
    """AKL's weight of the forward KL per position, ``g_head / (g_head + g_tail)``, detached ``[...]``.

    The tail is the set of smallest teacher probabilities whose cumulative mass (ascending
    order, stable: ties go to the tail in vocabulary order) stays ≤ α; gaps |p − q| are summed over
    the head and the tail. When p == q both gaps are 0 (the official code divides 0 by 0); the
    weight is then 1/2, and FKL = RKL = 0 anyway.
    """
    with torch.no_grad():
        if keep is None:
            keep = torch.ones_like(s, dtype=torch.bool)
        p = torch.where(keep, t.exp(), 0.0)
        q = torch.where(keep, s.exp(), 0.0)
        p_sorted, order = torch.sort(p, dim=-1, stable=True)
        tail_sorted = torch.cumsum(p_sorted, dim=-1) <= adaptive_kl_alpha
        tail = torch.zeros_like(tail_sorted).scatter_(-1, order, tail_sorted)
        gap = (p - q).abs()
        g_tail = torch.where(tail, gap, 0.0).sum(-1)
        g_head = gap.sum(-1) - g_tail
        total = g_head + g_tail
        return torch.where(total > 0, g_head / total.clamp_min(torch.finfo(total.dtype).tiny), 0.5)


def adaptive_kl_terms(s: Tensor, t: Tensor, keep=None, *, adaptive_kl_alpha: float) -> Tensor:
    """w_head · p(t − s) + (1 − w_head) · q(s − t), w_head per position (detached)."""
    w = akl_head_weight(s, t, keep, adaptive_kl_alpha).unsqueeze(-1)
    return w * forward_kl_terms(s, t) + (1.0 - w) * reverse_kl_terms(s, t)


def adaptive_kl_grad(s, t, q, keep, *, adaptive_kl_alpha):  # g = −w p + (1 − w) q(s − t + 1)
    w = akl_head_weight(s, t, keep, adaptive_kl_alpha).unsqueeze(-1)
    p = t.exp()
    d = s - t
    qd = q * d
    f = (p * d).mul_(-w).add_(qd * (1.0 - w))
    return f, qd.add_(q).mul_(1.0 - w).sub_(p.mul_(w))


# ---- ToDi ---------------------------------------------------------------------------------

def todi_weight(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """ToDi's per-entry FKL weight α = sigmoid(β (log p − log q)), detached."""
    return torch.sigmoid(beta * (t - s)).detach()


def todi_terms(s: Tensor, t: Tensor, keep=None, *, beta: float) -> Tensor:
    """α p (log p − log q) + (1 − α) q (log q − log p), α detached.

    At β = 1 the *value* equals FKL + RKL (α = p/(p+q)); only the gradient differs. As β → 0 it
    tends to (FKL + RKL)/2.
    """
    alpha = todi_weight(s, t, beta)
    d = t - s
    return d * (alpha * t.exp() - (1.0 - alpha) * s.exp())


def todi_grad(s, t, q, keep, *, beta):  # d = t − s, α = σ(βd); g = −αp + (1−α) q (1 − d)
    d = t - s
    alpha = torch.sigmoid(d * beta)
    ap = t.exp().mul_(alpha)
    omq = alpha.neg_().add_(1.0).mul_(q)  # (1 − α) q, in α's buffer
    f = (ap - omq).mul_(d)
    return f, d.neg_().add_(1.0).mul_(omq).sub_(ap)


def todi_alpha_terms(s: Tensor, t: Tensor, keep=None, *, beta: float) -> Tensor:
    """p·α per entry: summed, the teacher-weighted mean ToDi weight E_{i~p}[α_i] in [0, 1]
    (near 1: ToDi acts like FKL where the teacher's mass is; near 0: like RKL)."""
    return t.exp() * todi_weight(s, t, beta)


# ---- GKD's generalized JSD (Agarwal et al., ICLR 2024; TRL's generalized_jsd_loss) --------

def gjsd_terms(s: Tensor, t: Tensor, keep=None, *, beta: float) -> Tensor:
    """β p (log p − log m) + (1−β) q (log q − log m), m = βp + (1−β)q, for 0 < β < 1."""
    log_m = log_mix(t, s, beta)
    return beta * t.exp() * (t - log_m) + (1.0 - beta) * s.exp() * (s - log_m)


def gjsd_grad(s, t, q, keep, *, beta):  # g = (1−β) q (s − log m): the ∂m/∂s terms cancel
    p = t.exp()
    log_m = log_clamped((q * (1.0 - beta)).add_(p, alpha=beta))
    gs = s - log_m
    f = p.mul_(log_m.neg_().add_(t)).mul_(beta).add_(q * gs, alpha=1.0 - beta)
    return f, gs.mul_(q).mul_(1.0 - beta)


def _gjsd_limit(p: dict):
    # TRL's convention: the end points are the plain KLs (the mixture formula tends to β·FKL there)
    return {0.0: ("forward_kl", {}), 1.0: ("reverse_kl", {})}.get(p["beta"])


# ---- ABKD's α-β divergence (Wang et al., ICML 2025; Cichocki et al., 2011) ----------------

def ab_terms(s: Tensor, t: Tensor, keep=None, *, alpha: float, beta: float) -> Tensor:
    """−1/(αβ) [p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β)], and its limits where α or β is 0:
    β = 0: [α p^α (t − s) − p^α + q^α] / α²; α = 0: [β q^β (s − t) − q^β + p^β] / β²;
    α = β = 0: (t − s)² / 2."""
    a, b = alpha, beta
    if a and b:
        # Factored around m = max(s, t) so that nothing overflows and p = q gives exactly 0:
        # [·] = e^((a+b)m) [expm1(c·e) − c/(a+b)·expm1((a+b)·e)], e = −|t − s|, c = β where t ≥ s, else α
        e = -(t - s).abs()
        c = torch.where(t >= s, b, a)
        bracket = torch.expm1(c * e) - (c / (a + b)) * torch.expm1((a + b) * e)
        return torch.exp((a + b) * torch.maximum(s, t)) * bracket * (-1.0 / (a * b))
    if a:
        pa = (a * t).exp()
        return (a * pa * (t - s) - pa + (a * s).exp()) / (a * a)
    if b:
        qb = (b * s).exp()
        return (b * qb * (s - t) - qb + (b * t).exp()) / (b * b)
    return 0.5 * (t - s).square()


def ab_grad(s, t, q, keep, *, alpha, beta):
    # g = q^β (q^α − p^α) / α, with the limits q^β (s − t) (α = 0) and s − t (α = β = 0)
    f = ab_terms(s, t, keep, alpha=alpha, beta=beta)
    if alpha:
        g = (alpha * s).exp_().sub_((alpha * t).exp_()).div_(alpha)
    else:
        g = s - t
    if beta:
        g.mul_((beta * s).exp_())
    return f, g


def _ab_limit(p: dict):
    return {(1.0, 0.0): ("forward_kl", {}), (0.0, 1.0): ("reverse_kl", {})}.get((p["alpha"], p["beta"]))


# ---- the registry entries -----------------------------------------------------------------

register(Objective("forward_kl", forward_kl_terms, "KL(p || q)", aliases=("fkl", "kl"),
                   grad=forward_kl_grad, triton="forward_kl"))
register(Objective("reverse_kl", reverse_kl_terms, "KL(q || p)", aliases=("rkl",),
                   grad=reverse_kl_grad, triton="reverse_kl"))
register(Objective("js_divergence", js_terms, "Jensen–Shannon, m = (p + q)/2 (at most log 2)",
                   aliases=("js", "jsd"), grad=js_grad, triton="js_divergence"))
register(Objective("tvd", tvd_terms, "total variation ½ Σ |p − q| (in [0, 1])", aliases=("tv",),
                   grad=tvd_grad, triton="tvd"))
SKEW = Param("skew_lambda", 0.1, **UNIT, flag="--skew-lambda", help="skewed KLs: mixing weight λ of the skewed side")
register(Objective("skewed_forward_kl", skewed_forward_kl_terms, "KL(p || λp + (1−λ)q) (DistiLLM)",
                   aliases=("sfkl",), params=(SKEW,), grad=skewed_forward_kl_grad,
                   reduces_to=_skew_limit("forward_kl"), triton=_skew_triton("skewed_forward_kl"),
                   cases=({"skew_lambda": 0.3}, {"skew_lambda": 0.0}, {"skew_lambda": 1.0})))
register(Objective("skewed_reverse_kl", skewed_reverse_kl_terms, "KL(q || (1−λ)p + λq) (DistiLLM)",
                   aliases=("srkl",), params=(SKEW,), grad=skewed_reverse_kl_grad,
                   reduces_to=_skew_limit("reverse_kl"), triton=_skew_triton("skewed_reverse_kl"),
                   cases=({"skew_lambda": 0.7}, {"skew_lambda": 0.0})))
register(Objective("adaptive_kl", adaptive_kl_terms, "w·FKL + (1−w)·RKL, w from the head/tail gaps (AKL)",
                   aliases=("akl",), grad=adaptive_kl_grad, triton="adaptive_kl",
                   params=(Param("adaptive_kl_alpha", 0.5, **UNIT, flag="--adaptive-kl-alpha",
                                 help="adaptive KL: teacher tail mass α"),),
                   cases=({"adaptive_kl_alpha": 0.2}, {"adaptive_kl_alpha": 0.9})))
register(Objective("ToDi", todi_terms, "α·FKL + (1−α)·RKL per entry, α = σ(β log(p/q)) detached",
                   aliases=("todi",), grad=todi_grad, triton="todi",
                   params=(Param("beta", 1.0, low=0.0, flag="--todi-beta", help="ToDi: α = sigmoid(β·log(p/q))"),),
                   diagnostics={"todi_alpha": todi_alpha_terms}, cases=({"beta": 0.5}, {"beta": 4.0})))
register(Objective("generalized_jsd", gjsd_terms, "β·KL(p || m) + (1−β)·KL(q || m), m = βp + (1−β)q (GKD)",
                   aliases=("gjsd", "gkd"), grad=gjsd_grad, reduces_to=_gjsd_limit, triton="generalized_jsd",
                   params=(Param("beta", 0.5, **UNIT, flag="--gjsd-beta",
                                 help="generalized JSD: teacher weight β of the mixture (0: forward KL, 1: reverse KL)"),),
                   cases=({"beta": 0.2}, {"beta": 0.0})))
register(Objective("ab_divergence", ab_terms, "α-β divergence (ABKD)", aliases=("ab", "abkd"), grad=ab_grad,
                   reduces_to=_ab_limit, triton=lambda p: "ab_divergence" if p["alpha"] and p["beta"] else None,
                   params=(Param("alpha", 0.2, low=0.0, flag="--ab-alpha", help="α-β divergence: α (teacher power)"),
                           Param("beta", 0.7, low=0.0, flag="--ab-beta", help="α-β divergence: β (student power)")),
                   cases=({"alpha": 1.0, "beta": 0.0}, {"alpha": 0.0, "beta": 1.0}, {"alpha": 0.5, "beta": 0.0},
                          {"alpha": 0.0, "beta": 0.0})))
