"""The public entry to the divergences: ``divergence(name, student_logits, teacher_logits, ...)``.

The objectives themselves (their math, parameters and diagnostics) are records in the registry of
:mod:`todi.objectives`; this module is the one public way to evaluate them, through the plain
reference or a memory-efficient kernel of :mod:`todi.kernels`. Conventions (those of the official
ToDi/DSKD code): both logits are divided by ``temperature`` before the softmax, with no T² factor;
vocabulary entries where either logit is ±inf contribute 0; ToDi's and AKL's weights are detached;
all math is float32 whatever the input dtype.

:data:`DIVERGENCES` maps every registered official name to its reference function
``fn(student_logits, teacher_logits, *, temperature=1.0, **params) -> [...]``; it reads the
registry live, so objectives registered later (plug-ins) appear in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Callable, Iterator

import torch
from torch import Tensor

from todi import kernels
from todi.kernels import IMPLEMENTATIONS
from todi.objectives import (
    Temperature,
    aliases,
    all_objectives,
    canonical_name,
    check_logits,
    evaluate,
    evaluate_diagnostic,
    get,
)

__all__ = [
    "ALIASES",
    "DIVERGENCES",
    "IMPLEMENTATIONS",
    "PARAMS",
    "Temperature",
    "canonical_name",
    "divergence",
    "objective_params",
    "todi_alpha",
]


class _Registered(Mapping):
    """A read-only live view of the registry: official name → ``value(record)``."""

    def __init__(self, value: Callable):
        self._value = value

    def __getitem__(self, name: str):
        if not isinstance(name, str):
            raise KeyError(name)
        try:
            record = get(name) if name == canonical_name(name) else None
        except ValueError:
            record = None
        if record is None:
            raise KeyError(name)
        return self._value(record)

    def __iter__(self) -> Iterator[str]:
        return (o.name for o in all_objectives())

    def __len__(self) -> int:
        return sum(1 for _ in all_objectives())


DIVERGENCES: Mapping[str, Callable[..., Tensor]] = _Registered(lambda o: partial(evaluate, o.name))
PARAMS: Mapping[str, dict[str, float]] = _Registered(lambda o: o.defaults)


class _Aliases(Mapping):
    def __getitem__(self, alias):
        return aliases()[alias]

    def __iter__(self):
        return iter(aliases())

    def __len__(self):
        return len(aliases())


ALIASES: Mapping[str, str] = _Aliases()


def objective_params(name: str, **available: float) -> dict[str, float]:
    """Pick, from ``available`` settings, the parameters ``name`` takes (by keyword)."""
    record = get(name)
    return {p.name: available[p.name] for p in record.params if available.get(p.name) is not None}


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
        impl: "reference" (plain torch under autograd), "chunked", "triton", or "auto".
        **params: the objective's parameters (its registry entry: e.g. ``beta`` for ToDi and the
            generalized JSD, ``skew_lambda``, ``adaptive_kl_alpha``, ``alpha``/``beta`` for ABKD).
    """
    spec = kernels.LossSpec.make(name, params)  # validates the name and the parameters
    check_logits(student_logits, teacher_logits, mask, temperature)
    shape = student_logits.shape[:-1]
    student, teacher = kernels.flatten_rows(student_logits), kernels.flatten_rows(teacher_logits)
    n = student.shape[0]
    kd_mask = torch.ones(n, dtype=torch.bool, device=student.device) if mask is None else \
        mask.to(device=student.device, dtype=torch.bool).reshape(-1)
    inputs = kernels.LossInputs(
        student=student, teacher=teacher, vocab=student.shape[1], labels=None, kd_mask=kd_mask,
        temperature=kernels.broadcast_rows(temperature, shape, student.device), kd_weight=1.0, ce_weight=0.0,
    )
    return kernels.per_row_loss(impl, spec, inputs).loss.reshape(shape)


@torch.no_grad()
def todi_alpha(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Temperature = 1.0, beta: float = 1.0
) -> Tensor:
    """Diagnostic: the teacher-weighted mean ToDi weight E_{i~p}[α_i] per position, in [0, 1].

    Near 1: the student underestimates where the teacher puts its mass (ToDi acts like FKL);
    near 0: it overestimates there (ToDi acts like RKL).
    """
    return evaluate_diagnostic("ToDi", "todi_alpha", student_logits, teacher_logits, temperature=temperature, beta=beta)
