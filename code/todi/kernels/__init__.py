"""Memory-efficient implementations of the divergences (semantics: :mod:`todi.divergences`).

Implementations (``impl``):

* ``"reference"``: the plain functions of :mod:`todi.divergences` under autograd.
* ``"chunked"``: pure torch, a chunk of positions at a time, the gradient with respect to the
  student logits computed during the forward; only per-position values and that gradient are
  kept (:mod:`todi.kernels.chunked`). Default on CPU, fallback everywhere.
* ``"triton"``: CUDA kernels with an online log-sum-exp: two passes over the logits for forward
  and reverse KL, three for the other objectives, more for AKL's tail search (rows holding a ±inf
  take masked loops) (:mod:`todi.kernels.triton_rows`; launch settings from
  ``TODI_TRITON_CONFIG=warps,vectors,programs_per_sm[,stages]`` when set).
* ``"auto"``: triton for CUDA tensors when triton imports, else chunked.

The cross-entropy can be fused in (:func:`loss_rows`, used by the criterion): the student's
log-sum-exp is shared when the temperature is 1, and the gradient of the weighted CE + KD is
written once. AKL's head/tail split follows the reference's stable sort: of teacher
probabilities tied at the tail boundary, the lower vocabulary indices go to the tail first (the
chunked path sorts; the Triton path searches the boundary value without sorting and ranks the
ties in vocabulary order, equal up to float32 rounding of the cumulative mass at the boundary).

The chunked and Triton paths return the reference's values and its autograd gradient for the
student logits. They do not differentiate with respect to the teacher logits or a temperature
tensor: when either requires grad, the reference runs instead (same results, reference memory).
A second backward through the same output is an error (the gradient buffer is freed after the
first one).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from todi.kernels.rows import LossRows, loss_rows, reference_rows
from todi.kernels.spec import LossSpec, RowsInput

__all__ = [
    "LossRows",
    "LossSpec",
    "RowsInput",
    "as_rows",
    "divergence",
    "fused_linear_loss",
    "fused_student_loss",
    "loss_rows",
    "per_row",
    "reference_rows",
    "resolve",
    "triton_available",
]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether ``import triton`` works (on CUDA, or on CPU under ``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve(impl: str, logits: Tensor) -> str:
    """The implementation that ``impl`` means for tensors like ``logits``."""
    if impl in ("reference", "chunked"):
        return impl
    if impl == "auto":
        return "triton" if logits.is_cuda and triton_available() else "chunked"
    if impl == "triton":
        if not triton_available():
            raise ValueError("impl='triton' needs the triton package (pip install triton); use 'chunked'")
        if not (logits.is_cuda or _interpreting()):
            raise ValueError(
                f"impl='triton' needs CUDA tensors, got {logits.device} (or TRITON_INTERPRET=1 for the "
                "CPU interpreter); use 'chunked' or 'auto'"
            )
        return "triton"
    raise ValueError(f"unknown impl {impl!r}; valid: auto, reference, chunked, triton")


def as_rows(x: Tensor) -> Tensor:
    """``[..., V]`` → ``[N, V]`` without a copy where the strides allow it; last dim contiguous."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def per_row(value: float | Tensor, shape: torch.Size, device) -> float | Tensor:
    """A float stays a float; a tensor broadcastable to ``shape`` becomes float32 ``[N]``."""
    if not isinstance(value, Tensor):
        return float(value)
    return value.to(device=device, dtype=torch.float32).broadcast_to(shape).reshape(-1)


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    mask: Tensor | None = None,
    impl: str = "auto",
    **params: float,
) -> Tensor:
    """:func:`todi.divergences.divergence` through a memory-efficient ``impl`` (already resolved).

    Inputs are validated by the caller; returns float32 ``logits.shape[:-1]``.
    """
    shape = student_logits.shape[:-1]
    student, teacher = as_rows(student_logits), as_rows(teacher_logits)
    n = student.shape[0]
    if mask is None:
        kd_mask = torch.ones(n, dtype=torch.bool, device=student.device)
    else:
        kd_mask = mask.to(device=student.device, dtype=torch.bool).reshape(-1)
    inp = RowsInput(
        student=student,
        teacher=teacher,
        vocab=student.shape[1],
        labels=None,
        kd_mask=kd_mask,
        temperature=per_row(temperature, shape, student.device),
        kd_weight=1.0,
        ce_weight=0.0,
    )
    return loss_rows(impl, LossSpec.make(name, params), inp).loss.reshape(shape)


# After the definitions above, which the fused path imports.
from todi.kernels.fused_head import fused_linear_loss, fused_student_loss  # noqa: E402
