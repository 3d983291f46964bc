"""The per-row loss as an autograd function over a backend that computes the gradient up front.

:func:`per_row_loss` is what :func:`todi.loss.divergence.divergence`, the criterion and the fused
lm_head call. The backend ("chunked" or "triton") returns the per-row values and the gradient of
the weighted loss with respect to the student logits in one go; the autograd function keeps only
that gradient (in the student's dtype) and, in the backward, multiplies each row by its incoming
gradient, in place.

:func:`reference_loss` computes the same outputs with the objectives' plain terms and
``F.cross_entropy`` under autograd: the fallback for what the backends do not do (gradients for
the teacher logits or a temperature tensor) and the oracle of the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from todi.kernels.rows import BackendOutput, LossInputs, LossSpec
from todi.objectives import log_probs, sum_entries
from todi.objectives.math import coarse_log_probs, retemper_log_probs

__all__ = ["PerRowLoss", "backend_forward", "check_labels", "needs_reference", "per_row_loss", "reference_loss"]


@dataclass
class PerRowLoss:
    """Per-row outputs, float32 ``[N]``: ``loss`` (differentiable: ce_weight·ce + kd_weight·kd),
    and detached ``kd``, ``ce``, ``correct`` (0/1), and the requested diagnostics (name → ``[N]``)."""

    loss: Tensor
    kd: Tensor
    ce: Tensor
    correct: Tensor
    diagnostics: dict[str, Tensor]


def needs_reference(inp: LossInputs) -> str | None:
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


def backend_forward(impl: str, spec: LossSpec, inp: LossInputs, *, want_grad: bool,
                    want_diagnostics: bool) -> BackendOutput:
    """One backend's outputs; diagnostics a Triton branch does not compute come from the chunked path."""
    from todi.kernels import chunked

    if impl == "chunked" or inp.sparse is not None:  # sparse targets: the chunked kernel
        return chunked.forward(spec, inp, want_grad=want_grad, want_diagnostics=want_diagnostics)
    if impl != "triton":
        raise AssertionError(impl)
    from todi.kernels import triton as triton_backend

    out = triton_backend.forward(spec, inp, want_grad=want_grad, want_diagnostics=want_diagnostics)
    missing = want_diagnostics and inp.has_teacher and set(spec.diagnostics) - set(out.diagnostics)
    if missing:
        out.diagnostics.update({k: v for k, v in chunked.diagnostics(spec, inp).items() if k in missing})
    return out


def _scale_rows_(impl: str, grad: Tensor, scale: Tensor, active: Tensor) -> None:
    """grad[r] *= scale[r] in place for active rows (inactive rows are already zero)."""
    if impl == "triton":
        from todi.kernels import triton as triton_backend

        triton_backend.scale_rows_(grad, scale, active)
        return
    if scale.dim() == 1 and scale.stride(0) == 0:  # an expanded scalar, e.g. from .sum()
        factor = scale[0]
        if factor.item() != 1.0:
            grad.mul_(factor.to(grad.dtype))
        return
    grad.mul_(scale.to(grad.dtype).unsqueeze(1))


class _PerRowLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, impl, spec, inp, want_diagnostics):
        out = backend_forward(impl, spec, inp, want_grad=student.requires_grad, want_diagnostics=want_diagnostics)
        loss = inp.combine(spec, out.kd, out.ce)
        ctx.impl = impl
        ctx.grad = out.grad
        ctx.active = inp.active_rows()
        names = sorted(out.diagnostics)
        extras = (out.kd, out.ce, out.correct) + tuple(out.diagnostics[k] for k in names)
        ctx.mark_non_differentiable(*extras)
        ctx.names = names
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


def per_row_loss(impl: str, spec: LossSpec, inp: LossInputs, *, want_diagnostics: bool = False) -> PerRowLoss:
    """The per-row loss of ``inp`` with ``impl`` ("chunked", "triton" or "reference")."""
    if inp.labels is not None:
        check_labels(inp.labels, inp.ce_valid, inp.student.shape[1])
    want_diagnostics = want_diagnostics and inp.has_teacher and bool(spec.diagnostics)
    if impl == "reference" or needs_reference(inp) is not None:
        return reference_loss(spec, inp, want_diagnostics=want_diagnostics)
    out = _PerRowLossFunction.apply(inp.student, inp.teacher, impl, spec, inp, want_diagnostics)
    names = sorted(spec.diagnostics) if want_diagnostics else []
    return PerRowLoss(loss=out[0], kd=out[1], ce=out[2], correct=out[3], diagnostics=dict(zip(names, out[4:])))


def reference_loss(spec: LossSpec, inp: LossInputs, *, want_diagnostics: bool = False) -> PerRowLoss:
    """The same outputs from the plain implementations, differentiable by autograd."""
    student, teacher = inp.student, inp.teacher
    n = student.shape[0]
    zero = torch.zeros(n, dtype=torch.float32, device=student.device)
    kd, ce, correct, diagnostics = zero, zero, zero, {}
    if inp.labels is not None:
        valid = inp.ce_valid
        ce = F.cross_entropy(student.float(), torch.where(valid, inp.labels, 0), reduction="none")
        ce = torch.where(valid, ce, 0.0)
        with torch.no_grad():
            correct = (student.argmax(-1).eq(inp.labels) & valid).float()
    if inp.has_teacher and spec.objective is not None:
        record = spec.record
        if inp.sparse is not None:  # the coarsened distributions "top-k + one bucket"
            sp = inp.sparse
            s, t, keep = log_probs(coarse_log_probs(student[:, : inp.vocab], sp.ids, inp.temperature),
                                   retemper_log_probs(sp.log_probs.float(), sp.temperature, inp.temperature), 1.0)
        else:
            s, t, keep = log_probs(student[:, : inp.vocab], teacher[:, : inp.vocab], inp.temperature)
        kd = torch.where(inp.kd_mask, sum_entries(record.terms(s, t, keep, **spec.kwargs), keep), 0.0)
        if want_diagnostics:
            with torch.no_grad():
                for name, fn in record.diagnostics.items():
                    diagnostics[name] = torch.where(inp.kd_mask, sum_entries(fn(s, t, keep, **spec.kwargs), keep), 0.0)
    # connected to the graph (zeros when nothing counts), whatever the logits hold
    loss = inp.combine(spec, kd, ce) + student[:, :0].sum(-1).float()
    return PerRowLoss(loss=loss, kd=kd.detach(), ce=ce.detach(), correct=correct, diagnostics=diagnostics)
