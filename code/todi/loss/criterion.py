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
from todi.util.labels import IGNORE_INDEX
from todi.objectives import Temperature, canonical_name
from todi.objectives.math import coarse_log_probs, retemper_log_probs

__all__ = ["DistillationLoss", "KDPlan", "LossOutput", "LossStats", "TokenPlanner", "cross_entropy_sum", "loss_scale"]


@dataclass
class LossStats:
    """A micro-batch's statistics: detached float32 scalars, each a *sum* over its response tokens,
    to be reduced by the caller.

    ce: the cross-entropy; correct: argmax hits; kd: the weighted divergence as it enters the loss
    and kd_tokens: the positions with a KD term (both None without a teacher); planner: what a token
    planner (AdaKD) or the trainer (a top-k cache's tail mass) adds, by name, summed over response tokens.
    """

    ce: Tensor
    correct: Tensor
    kd: Tensor | None = None
    kd_tokens: Tensor | None = None
    planner: dict[str, Tensor] = field(default_factory=dict)

    def entries(self) -> dict[str, Tensor]:
        """Every statistic that is set, by name (the planner's included): for comparing and logging."""
        fields = {"ce": self.ce, "correct": self.correct, "kd": self.kd, "kd_tokens": self.kd_tokens}
        return {**{k: v for k, v in fields.items() if v is not None}, **self.planner}


@dataclass
class LossOutput:
    """What one micro-batch contributes.

    loss: scalar float32, the summed loss over response tokens (differentiable).
    num_tokens: scalar int64, the number of response tokens.
    stats: its :class:`LossStats` (sums over response tokens).
    diagnostics: with ``diagnostics=True``, the objective's named diagnostics (its registry
        entry, e.g. ``todi_alpha``), each a sum over the KD positions (divide by ``stats.kd_tokens``).
    """

    loss: Tensor
    num_tokens: Tensor
    stats: LossStats
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


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
    """Decides the KD plan of a micro-batch (implemented by :class:`todi.loss.adakd.AdaKD`). The criterion
    owns its planner; the trainer reaches it as ``criterion.planner`` to step, log and checkpoint it."""

    def plan(
        self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float, *, labels: Tensor
    ) -> KDPlan: ...

    def update(self, kd_sum: Tensor, kd_tokens: Tensor) -> None:
        """Once per optimizer step, with the step's summed KD loss and its number of KD tokens."""

    def log_stats(self) -> dict[str, float]:
        """What to log at a log interval, by metric name."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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
        impl: loss implementation ("auto", "reference", "chunked", "triton"); every one computes
            the same per-row CE + KD (:func:`todi.kernels.autograd`): "reference" under
            autograd, the others in one memory-efficient pass with the gradient computed in the forward.
        planner: optional :class:`TokenPlanner` (AdaKD) choosing tokens, temperatures and weights.
        vocab_size: the number of leading vocabulary entries the divergence compares, the ids both
            output layers and both tokenizers define (:func:`todi.models.shared_vocab_size`); the
            rows beyond it (padding rows, tokens one model cannot predict) are left out of KD, of
            AdaKD's scores and of every kernel. None: min(V_s, V_t) of the logits.
        **params: the objective's parameters (see its registry entry); checked here.
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
        vocab_size: int | None = None,
        **params: float,
    ) -> None:
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1 (or None), got {vocab_size}")
        if not 0.0 <= kd_rate <= 1.0:
            raise ValueError(f"kd_rate must be in [0, 1], got {kd_rate}")
        self.objective = canonical_name(objective) if objective is not None else None
        if self.objective is None and kd_rate > 0:
            raise ValueError("kd_rate > 0 needs a KD objective; use objective=None only with kd_rate=0 (SFT)")
        kernels.check_impl(impl)
        # unknown or out-of-range parameters fail here, with or without a teacher
        spec = kernels.LossSpec.make(self.objective, params) if self.objective is not None else kernels.LossSpec(None)
        self.spec = spec if kd_rate > 0 else kernels.LossSpec(None)
        self.kd_rate = float(kd_rate)
        self.temperature = float(temperature)
        self.impl = impl
        self.planner = planner
        self.ignore_index = ignore_index
        self.params = params
        self.vocab_size = vocab_size

    def _kd_vocab(self, v_student: int, teacher_logits: Tensor | None) -> int:
        """The compared vocabulary: ``vocab_size`` (checked against both logits; no teacher logits:
        sparse targets) or min(V_s, V_t); all of the student's when the loss uses no teacher."""
        if not self.uses_teacher:
            return v_student
        v_teacher = None if teacher_logits is None else teacher_logits.shape[-1]
        limit = v_student if v_teacher is None else min(v_student, v_teacher)
        if self.vocab_size is None:
            return limit
        if self.vocab_size > limit:
            teacher = "" if v_teacher is None else f", teacher {v_teacher}"
            raise ValueError(f"vocab_size {self.vocab_size} exceeds the logits' vocabulary "
                             f"(student {v_student}{teacher})")
        return self.vocab_size

    @property
    def uses_teacher(self) -> bool:
        return self.objective is not None and self.kd_rate > 0

    def __call__(self, student_logits: Tensor, labels: Tensor, teacher_logits: "Tensor | kernels.TeacherHead | None" = None, *,
                 teacher_sparse: "kernels.SparseTargets | None" = None, diagnostics: bool = False,
                 ce: bool = True) -> LossOutput:
        """Loss of one micro-batch.

        Args:
            student_logits: ``[B, L, V_s]``.
            labels: ``[B, L]`` int64, aligned with the logits, ``ignore_index`` where not supervised.
            teacher_logits: ``[B, L, V_t]``, required when the loss uses a teacher (unless
                ``teacher_sparse``); or a :class:`todi.kernels.TeacherHead` (the teacher's final hidden
                states and output layer, from a hidden-state cache), whose logits every path computes a
                chunk of rows at a time. Both are compared over their first ``vocab_size`` entries
                (default min(V_s, V_t), for vocabularies padded to different sizes); the caller
                checks that the padding is all that differs (:func:`todi.models.shared_vocab_size`).
            teacher_sparse: precomputed teacher targets instead of its logits (a teacher cache):
                ids ``[B, L, k]``, log-probabilities ``[B, L, k + 1]`` (:class:`todi.kernels.SparseTargets`).
            diagnostics: also compute the objective's diagnostics (e.g. mean ToDi α).
            ce: False leaves the cross-entropy out of the loss (still computed as a statistic): a batch
                of sampled responses (on-policy KD), whose tokens are no targets to imitate.
        """
        if teacher_sparse is not None:
            teacher_logits = None  # the targets stand for the teacher
        self._check_shapes(student_logits.shape, labels, teacher_logits, teacher_sparse, "logits")
        vocab = self._kd_vocab(student_logits.shape[-1], teacher_logits)
        plan = self._plan(student_logits[..., :vocab], labels, teacher_logits, teacher_sparse)
        inputs = self._inputs(kernels.flatten_rows(student_logits), vocab, labels, teacher_logits, plan, teacher_sparse,
                              ce=ce)
        rows = kernels.per_row_loss(self.impl, self.spec, inputs, want_diagnostics=diagnostics)
        return self._output(rows, labels, plan)

    def loss_from_hidden(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                         teacher_logits: "Tensor | kernels.TeacherHead | None" = None, *, diagnostics: bool = False,
                         chunk_size: int | None = None, ce: bool = True) -> LossOutput:
        """The same loss with the student's logits ``hidden @ weight.T + bias`` never materialised
        (:func:`todi.kernels.fused_linear_loss`): ``hidden`` ``[B, L, H]``, ``weight`` ``[V_s, H]``."""
        if self.planner is not None:
            raise ValueError("the fused lm_head path does not support a token planner (AdaKD needs the full logits)")
        self._check_shapes(hidden.shape, labels, teacher_logits, None, "hidden states")
        vocab = self._kd_vocab(weight.shape[0], teacher_logits)
        h = hidden.reshape(-1, hidden.shape[-1])
        plan = self._plan(None, labels, teacher_logits, None)
        inputs = self._inputs(h, vocab, labels, teacher_logits, plan, None, ce=ce)
        rows = kernels.fused_linear_loss(self.impl, self.spec, h, weight, bias, inputs, want_diagnostics=diagnostics,
                                         chunk_size=chunk_size)
        return self._output(rows, labels, plan)

    def _check_shapes(self, student_shape, labels: Tensor, teacher_logits: Tensor | None,
                      sparse: "kernels.SparseTargets | None", what: str) -> None:
        if sparse is not None:
            self._check_sparse(sparse, labels)
        if student_shape[:-1] != labels.shape:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {what} {tuple(student_shape)}")
        if self.uses_teacher and sparse is None:
            if teacher_logits is None:
                raise ValueError(f"objective {self.objective} with kd_rate {self.kd_rate} needs teacher logits")
            if teacher_logits.shape[:-1] != student_shape[:-1]:
                raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match {what} "
                                 f"{tuple(student_shape)} in their leading dimensions")

    def _check_sparse(self, sparse: "kernels.SparseTargets", labels: Tensor) -> None:
        if not self.uses_teacher:
            raise ValueError("sparse teacher targets need a KD objective with kd_rate > 0")
        k = sparse.ids.shape[-1]
        if sparse.ids.shape[:-1] != labels.shape or sparse.log_probs.shape != (*labels.shape, k + 1):
            raise ValueError(f"sparse teacher targets {tuple(sparse.ids.shape)} / {tuple(sparse.log_probs.shape)} "
                             f"do not match labels {tuple(labels.shape)} (ids [..., k], log-probs [..., k + 1])")

    def _plan(self, student_kd: Tensor | None, labels: Tensor, teacher_logits: Tensor | None,
              sparse: "kernels.SparseTargets | None") -> KDPlan | None:
        """Which positions get a KD term, at which temperature and weight (None without a teacher):
        the response positions at the KD temperature, or what the planner decides from the student's
        logits over the compared vocabulary ``student_kd`` and the teacher's."""
        if not self.uses_teacher:
            return None
        mask = labels.ne(self.ignore_index)
        if self.planner is None:
            return KDPlan(mask=mask, temperature=self.temperature)
        t = self.temperature
        if sparse is None:
            if isinstance(teacher_logits, Tensor):  # a TeacherHead's planner reads its first V logits itself
                teacher_logits = teacher_logits[..., : student_kd.shape[-1]]
            return self.planner.plan(student_kd, teacher_logits, mask, t, labels=labels)
        with torch.no_grad():  # difficulty on the coarsened distributions, as "logits" at T
            student = coarse_log_probs(student_kd.detach(), sparse.ids, t) * t
            teacher = retemper_log_probs(sparse.log_probs.float(), sparse.temperature, t) * t
        return self.planner.plan(student, teacher, mask, t, labels=labels)

    def _inputs(self, student_rows: Tensor, vocab: int, labels: Tensor, teacher_logits: Tensor | None,
                plan: KDPlan | None, sparse: "kernels.SparseTargets | None", *, ce: bool = True) -> "kernels.LossInputs":
        """The per-row inputs of CE + KD, assembled in this one place for every implementation."""
        shape, device = labels.shape, student_rows.device
        kd_weight: float | Tensor = 0.0
        teacher, flat_sparse, kd_mask, temperature = None, None, None, 1.0
        if self.uses_teacher:
            if sparse is None:
                teacher = kernels.flatten_rows(teacher_logits)
            else:
                k = sparse.ids.shape[-1]
                flat_sparse = kernels.SparseTargets(sparse.ids.reshape(-1, k), sparse.log_probs.reshape(-1, k + 1),
                                                    sparse.temperature)
            kd_mask, temperature = plan.mask.reshape(-1), plan.temperature
            kd_weight = self.kd_rate if plan.weight is None else self.kd_rate * plan.weight
        return kernels.LossInputs(
            student=student_rows, teacher=teacher, vocab=vocab, labels=labels.reshape(-1), kd_mask=kd_mask,
            temperature=kernels.broadcast_rows(temperature, shape, device),
            kd_weight=kernels.broadcast_rows(kd_weight, shape, device),
            ce_weight=1.0 - self.kd_rate if self.kd_rate < 1.0 and ce else 0.0, ignore_index=self.ignore_index,
            sparse=flat_sparse,
        )

    def _output(self, rows: "kernels.PerRowLoss", labels: Tensor, plan: KDPlan | None) -> LossOutput:
        """The micro-batch's LossOutput from its per-row losses: sums, statistics, diagnostics."""
        stats = LossStats(ce=rows.ce.sum(), correct=rows.correct.sum())
        if plan is not None:
            stats.kd = (rows.kd if plan.weight is None else rows.kd * plan.weight.reshape(-1).float()).sum()
            stats.kd_tokens = plan.mask.sum().float()
            stats.planner = dict(plan.stats)
        diagnostics = {name: value.sum() for name, value in rows.diagnostics.items()}
        return LossOutput(loss=rows.loss.sum(), num_tokens=labels.ne(self.ignore_index).sum(), stats=stats,
                          diagnostics=diagnostics)
