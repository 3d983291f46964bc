"""Per-token divergences between a teacher distribution p and a student distribution q.

Every objective is a pure function of the two logit tensors ``[..., V]`` that returns a float32
tensor of shape ``[...]``: the divergence at each position, summed over the vocabulary, with no
masking or reduction over positions. Conventions (those of the official ToDi/DSKD code):

* both logits are divided by ``temperature`` before the softmax; there is no T² factor;
* vocabulary entries where either logit is ±inf contribute 0 (a +inf logit is treated like -inf,
  i.e. outside its distribution, instead of turning the whole row into NaN);
* the mixing weights of ToDi and AKL are computed from detached probabilities;
* all math is float32 whatever the input dtype.

Notation: ``t = log p`` (teacher), ``s = log q`` (student), after the temperature.

The functions here are the plain ("reference") implementations: easy to audit, differentiable by
autograd, and the ground truth that the memory-efficient kernels in :mod:`todi.kernels` are tested
against. :func:`divergence` is the entry point that picks an implementation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "DIVERGENCES",
    "ALIASES",
    "PARAMS",
    "IMPLEMENTATIONS",
    "canonical_name",
    "divergence",
    "objective_params",
    "todi_alpha",
]

Temperature = float | Tensor


# --------------------------------------------------------------------------------------------
# Shared preprocessing: temperature, float32, ±inf handling. Every objective goes through here.
# --------------------------------------------------------------------------------------------

def _scaled(logits: Tensor, temperature: Temperature) -> Tensor:
    x = logits.float()
    if isinstance(temperature, Tensor):
        x = x / temperature.to(x.dtype).unsqueeze(-1)
    elif temperature != 1.0:
        x = x / temperature
    # +inf would make the whole softmax row NaN; treat it as "not in the distribution".
    x = x.masked_fill(x == math.inf, -math.inf)
    # A row without a single finite logit has no distribution; give it a dummy one (its entries
    # are all ignored below) so that log_softmax and its backward stay finite.
    dead = x.amax(dim=-1, keepdim=True) == -math.inf
    return torch.where(dead, torch.zeros_like(x), x)


def _log_probs(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature
) -> tuple[Tensor, Tensor, Tensor]:
    """Return (s, t, keep): sanitized log-probabilities ``[..., V]`` and the entries that count.

    ``s``/``t`` are 0 where ``keep`` is False, so that no inf/NaN enters the per-entry terms or
    their gradients (NaN logits are *not* ignored: they propagate, to surface bugs upstream).
    """
    keep = ~(student_logits.isinf() | teacher_logits.isinf())
    s = torch.log_softmax(_scaled(student_logits, temperature), dim=-1)
    t = torch.log_softmax(_scaled(teacher_logits, temperature), dim=-1)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    return torch.where(keep, s, zero), torch.where(keep, t, zero), keep


def _sum_entries(terms: Tensor, keep: Tensor) -> Tensor:
    return torch.where(keep, terms, torch.zeros((), dtype=terms.dtype, device=terms.device)).sum(-1)


# --------------------------------------------------------------------------------------------
# Per-entry terms of the element-wise objectives: functions of (s, t) -> [..., V].
# Kept separate so that tests can differentiate them w.r.t. the student's log-probabilities.
# --------------------------------------------------------------------------------------------

def forward_kl_terms(s: Tensor, t: Tensor) -> Tensor:
    """KL(p || q) per entry: p (log p − log q)."""
    return t.exp() * (t - s)


def reverse_kl_terms(s: Tensor, t: Tensor) -> Tensor:
    """KL(q || p) per entry: q (log q − log p)."""
    return s.exp() * (s - t)


def js_terms(s: Tensor, t: Tensor) -> Tensor:
    """Jensen–Shannon per entry with m = (p + q)/2, computed in log space (exact, no epsilon)."""
    log_m = torch.logaddexp(s, t) - math.log(2.0)
    return 0.5 * (t.exp() * (t - log_m) + s.exp() * (s - log_m))


def tvd_terms(s: Tensor, t: Tensor) -> Tensor:
    """Total variation per entry: |q − p| / 2."""
    return 0.5 * (s.exp() - t.exp()).abs()


def _log_mix(a: Tensor, b: Tensor, weight_a: float) -> Tensor:
    """log(w·e^a + (1−w)·e^b), stable for every w in [0, 1]."""
    log_w = math.log(weight_a) if weight_a > 0 else -math.inf
    log_1mw = math.log1p(-weight_a) if weight_a < 1 else -math.inf
    return torch.logaddexp(a + log_w, b + log_1mw)


def skewed_forward_kl_terms(s: Tensor, t: Tensor, skew_lambda: float) -> Tensor:
    """KL(p || λp + (1−λ)q) per entry (DistiLLM's skew KL)."""
    return t.exp() * (t - _log_mix(t, s, skew_lambda))


def skewed_reverse_kl_terms(s: Tensor, t: Tensor, skew_lambda: float) -> Tensor:
    """KL(q || (1−λ)p + λq) per entry (DistiLLM's skew reverse KL)."""
    return s.exp() * (s - _log_mix(s, t, skew_lambda))


def todi_weight(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """ToDi's per-entry FKL weight α = sigmoid(β (log p − log q)), detached."""
    return torch.sigmoid(beta * (t - s)).detach()


def todi_terms(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """ToDi per entry: α p (log p − log q) + (1 − α) q (log q − log p)."""
    alpha = todi_weight(s, t, beta)
    d = t - s
    return d * (alpha * t.exp() - (1.0 - alpha) * s.exp())


# --------------------------------------------------------------------------------------------
# The objectives: (student_logits, teacher_logits, *, temperature, params) -> [...]
# --------------------------------------------------------------------------------------------

def _elementwise(terms_fn: Callable[..., Tensor], student_logits, teacher_logits, temperature, **p):
    s, t, keep = _log_probs(student_logits, teacher_logits, temperature)
    return _sum_entries(terms_fn(s, t, **p), keep)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0) -> Tensor:
    """KL(p || q) per position."""
    return _elementwise(forward_kl_terms, student_logits, teacher_logits, temperature)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0) -> Tensor:
    """KL(q || p) per position."""
    return _elementwise(reverse_kl_terms, student_logits, teacher_logits, temperature)


def js_divergence(student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0) -> Tensor:
    """Jensen–Shannon divergence per position (natural log, so at most log 2)."""
    return _elementwise(js_terms, student_logits, teacher_logits, temperature)


def tvd(student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0) -> Tensor:
    """Total variation distance per position, in [0, 1]."""
    return _elementwise(tvd_terms, student_logits, teacher_logits, temperature)


def skewed_forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0, skew_lambda: float = 0.1
) -> Tensor:
    """KL(p || λp + (1−λ)q) per position."""
    return _elementwise(skewed_forward_kl_terms, student_logits, teacher_logits, temperature, skew_lambda=skew_lambda)


def skewed_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0, skew_lambda: float = 0.1
) -> Tensor:
    """KL(q || (1−λ)p + λq) per position."""
    return _elementwise(skewed_reverse_kl_terms, student_logits, teacher_logits, temperature, skew_lambda=skew_lambda)


def akl_head_weight(s: Tensor, t: Tensor, keep: Tensor, adaptive_kl_alpha: float) -> Tensor:
    """AKL's weight of the forward KL per position, ``g_head / (g_head + g_tail)``, detached.

    The tail is the set of smallest teacher probabilities whose cumulative mass (ascending
    order) stays ≤ α; gaps |p − q| are summed over the head and the tail. When p == q both gaps
    are 0 (the official code divides 0 by 0); the weight is then 1/2, and FKL = RKL = 0 anyway.
    """
    with torch.no_grad():
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


def adaptive_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: Temperature = 1.0,
    adaptive_kl_alpha: float = 0.5,
) -> Tensor:
    """Adaptive KL (Wu et al., 2024): w_head · FKL + (1 − w_head) · RKL per position."""
    s, t, keep = _log_probs(student_logits, teacher_logits, temperature)
    w_head = akl_head_weight(s, t, keep, adaptive_kl_alpha)
    fkl = _sum_entries(forward_kl_terms(s, t), keep)
    rkl = _sum_entries(reverse_kl_terms(s, t), keep)
    return w_head * fkl + (1.0 - w_head) * rkl


def todi(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0, beta: float = 1.0
) -> Tensor:
    """ToDi per position: Σ_i α_i p_i log(p_i/q_i) + (1 − α_i) q_i log(q_i/p_i).

    With α_i = sigmoid(β log(p_i/q_i)) detached. At β = 1 the *value* equals FKL + RKL (since
    α = p/(p+q)); only the gradient differs. As β → 0 it tends to (FKL + RKL)/2.
    """
    return _elementwise(todi_terms, student_logits, teacher_logits, temperature, beta=beta)


DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "js_divergence": js_divergence,
    "tvd": tvd,
    "skewed_forward_kl": skewed_forward_kl,
    "skewed_reverse_kl": skewed_reverse_kl,
    "adaptive_kl": adaptive_kl,
    "ToDi": todi,
}

ALIASES: dict[str, str] = {
    "fkl": "forward_kl",
    "kl": "forward_kl",
    "rkl": "reverse_kl",
    "js": "js_divergence",
    "jsd": "js_divergence",
    "tv": "tvd",
    "sfkl": "skewed_forward_kl",
    "srkl": "skewed_reverse_kl",
    "akl": "adaptive_kl",
    "todi": "ToDi",
}

# The parameters each objective takes, with their defaults (besides the temperature).
PARAMS: dict[str, dict[str, float]] = {
    "forward_kl": {},
    "reverse_kl": {},
    "js_divergence": {},
    "tvd": {},
    "skewed_forward_kl": {"skew_lambda": 0.1},
    "skewed_reverse_kl": {"skew_lambda": 0.1},
    "adaptive_kl": {"adaptive_kl_alpha": 0.5},
    "ToDi": {"beta": 1.0},
}

# "reference" is this module; the others live in todi.kernels, which also decides what "auto" means
# for a given device.
IMPLEMENTATIONS = ("auto", "reference", "chunked", "triton")


def canonical_name(name: str) -> str:
    """Map an official name or an alias (case-insensitive for aliases) to the official name."""
    if name in DIVERGENCES:
        return name
    key = name.lower() if isinstance(name, str) else name
    if key in ALIASES:
        return ALIASES[key]
    valid = ", ".join(DIVERGENCES) + " (aliases: " + ", ".join(ALIASES) + ")"
    raise ValueError(f"unknown divergence {name!r}; valid names: {valid}")


def _validate(name: str, params: dict, temperature: Temperature) -> dict:
    unknown = set(params) - set(PARAMS[name])
    if unknown:
        takes = ", ".join(PARAMS[name]) or "no parameters"
        raise TypeError(f"divergence {name!r} got unexpected parameter(s) {sorted(unknown)}; it takes {takes}")
    full = {**PARAMS[name], **params}
    for key in ("skew_lambda", "adaptive_kl_alpha"):
        if key in full and not 0.0 <= float(full[key]) <= 1.0:
            raise ValueError(f"{key} must be in [0, 1], got {full[key]}")
    if "beta" in full and not (math.isfinite(float(full["beta"])) and float(full["beta"]) >= 0.0):
        raise ValueError(f"beta must be finite and >= 0, got {full['beta']}")
    if not isinstance(temperature, Tensor) and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return {k: float(v) for k, v in full.items()}


def _check_inputs(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, temperature) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)} (slice both to the shared vocabulary first)"
        )
    if student_logits.dim() < 1 or not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise ValueError("logits must be floating-point tensors of shape [..., V]")
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(student_logits.shape[:-1])}, got {tuple(mask.shape)}")
    if isinstance(temperature, Tensor) and temperature.dim() > 0:
        try:
            torch.broadcast_shapes(temperature.shape, student_logits.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"a temperature tensor must broadcast to {tuple(student_logits.shape[:-1])}, "
                f"got {tuple(temperature.shape)}"
            ) from None


def objective_params(name: str, **available: float) -> dict[str, float]:
    """Pick, from ``available`` settings (e.g. all command-line values), those ``name`` takes."""
    name = canonical_name(name)
    return {k: available[k] for k in PARAMS[name] if k in available and available[k] is not None}


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: Temperature = 1.0,
    mask: Tensor | None = None,
    impl: str = "auto",
    **params: float,
) -> Tensor:
    """The divergence ``name`` at every position: float32 tensor of shape ``logits.shape[:-1]``.

    Args:
        name: an official objective name (see :data:`DIVERGENCES`) or an alias.
        student_logits, teacher_logits: ``[..., V]`` in bf16/fp16/fp32. Gradients flow to the
            student logits (and to the teacher logits if they require grad).
        temperature: a positive float, or a tensor broadcastable to ``logits.shape[:-1]`` (one
            temperature per position, as AdaKD uses). Applied to both sides, no T² factor.
        mask: optional bool ``[...]``; positions where it is False are not computed: their value
            is 0 and they receive no gradient.
        impl: "reference" (this module), "chunked" or "triton" (:mod:`todi.kernels`), or "auto".
        **params: ``beta`` (ToDi), ``skew_lambda`` (skewed KLs), ``adaptive_kl_alpha`` (AKL).
    """
    name = canonical_name(name)
    params = _validate(name, params, temperature)
    _check_inputs(student_logits, teacher_logits, mask, temperature)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLEMENTATIONS)}")
    if impl != "reference":
        from todi import kernels  # local import: the kernels import this module

        impl = kernels.resolve(impl, student_logits)
    if impl != "reference":
        return kernels.divergence(
            name, student_logits, teacher_logits, temperature=temperature, mask=mask, impl=impl, **params
        )
    values = DIVERGENCES[name](student_logits, teacher_logits, temperature=temperature, **params)
    if mask is not None:
        values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return values


@torch.no_grad()
def todi_alpha(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0, beta: float = 1.0
) -> Tensor:
    """Diagnostic: the teacher-weighted mean ToDi weight E_{i~p}[α_i] per position, in [0, 1].

    Near 1: the student underestimates where the teacher puts its mass (ToDi acts like FKL);
    near 0: it overestimates there (ToDi acts like RKL).
    """
    s, t, keep = _log_probs(student_logits, teacher_logits, temperature)
    return _sum_entries(t.exp() * todi_weight(s, t, beta), keep)
