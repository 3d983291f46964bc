"""Shared preprocessing of every objective: temperature, float32, ±inf handling, masked sums.

Notation used by all objectives: ``s = log q`` (student) and ``t = log p`` (teacher), the
log-probabilities after dividing both logits by the temperature. Entries where either logit is
±inf do not count: ``keep`` marks the others, and ``s``/``t`` are 0 outside it so that no inf/NaN
enters a per-entry term or its gradient (NaN logits are *not* ignored: they propagate, to surface
bugs upstream). This module imports nothing from the package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "TINY",
    "Temperature",
    "check_logits",
    "coarse_log_probs",
    "log_clamped",
    "log_mix",
    "log_probs",
    "retemper_log_probs",
    "scaled_logits",
    "sum_entries",
]

Temperature = float | Tensor

TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32


def scaled_logits(logits: Tensor, temperature: Temperature) -> Tensor:
    """float32 ``logits / temperature`` with +inf → −inf and rows without a finite entry zeroed.

    A +inf would make the whole softmax row NaN, so it is treated as "not in the distribution". A row
    without a single finite logit has no distribution; it gets a dummy one (its entries are all
    ignored) so that log_softmax and its backward stay finite.
    """
    x = logits.float()
    if isinstance(temperature, Tensor):
        x = x / temperature.to(x.dtype).unsqueeze(-1)
    elif temperature != 1.0:
        x = x / temperature
    x = x.masked_fill(x == math.inf, -math.inf)
    dead = x.amax(dim=-1, keepdim=True) == -math.inf
    return torch.where(dead, torch.zeros_like(x), x)


def log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature) -> tuple[Tensor, Tensor, Tensor]:
    """(s, t, keep): sanitized log-probabilities ``[..., V]`` and the bool entries that count."""
    keep = ~(student_logits.isinf() | teacher_logits.isinf())
    s = torch.log_softmax(scaled_logits(student_logits, temperature), dim=-1)
    t = torch.log_softmax(scaled_logits(teacher_logits, temperature), dim=-1)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    return torch.where(keep, s, zero), torch.where(keep, t, zero), keep


def sum_entries(terms: Tensor, keep: Tensor | None) -> Tensor:
    """Σ over the vocabulary of the kept entries: ``[..., V]`` → ``[...]``."""
    if keep is None:
        return terms.sum(-1)
    return torch.where(keep, terms, torch.zeros((), dtype=terms.dtype, device=terms.device)).sum(-1)


def log_mix(a: Tensor, b: Tensor, weight_a: float) -> Tensor:
    """log(w·e^a + (1−w)·e^b), stable for every w in [0, 1]."""
    log_w = math.log(weight_a) if weight_a > 0 else -math.inf
    log_1mw = math.log1p(-weight_a) if weight_a < 1 else -math.inf
    return torch.logaddexp(a + log_w, b + log_1mw)


def log_clamped(mix: Tensor) -> Tensor:
    """log of a mixture of probabilities, clamped at the smallest normal float (a new tensor).

    Where the mixture underflows, every term that multiplies its log has a probability factor
    that underflowed too, so the clamp only keeps 0·(−inf) = NaN out.
    """
    return mix.clamp_min(TINY).log_()


def check_logits(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                 temperature: Temperature = 1.0) -> None:
    """Shapes and dtypes that every divergence needs; a clear ValueError otherwise."""
    if not isinstance(student_logits, Tensor) or not isinstance(teacher_logits, Tensor):
        raise TypeError("student_logits and teacher_logits must be tensors of shape [..., V]")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)} (slice both to the shared vocabulary first)"
        )
    if student_logits.dim() < 1 or not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise ValueError("logits must be floating-point tensors of shape [..., V]")
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(student_logits.shape[:-1])}, got {tuple(mask.shape)}")
    if isinstance(temperature, Tensor):
        if temperature.dim() > 0:
            try:
                torch.broadcast_shapes(temperature.shape, student_logits.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"a temperature tensor must broadcast to {tuple(student_logits.shape[:-1])}, "
                    f"got {tuple(temperature.shape)}"
                ) from None
    elif not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")


def coarse_log_probs(logits: Tensor, ids: Tensor, temperature: Temperature) -> Tensor:
    """The distribution of ``logits / temperature`` coarsened to the entries ``ids`` plus one bucket
    for all the others: float32 log-probabilities ``[..., k + 1]`` (the last is the bucket's log-mass,
    −inf when ``ids`` covers every entry).

    ``logits``: ``[..., V]``; ``ids``: int64 ``[..., k]``, distinct per position. Differentiable.
    """
    x = scaled_logits(logits, temperature)
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    top = x.gather(-1, ids) - lse
    rest = torch.logsumexp(x.scatter(-1, ids, -math.inf), dim=-1, keepdim=True) - lse
    return torch.cat([top, rest], dim=-1)


def retemper_log_probs(log_probs_at: Tensor, from_temperature: float, to_temperature: Temperature) -> Tensor:
    """Log-probabilities at ``from_temperature`` ``[..., K]`` re-tempered to ``to_temperature``:
    log_softmax(from/to · log p). Exact for a full distribution; for a coarsened one (a tail bucket)
    it treats the bucket as a single entry (an approximation, used only when the two differ)."""
    if not isinstance(to_temperature, Tensor) and to_temperature == from_temperature:
        return log_probs_at
    ratio = from_temperature / (to_temperature.unsqueeze(-1) if isinstance(to_temperature, Tensor) else to_temperature)
    return torch.log_softmax(log_probs_at * ratio, dim=-1)
