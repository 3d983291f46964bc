"""What a per-row loss computes (the objective with its parameters, the inputs of one call), what it
returns (:class:`PerRowLoss`) and how many rows a chunk of it holds.

Every backend (chunked torch, Triton) computes, for each row ``r`` of a ``[N, V_s]`` student and a
``[N, V_t]`` teacher logit matrix,

* ``kd[r]``  = D(teacher[r, :vocab], student[r, :vocab]) at temperature ``temperature[r]``
  (the semantics of :mod:`todi.objectives`), 0 where ``kd_mask[r]`` is False;
* ``ce[r]``  = cross-entropy of ``student[r, :]`` (all V_s entries, temperature 1) against
  ``labels[r]``, 0 where the label is ``ignore_index``;
* ``correct[r]`` = argmax of ``student[r, :]`` equals the label (and the label is valid);
* on request, each of the objective's named diagnostics (e.g. ToDi's Σ_i p_i α_i);

and the gradient of ``Σ_r ce_weight·ce[r] + kd_weight[r]·kd[r]`` (:meth:`LossInputs.combine`)
with respect to the student logits, in the student's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from todi.kernels.teacher_head import TeacherHead, teacher_rows
from todi.util.labels import IGNORE_INDEX
from todi.objectives import Objective, get, reduce

__all__ = [
    "FUSED_HEAD_FACTOR", "TEMPORARY_BYTES", "LossInputs", "LossSpec", "PerRowLoss",
    "SparseTargets", "rows_per_chunk", "take_rows",
]


@dataclass(frozen=True)
class LossSpec:
    """An objective (canonical name, None for cross-entropy only) and all its parameters, after
    :func:`todi.objectives.reduce` (so a skewed KL at λ = 0 is spelled ``forward_kl``)."""

    objective: str | None
    params: tuple[tuple[str, float], ...] = ()

    @classmethod
    def make(cls, objective: str | None, params: dict[str, float] | None = None) -> "LossSpec":
        if objective is None:
            if params:
                raise TypeError(f"cross-entropy only takes no parameters, got {sorted(params)}")
            return cls(None)
        record, full = reduce(objective, params)
        return cls(record.name, tuple(full.items()))

    @property
    def record(self) -> Objective | None:
        return None if self.objective is None else get(self.objective)

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def diagnostics(self) -> tuple[str, ...]:
        return () if self.objective is None else tuple(self.record.diagnostics)

    @property
    def triton_branch(self) -> str | None:
        return None if self.objective is None else self.record.triton_branch(self.kwargs)


def take_rows(value: float | Tensor, idx: Tensor) -> float | Tensor:
    """Rows ``idx`` of a per-row tensor; a scalar stays a scalar."""
    return value.index_select(0, idx) if isinstance(value, Tensor) else value


@dataclass
class SparseTargets:
    """Precomputed teacher targets per row: its top-k token ids and the log-probabilities of the
    coarsened distribution "those k entries + one bucket for the rest", at ``temperature``.

    ids: int64 ``[N, k]`` (distinct per row, < the compared vocabulary); log_probs: float32
    ``[N, k + 1]`` (the last column is the bucket's log-mass, −inf when k covers the vocabulary).
    The divergence is then D(coarsened teacher, coarsened student), the student coarsened over the
    same buckets (:func:`todi.objectives.math.coarse_log_probs`): a lower bound of the full
    f-divergences (data processing), equal to them when k = V.
    """

    ids: Tensor
    log_probs: Tensor
    temperature: float

    def select(self, idx: Tensor) -> "SparseTargets":
        return SparseTargets(self.ids.index_select(0, idx), self.log_probs.index_select(0, idx), self.temperature)


@dataclass
class LossInputs:
    """One call's tensors, already flattened to rows.

    student: ``[N, V_s]``, last dim contiguous (rows may be strided).
    teacher: ``[N, V_t]`` logits, or a :class:`TeacherHead` computing them a chunk of rows at a time
        (a hidden-state teacher cache), or None (cross-entropy only, or sparse targets); only the first
        ``vocab`` columns are read.
    sparse: precomputed teacher targets instead of ``teacher`` (:class:`SparseTargets`), or None.
    vocab: the number of leading columns the divergence compares (≤ V_s, ≤ V_t).
    labels: int64 ``[N]`` or None (no cross-entropy); ``ignore_index`` marks rows without one.
    kd_mask: bool ``[N]``: rows that get a divergence (ignored without a teacher).
    temperature: a float, or float32 ``[N]``.
    kd_weight: a float, or float32 ``[N]``: weight of each row's divergence in the loss.
    ce_weight: weight of the cross-entropy in the loss (0: computed as a statistic only).
    """

    student: Tensor
    teacher: Tensor | TeacherHead | None
    vocab: int
    labels: Tensor | None
    kd_mask: Tensor | None
    temperature: float | Tensor
    kd_weight: float | Tensor
    ce_weight: float
    ignore_index: int = IGNORE_INDEX
    sparse: SparseTargets | None = None

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None or self.sparse is not None

    @property
    def ce_valid(self) -> Tensor | None:
        return None if self.labels is None else self.labels.ne(self.ignore_index)

    def active_rows(self) -> Tensor:
        """bool ``[N]``: rows with any loss term (the others cost nothing and get zero gradient)."""
        n = self.student.shape[0]
        active = torch.zeros(n, dtype=torch.bool, device=self.student.device)
        if self.has_teacher and self.kd_mask is not None:
            active |= self.kd_mask
        if self.labels is not None:
            active |= self.ce_valid
        return active

    def combine(self, spec: LossSpec, kd: Tensor, ce: Tensor) -> Tensor:
        """The loss of each row, ``ce_weight·ce + kd_weight·kd`` (float32 ``[N]``): CE + KD, once."""
        loss = ce * self.ce_weight if self.ce_weight != 0.0 else torch.zeros_like(ce)
        if self.has_teacher and spec.objective is not None:
            loss = loss + kd * self.kd_weight
        return loss

    def select(self, idx: Tensor, student: Tensor) -> "LossInputs":
        """The rows ``idx`` of these inputs, with ``student`` as their student logits."""
        return LossInputs(
            student=student,
            teacher=teacher_rows(self.teacher, idx) if self.teacher is not None else None,
            vocab=self.vocab,
            labels=self.labels.index_select(0, idx) if self.labels is not None else None,
            kd_mask=self.kd_mask.index_select(0, idx) if self.kd_mask is not None else None,
            temperature=take_rows(self.temperature, idx),
            kd_weight=take_rows(self.kd_weight, idx),
            ce_weight=self.ce_weight,
            ignore_index=self.ignore_index,
            sparse=self.sparse.select(idx) if self.sparse is not None else None,
        )


@dataclass
class PerRowLoss:
    """What a backend returns for one call's rows, and what the criterion reads.

    kd, ce, correct: float32 ``[N]`` (detached); diagnostics: the requested ones (name → float32 ``[N]``).
    grad: a backend's gradient of the weighted loss with respect to the student logits (``[N, V_s]`` in
        the student's dtype), or None (not asked for, or already handed to autograd).
    loss: float32 ``[N]``, ce_weight·ce + kd_weight·kd, differentiable (:func:`todi.kernels.per_row_loss`),
        or None in a backend's own output (its ``grad`` holds the derivative instead).
    """

    kd: Tensor
    ce: Tensor
    correct: Tensor
    diagnostics: dict[str, Tensor]
    grad: Tensor | None = None
    loss: Tensor | None = None


# How many rows a chunk holds: one memory budget for every chunked loop of the package. A chunk's
# float32 [rows, V] temporary stays within TEMPORARY_BYTES of its device: cache-sized on a CPU; on a GPU
# large enough that kernel launches do not dominate. Loops whose temporaries are cheaper to recompute
# than to launch (the fused lm_head's matmuls) ask for a multiple of it.
TEMPORARY_BYTES = {"cpu": 2 * 1024 * 1024, "cuda": 64 * 1024 * 1024}
# The fused lm_head computes a [chunk, H] × [H, V] matmul per chunk: bigger chunks keep it efficient.
FUSED_HEAD_FACTOR = 4


def rows_per_chunk(n_rows: int, vocab: int, device_type: str = "cpu", *, element_size: int = 4,
                   factor: int = 1, min_chunks: int = 1) -> int:
    """Rows per chunk for ``n_rows`` rows of ``vocab`` entries (at least 1).

    ``element_size``: bytes per entry of the temporaries (float32 at least); ``factor``: multiple of
    the device's budget; ``min_chunks``: split into at least this many chunks (so the temporaries
    stay a fraction of an ``N × V`` buffer even for small inputs).
    """
    budget = TEMPORARY_BYTES.get(device_type, TEMPORARY_BYTES["cuda"]) * factor
    by_bytes = max(1, budget // (max(element_size, 4) * max(vocab, 1)))
    return max(1, min(by_bytes, math.ceil(n_rows / min_chunks)))
