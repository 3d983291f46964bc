"""The training loss: (1 − kd_rate)·CE + kd_rate·KD over response tokens.

The criterion returns *sums* over the response tokens of a micro-batch and their count. The trainer
divides by the number of response tokens of the whole optimizer step (all gradient-accumulation
micro-batches on all data-parallel ranks), as the official ToDi/DSKD code does, so that every
response token of a step weighs the same however the batch is split. :func:`loss_scale` gives the
factor that does this under DeepSpeed, which itself divides by the accumulation steps and averages
gradients over ranks.

Labels are aligned with the logits (``labels[..., i]`` is the target of ``logits[..., i, :]``; the
data pipeline shifts them) and ``ignore_index`` marks prompt and padding positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from todi import kernels
from todi.divergences import IMPLEMENTATIONS, PARAMS, Temperature, canonical_name, divergence, todi_alpha

__all__ = ["DistillationLoss", "KDPlan", "LossOutput", "TokenPlanner", "loss_scale"]

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    """What one micro-batch contributes.

    loss: scalar float32, the summed loss over response tokens (differentiable).
    num_tokens: scalar int64, the number of response tokens.
    stats: detached float32 scalars, each a *sum* over response tokens, to be reduced by the caller:
        ``ce`` (cross-entropy), ``kd`` (the weighted divergence as it enters the loss),
        ``correct`` (argmax hits); with a teacher also ``kd_tokens`` (positions with a KD term) and
        ``todi_alpha`` (with ``diagnostics=True`` and ToDi; a sum over the KD positions), plus what
        a token planner (AdaKD) adds.
    """

    loss: Tensor
    num_tokens: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class KDPlan:
    """Which positions get a KD term, at which temperature, with which weight.

    mask: bool ``[...]``, a subset of the response positions.
    temperature: a float, or a tensor ``[...]`` (per-position temperatures).
    weight: optional float32 ``[...]`` multiplying each position's divergence (e.g. τ²).
    stats: detached scalars for logging, summed over micro-batches by the trainer.
    """

    mask: Tensor
    temperature: Temperature
    weight: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)


class TokenPlanner(Protocol):
    """Decides the KD plan of a micro-batch (implemented by :class:`todi.adakd.AdaKD`)."""

    def plan(
        self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float, *, labels: Tensor
    ) -> KDPlan: ...


def loss_scale(global_tokens: Tensor | int, grad_accum_steps: int, world_size: int) -> Tensor | float:
    """Factor that turns a micro-batch's summed loss into its share of the per-token mean.

    DeepSpeed divides each micro-batch loss by ``grad_accum_steps`` and data parallelism averages
    gradients over ``world_size`` ranks, so the summed loss is multiplied by
    ``grad_accum_steps · world_size / global_tokens``. A step without response tokens gets a finite
    factor (its loss is 0 anyway).
    """
    if isinstance(global_tokens, Tensor):
        return (grad_accum_steps * world_size) / global_tokens.clamp_min(1).to(torch.float32)
    return grad_accum_steps * world_size / max(int(global_tokens), 1)


def cross_entropy_sum(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Summed token cross-entropy over the supervised positions, computed in float32.

    No boolean indexing: that would make the host wait for the device on every micro-batch. A
    batch without supervised positions gives 0, still connected to the graph.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, labels.reshape(-1), ignore_index=ignore_index, reduction="sum")


class DistillationLoss:
    """(1 − kd_rate)·CE + kd_rate·Σ_tokens D(teacher, student), summed over response tokens.

    Args:
        objective: a divergence name (official or alias), or None for plain SFT (cross-entropy).
        kd_rate: weight of the divergence; 0 gives SFT through the same code path.
        temperature: KD temperature, applied to both logits (no T² factor, as the official code).
        impl: loss implementation ("auto", "reference", "chunked", "triton"). Except for
            "reference", the cross-entropy and the divergence are computed together by
            :mod:`todi.kernels` (one memory-efficient pass over the logits, gradient computed in the
            forward); "reference" is F.cross_entropy plus the plain divergences under autograd.
        planner: optional :class:`TokenPlanner` (AdaKD) choosing tokens, temperatures and weights.
        **params: objective parameters (beta, skew_lambda, adaptive_kl_alpha); only those the
            objective takes are allowed.
    """

    def __init__(
        self,
        objective: str | None = None,
        *,
        kd_rate: float = 0.5,
        temperature: float = 1.0,
        impl: str = "auto",
        planner: TokenPlanner | None = None,
        ignore_index: int = IGNORE_INDEX,
        **params: float,
    ) -> None:
        if not 0.0 <= kd_rate <= 1.0:
            raise ValueError(f"kd_rate must be in [0, 1], got {kd_rate}")
        self.objective = canonical_name(objective) if objective is not None else None
        if self.objective is None and kd_rate > 0:
            raise ValueError("kd_rate > 0 needs a KD objective; use objective=None only with kd_rate=0 (SFT)")
        if self.objective is not None:
            unknown = set(params) - set(PARAMS[self.objective])
            if unknown:
                raise TypeError(f"{self.objective} does not take {sorted(unknown)}")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLEMENTATIONS)}")
        self.kd_rate = float(kd_rate)
        self.temperature = float(temperature)
        self.impl = impl
        self.planner = planner
        self.ignore_index = ignore_index
        self.params = params

    @property
    def uses_teacher(self) -> bool:
        return self.objective is not None and self.kd_rate > 0

    def __call__(
        self,
        student_logits: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None = None,
        *,
        diagnostics: bool = False,
    ) -> LossOutput:
        """Loss of one micro-batch.

        Args:
            student_logits: ``[B, L, V_s]``.
            labels: ``[B, L]`` int64, aligned with the logits, ``ignore_index`` where not supervised.
            teacher_logits: ``[B, L, V_t]``, required when the loss uses a teacher. If V_s ≠ V_t
                (vocabularies padded to different sizes), both are compared over the first
                min(V_s, V_t) entries; the caller checks that the padding is all that differs.
            diagnostics: also compute costlier statistics (mean ToDi α).
        """
        if student_logits.shape[:-1] != labels.shape:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(student_logits.shape)}")
        if self.uses_teacher:
            if teacher_logits is None:
                raise ValueError(f"objective {self.objective} with kd_rate {self.kd_rate} needs teacher logits")
            if teacher_logits.shape[:-1] != student_logits.shape[:-1]:
                raise ValueError(
                    f"teacher logits {tuple(teacher_logits.shape)} do not match student logits "
                    f"{tuple(student_logits.shape)} in their leading dimensions"
                )
        impl = kernels.resolve(self.impl, student_logits)
        if impl == "reference":
            return self._reference(student_logits, labels, teacher_logits, diagnostics)
        return self._rows(impl, student_logits, labels, teacher_logits, diagnostics)

    def _plan(self, student_kd: Tensor, teacher_kd: Tensor, mask: Tensor, labels: Tensor) -> KDPlan:
        if self.planner is not None:
            return self.planner.plan(student_kd, teacher_kd, mask, self.temperature, labels=labels)
        return KDPlan(mask=mask, temperature=self.temperature)

    def _rows(self, impl: str, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, diagnostics: bool) -> LossOutput:
        """CE and KD in one memory-efficient pass over the logits (:mod:`todi.kernels`)."""
        mask = labels.ne(self.ignore_index)
        shape = labels.shape
        student = kernels.as_rows(student_logits)
        ce_weight = 1.0 - self.kd_rate if self.kd_rate < 1.0 else 0.0
        plan, spec, teacher, vocab = None, kernels.LossSpec(None), None, student.shape[1]
        kd_weight: float | Tensor = 0.0
        if self.uses_teacher:
            vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
            plan = self._plan(student_logits[..., :vocab], teacher_logits[..., :vocab], mask, labels)
            spec = kernels.LossSpec.make(self.objective, self.params)
            teacher = kernels.as_rows(teacher_logits)
            kd_weight = self.kd_rate if plan.weight is None else self.kd_rate * plan.weight
        inp = kernels.RowsInput(
            student=student,
            teacher=teacher,
            vocab=vocab,
            labels=labels.reshape(-1),
            kd_mask=plan.mask.reshape(-1) if plan is not None else None,
            temperature=kernels.per_row(plan.temperature if plan is not None else 1.0, shape, student.device),
            kd_weight=kernels.per_row(kd_weight, shape, student.device),
            ce_weight=ce_weight,
            ignore_index=self.ignore_index,
        )
        rows = kernels.loss_rows(impl, spec, inp, want_alpha=diagnostics and self.objective == "ToDi")
        stats = {"ce": rows.ce.sum(), "correct": rows.correct.sum()}
        if plan is not None:
            kd_rows = rows.kd if plan.weight is None else rows.kd * plan.weight.reshape(-1).float()
            stats["kd"] = kd_rows.sum()
            stats["kd_tokens"] = plan.mask.sum().float()
            stats.update(plan.stats)
            if rows.alpha is not None:
                stats["todi_alpha"] = rows.alpha.sum()
        return LossOutput(loss=rows.loss.sum(), num_tokens=mask.sum(), stats=stats)

    def _reference(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, diagnostics: bool) -> LossOutput:
        """The plain path: F.cross_entropy and the reference divergences under autograd."""
        mask = labels.ne(self.ignore_index)
        num_tokens = mask.sum()

        if self.kd_rate < 1.0:
            ce = cross_entropy_sum(student_logits, labels, self.ignore_index)
        else:
            with torch.no_grad():
                ce = cross_entropy_sum(student_logits, labels, self.ignore_index)
        with torch.no_grad():
            correct = (student_logits.argmax(-1).eq(labels) & mask).sum().float()
        stats = {"ce": ce.detach().float(), "correct": correct}

        if not self.uses_teacher:
            return LossOutput(loss=ce, num_tokens=num_tokens, stats=stats)

        vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
        student_kd = student_logits[..., :vocab]
        teacher_kd = teacher_logits[..., :vocab]
        plan = self._plan(student_kd, teacher_kd, mask, labels)
        per_token = divergence(
            self.objective,
            student_kd,
            teacher_kd,
            temperature=plan.temperature,
            mask=plan.mask,
            impl="reference",
            **self.params,
        )
        if plan.weight is not None:
            per_token = per_token * plan.weight
        kd = per_token.sum()
        loss = (1.0 - self.kd_rate) * ce + self.kd_rate * kd if self.kd_rate < 1.0 else kd
        stats["kd"] = kd.detach()
        stats["kd_tokens"] = plan.mask.sum().float()
        stats.update(plan.stats)
        if diagnostics and self.objective == "ToDi":
            alpha = todi_alpha(student_kd, teacher_kd, temperature=plan.temperature, beta=self.params.get("beta", 1.0))
            stats["todi_alpha"] = torch.where(plan.mask, alpha, 0.0).sum()
        return LossOutput(loss=loss, num_tokens=num_tokens, stats=stats)
