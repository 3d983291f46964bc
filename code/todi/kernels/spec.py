"""What a row-wise loss computes: the objective, its parameters, and the inputs of one call.

Every backend (chunked torch, Triton) computes, for each row ``r`` of a ``[N, V_s]`` student and a
``[N, V_t]`` teacher logit matrix,

* ``kd[r]``  = D(teacher[r, :vocab], student[r, :vocab]) at temperature ``temperature[r]``
  (the semantics of :mod:`todi.divergences`), 0 where ``kd_mask[r]`` is False;
* ``ce[r]``  = cross-entropy of ``student[r, :]`` (all V_s entries, temperature 1) against
  ``labels[r]``, 0 where the label is ``ignore_index``;
* ``correct[r]`` = argmax of ``student[r, :]`` equals the label (and the label is valid);
* optionally ``alpha[r]`` = Σ_i p_i α_i, ToDi's teacher-weighted mean weight (a diagnostic);

and the gradient of ``Σ_r ce_weight·ce[r] + kd_weight[r]·kd[r]`` with respect to the student
logits, in the student's dtype. The loss of a row is that same weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from todi.divergences import PARAMS, canonical_name

__all__ = ["OBJECTIVE_CODES", "LossSpec", "RowsInput", "RowsResult"]

# Integer codes the Triton kernels branch on at compile time (0: cross-entropy only).
OBJECTIVE_CODES: dict[str | None, int] = {
    None: 0,
    "forward_kl": 1,
    "reverse_kl": 2,
    "js_divergence": 3,
    "tvd": 4,
    "skewed_forward_kl": 5,
    "skewed_reverse_kl": 6,
    "adaptive_kl": 7,
    "ToDi": 8,
}


@dataclass(frozen=True)
class LossSpec:
    """An objective (canonical name, or None for cross-entropy only) with all its parameters."""

    objective: str | None
    beta: float = 1.0
    skew_lambda: float = 0.1
    adaptive_kl_alpha: float = 0.5

    @classmethod
    def make(cls, objective: str | None, params: dict[str, float] | None = None) -> "LossSpec":
        params = dict(params or {})
        if objective is None:
            if params:
                raise TypeError(f"cross-entropy only takes no parameters, got {sorted(params)}")
            return cls(None)
        objective = canonical_name(objective)
        unknown = set(params) - set(PARAMS[objective])
        if unknown:
            raise TypeError(f"{objective} does not take {sorted(unknown)}")
        return cls(objective, **{k: float(v) for k, v in params.items()})

    @property
    def code(self) -> int:
        return OBJECTIVE_CODES[self.objective]


@dataclass
class RowsInput:
    """One call's tensors, already flattened to rows.

    student: ``[N, V_s]``, last dim contiguous (rows may be strided).
    teacher: ``[N, V_t]`` or None (cross-entropy only); only its first ``vocab`` columns are read.
    vocab: the number of leading columns the divergence compares (≤ V_s, ≤ V_t).
    labels: int64 ``[N]`` or None (no cross-entropy); ``ignore_index`` marks rows without one.
    kd_mask: bool ``[N]``: rows that get a divergence (ignored without a teacher).
    temperature: a float, or float32 ``[N]``.
    kd_weight: a float, or float32 ``[N]``: weight of each row's divergence in the loss.
    ce_weight: weight of the cross-entropy in the loss (0: computed as a statistic only).
    """

    student: Tensor
    teacher: Tensor | None
    vocab: int
    labels: Tensor | None
    kd_mask: Tensor | None
    temperature: float | Tensor
    kd_weight: float | Tensor
    ce_weight: float
    ignore_index: int = -100

    @property
    def ce_valid(self) -> Tensor | None:
        return None if self.labels is None else self.labels.ne(self.ignore_index)

    def active_rows(self) -> Tensor:
        """bool ``[N]``: rows with any loss term (the others cost nothing and get zero gradient)."""
        n = self.student.shape[0]
        active = torch.zeros(n, dtype=torch.bool, device=self.student.device)
        if self.teacher is not None and self.kd_mask is not None:
            active |= self.kd_mask
        if self.labels is not None:
            active |= self.ce_valid
        return active


@dataclass
class RowsResult:
    """Per-row outputs (float32 ``[N]``) and the weighted loss's gradient (``[N, V_s]`` or None)."""

    kd: Tensor
    ce: Tensor
    correct: Tensor
    alpha: Tensor | None
    grad: Tensor | None
