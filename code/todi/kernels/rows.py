"""The row-wise loss as an autograd function over a backend that computes the gradient up front.

:func:`loss_rows` is what :func:`todi.kernels.divergence` and the criterion call. The backend
("chunked" or "triton") returns the per-row values and the gradient of the weighted loss with
respect to the student logits in one go; the autograd function keeps only that gradient (in the
student's dtype) and, in the backward, multiplies each row by its incoming gradient, in place.

:func:`reference_rows` computes the same outputs with the plain functions of
:mod:`todi.divergences` and ``F.cross_entropy`` under autograd: the fallback for what the
backends do not do (gradients for the teacher logits or a temperature tensor) and the oracle
of the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from todi.divergences import DIVERGENCES, PARAMS, todi_alpha
from todi.kernels.spec import LossSpec, RowsInput, RowsResult

__all__ = ["LossRows", "backend_forward", "check_labels", "loss_rows", "needs_reference", "reference_rows"]


@dataclass
class LossRows:
    """Per-row outputs, float32 ``[N]``: ``loss`` (differentiable: ce_weight·ce + kd_weight·kd),
    and detached ``kd``, ``ce``, ``correct`` (0/1), ``alpha`` (ToDi's Σ p α when asked, else None)."""

    loss: Tensor
    kd: Tensor
    ce: Tensor
    correct: Tensor
    alpha: Tensor | None


def needs_reference(inp: RowsInput) -> str | None:
    """Why the backends cannot run this input (the reference then runs instead), or None."""
    if inp.teacher is not None and inp.teacher.requires_grad:
        return "the teacher logits require grad"
    if isinstance(inp.temperature, Tensor) and inp.temperature.requires_grad:
        return "the temperature tensor requires grad"
    if isinstance(inp.kd_weight, Tensor) and inp.kd_weight.requires_grad:
        return "the per-row KD weight requires grad"
    return None


def check_labels(labels: Tensor, valid: Tensor, vocab: int) -> None:
    """Labels must index the student's vocabulary: a wrong label is an error, never a silent NaN.

    On CUDA the check is a device-side assertion, so that the host never waits for the device in
    the step path; on the CPU (where reading a value costs nothing) it is a ValueError naming them.
    """
    bad = valid & ((labels < 0) | (labels >= vocab))
    if labels.is_cuda:
        torch._assert_async(~bad.any(), f"labels must be in [0, {vocab}) or the ignore index")
    elif bool(bad.any()):
        raise ValueError(f"labels must be in [0, {vocab}) or the ignore index; got {labels[bad][:5].tolist()}")


def backend_forward(impl: str, spec: LossSpec, inp: RowsInput, want_grad: bool, want_alpha: bool) -> RowsResult:
    if impl == "chunked":
        from todi.kernels import chunked

        return chunked.forward(spec, inp, want_grad=want_grad, want_alpha=want_alpha)
    if impl == "triton":
        from todi.kernels import triton_rows

        return triton_rows.forward(spec, inp, want_grad=want_grad, want_alpha=want_alpha)
    raise AssertionError(impl)


def _scale_rows_(impl: str, grad: Tensor, scale: Tensor, active: Tensor) -> None:
    """grad[r] *= scale[r] in place for active rows (inactive rows are already zero)."""
    if impl == "triton":
        from todi.kernels import triton_rows

        triton_rows.scale_rows_(grad, scale, active)
        return
    if scale.dim() == 1 and scale.stride(0) == 0:  # an expanded scalar, e.g. from .sum()
        factor = scale[0]
        if factor.item() != 1.0:
            grad.mul_(factor.to(grad.dtype))
        return
    grad.mul_(scale.to(grad.dtype).unsqueeze(1))


class _LossRowsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, impl, spec, inp, want_alpha):
        result = backend_forward(impl, spec, inp, want_grad=student.requires_grad, want_alpha=want_alpha)
        loss = result.ce * inp.ce_weight if inp.ce_weight != 0.0 else torch.zeros_like(result.ce)
        if teacher is not None and spec.objective is not None:
            loss = loss + result.kd * inp.kd_weight
        ctx.impl = impl
        ctx.grad = result.grad
        ctx.active = inp.active_rows()
        ctx.mark_non_differentiable(result.kd, result.ce, result.correct)
        extras = (result.kd, result.ce, result.correct)
        if result.alpha is not None:
            ctx.mark_non_differentiable(result.alpha)
            extras = extras + (result.alpha,)
        return (loss,) + extras

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "the memory-efficient loss frees its gradient after the first backward; "
                "use impl='reference' to backpropagate through it twice"
            )
        ctx.grad = None
        _scale_rows_(ctx.impl, grad, grad_loss, ctx.active)
        return grad, None, None, None, None, None


def loss_rows(impl: str, spec: LossSpec, inp: RowsInput, *, want_alpha: bool = False) -> LossRows:
    """The row-wise loss of ``inp`` with backend ``impl`` ("chunked" or "triton")."""
    if inp.labels is not None:
        check_labels(inp.labels, inp.ce_valid, inp.student.shape[1])
    if needs_reference(inp) is not None:
        return reference_rows(spec, inp, want_alpha=want_alpha)
    want_alpha = want_alpha and spec.objective == "ToDi" and inp.teacher is not None
    out = _LossRowsFunction.apply(inp.student, inp.teacher, impl, spec, inp, want_alpha)
    loss, kd, ce, correct = out[:4]
    return LossRows(loss=loss, kd=kd, ce=ce, correct=correct, alpha=out[4] if want_alpha else None)


def reference_rows(spec: LossSpec, inp: RowsInput, *, want_alpha: bool = False) -> LossRows:
    """The same outputs from the plain implementations, differentiable by autograd."""
    student, teacher = inp.student, inp.teacher
    n = student.shape[0]
    zero = torch.zeros(n, dtype=torch.float32, device=student.device)
    kd, ce, correct, alpha = zero, zero, zero, None
    loss = student[:, :0].sum(-1).float()  # zeros connected to the graph, whatever the logits hold
    if inp.labels is not None:
        valid = inp.ce_valid
        ce = F.cross_entropy(student.float(), torch.where(valid, inp.labels, 0), reduction="none")
        ce = torch.where(valid, ce, 0.0)
        with torch.no_grad():
            correct = (student.argmax(-1).eq(inp.labels) & valid).float()
        if inp.ce_weight != 0.0:
            loss = loss + inp.ce_weight * ce
    if teacher is not None and spec.objective is not None:
        params = {k: getattr(spec, k) for k in PARAMS[spec.objective]}
        s, t = student[:, : inp.vocab], teacher[:, : inp.vocab]
        kd = DIVERGENCES[spec.objective](s, t, temperature=inp.temperature, **params)
        kd = torch.where(inp.kd_mask, kd, 0.0)
        loss = loss + kd * inp.kd_weight
        if want_alpha and spec.objective == "ToDi":
            alpha = torch.where(inp.kd_mask, todi_alpha(s, t, temperature=inp.temperature, beta=spec.beta), 0.0)
    return LossRows(loss=loss, kd=kd.detach(), ce=ce.detach(), correct=correct, alpha=alpha)

