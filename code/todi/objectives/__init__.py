"""Divergence math and the objective registry: the bottom layer (imports nothing else of the package).

* :mod:`todi.objectives.math`: preprocessing shared by every objective (temperature, ±inf, sums);
* :mod:`todi.objectives.registry`: the :class:`Objective` record, :func:`register`, name lookup;
* :mod:`todi.objectives.builtin`: the built-in objectives, registered on import;
* :func:`evaluate`: the reference value of an objective (plain torch, autograd for the gradient).
"""

from __future__ import annotations

from torch import Tensor

from todi.objectives import builtin  # noqa: F401  (registers the built-in objectives)
from todi.objectives.builtin import akl_head_weight, todi_weight
from todi.objectives.math import Temperature, check_logits, log_probs, scaled_logits, sum_entries
from todi.objectives.registry import (
    Objective,
    Param,
    aliases,
    all_objectives,
    canonical_name,
    get,
    register,
    unregister,
)

__all__ = [
    "Objective",
    "Param",
    "Temperature",
    "akl_head_weight",
    "aliases",
    "all_objectives",
    "canonical_name",
    "check_logits",
    "evaluate",
    "evaluate_diagnostic",
    "get",
    "log_probs",
    "reduce",
    "register",
    "scaled_logits",
    "sum_entries",
    "todi_weight",
    "unregister",
]


def reduce(name: str, params: dict[str, float] | None = None) -> tuple[Objective, dict[str, float]]:
    """The record and checked parameters (defaults filled) of what ``name`` computes at ``params``:
    following ``reduces_to`` (a skewed KL at λ = 0 is the plain KL)."""
    objective = get(name)
    full = objective.resolve(params or {})
    for _ in range(8):  # a chain of reductions, never a loop
        target = objective.reduces_to(full) if objective.reduces_to is not None else None
        if target is None:
            return objective, full
        objective = get(target[0])
        full = objective.resolve(target[1])
    raise RuntimeError(f"objective {name!r}: reduces_to does not terminate")


def evaluate(name: str, student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0,
             **params: float) -> Tensor:
    """The reference divergence ``[...]`` (float32) of ``[..., V]`` logits; differentiable by autograd."""
    objective, full = reduce(name, params)
    s, t, keep = log_probs(student_logits, teacher_logits, temperature)
    return sum_entries(objective.terms(s, t, keep, **full), keep)


def evaluate_diagnostic(name: str, diagnostic: str, student_logits: Tensor, teacher_logits: Tensor, *,
                        temperature: Temperature = 1.0, **params: float) -> Tensor:
    """A named diagnostic of an objective per position ``[...]`` (no grad)."""
    objective, full = reduce(name, params)
    s, t, keep = log_probs(student_logits.detach(), teacher_logits.detach(), temperature)
    return sum_entries(objective.diagnostics[diagnostic](s, t, keep, **full), keep)
