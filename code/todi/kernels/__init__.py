"""Memory-efficient implementations of the loss (semantics: :mod:`todi.objectives`).

Implementations (``impl``):

* ``"reference"``: the objectives' plain terms under autograd (:func:`reference_loss`).
* ``"chunked"``: pure torch, a chunk of positions at a time, the gradient with respect to the
  student logits computed during the forward; only per-position values and that gradient are
  kept (:mod:`todi.kernels.chunked`). Runs every registered objective; default on CPU.
* ``"triton"``: CUDA kernels with an online log-sum-exp (:mod:`todi.kernels.triton`;
  launch settings from ``TODI_TRITON_CONFIG=warps,vectors,programs_per_sm[,stages]`` when set),
  for the objectives whose registry entry names a Triton branch.
* ``"auto"``: triton for CUDA tensors when triton imports and the objective has a branch, else
  chunked (with one log line per objective that has none).

:func:`choose_backend` alone turns the requested ``impl`` into the backend that runs, with the
fallbacks below (sparse teacher targets: chunked; gradients other than the student's: reference),
each logged once per reason.

The cross-entropy is fused in (:func:`per_row_loss`): the student's log-sum-exp is shared when
the temperature is 1, and the gradient of the weighted CE + KD is written once. AKL's head/tail
split follows the reference's stable sort: of teacher probabilities tied at the tail boundary,
the lower vocabulary indices go to the tail first (the chunked path sorts; the Triton path
searches the boundary value without sorting and ranks the ties in vocabulary order, equal up to
float32 rounding of the cumulative mass at the boundary).

The chunked and Triton paths return the reference's values and its autograd gradient for the
student logits. They do not differentiate with respect to the teacher logits or a temperature
tensor: when either requires grad, the reference runs instead (same results, reference memory).
Sparse teacher targets (:class:`SparseTargets`) run on the chunked kernel. Teacher logits may also
come as a :class:`TeacherHead` (final hidden states and the output layer, from a hidden-state
teacher cache): every path computes them a chunk of rows at a time.
A second backward through the same output is an error (the gradient buffer is freed after the
first one). This package imports only :mod:`todi.objectives` (and :mod:`todi.util.labels`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from todi.kernels.autograd import (
    IMPLEMENTATIONS,
    check_impl,
    choose_backend,
    per_row_loss,
    reference_loss,
    triton_available,
)
from todi.kernels.fused_linear import fused_linear_loss
from todi.kernels.rows import LossInputs, LossSpec, PerRowLoss, SparseTargets
from todi.kernels.teacher_head import TeacherHead, teacher_rows

__all__ = [
    "IMPLEMENTATIONS",
    "LossInputs",
    "LossSpec",
    "PerRowLoss",
    "SparseTargets",
    "TeacherHead",
    "broadcast_rows",
    "check_impl",
    "choose_backend",
    "flatten_rows",
    "fused_linear_loss",
    "per_row_loss",
    "reference_loss",
    "teacher_rows",
    "triton_available",
]


def flatten_rows(x: Tensor | TeacherHead) -> Tensor | TeacherHead:
    """``[..., V]`` → ``[N, V]`` without a copy where the strides allow it; last dim contiguous."""
    if isinstance(x, TeacherHead):
        return x.flat()
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def broadcast_rows(value: float | Tensor, shape: torch.Size, device) -> float | Tensor:
    """A float stays a float; a tensor broadcastable to ``shape`` becomes float32 ``[N]``."""
    if not isinstance(value, Tensor):
        return float(value)
    return value.to(device=device, dtype=torch.float32).broadcast_to(shape).reshape(-1)
