"""Which backend computes a per-row loss, and the per-row loss as an autograd function over it.

:func:`choose_backend` is the one place that turns a requested ``impl`` into the backend that runs
("reference", "chunked" or "triton"), with the fallbacks of :mod:`todi.kernels`, each logged once.
:func:`per_row_loss` (what :func:`todi.loss.divergence.divergence` and the criterion call) and
:func:`todi.kernels.fused_linear_loss` ask it. A backend ("chunked" or "triton") returns the per-row
values and the gradient of the weighted loss with respect to the student logits in one go; the
autograd function keeps only that gradient (in the student's dtype) and, in the backward,
multiplies each row by its incoming gradient, in place.

:func:`reference_loss` computes the same outputs with the objectives' plain terms and
``F.cross_entropy`` under autograd: the fallback for what the backends do not do (gradients for
the teacher logits or a temperature tensor) and the oracle of the tests.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from todi.kernels import chunked
from todi.kernels.rows import LossInputs, LossSpec, PerRowLoss
from todi.kernels.teacher_head import TeacherHead, teacher_head_rows
from todi.objectives import log_probs, sum_entries
from todi.objectives.math import coarse_log_probs, retemper_log_probs

__all__ = [
    "IMPLEMENTATIONS", "backend_forward", "check_impl", "check_labels", "choose_backend", "per_row_loss",
    "reference_loss", "triton_available",
]

IMPLEMENTATIONS = ("auto", "reference", "chunked", "triton")

_log = logging.getLogger("todi")


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


@functools.lru_cache(maxsize=None)
def _note_fallback(reason: str) -> None:
    """One log line per distinct reason for running another backend than the one asked for."""
    _log.info(reason)


def check_impl(impl: str) -> None:
    """A ValueError naming the valid implementations unless ``impl`` is one of them."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLEMENTATIONS)}")


def _has_branch(spec: LossSpec) -> bool:
    return spec.objective is None or spec.triton_branch is not None


def _check_triton(spec: LossSpec, device: torch.device) -> None:
    """The errors of an explicit impl='triton' that cannot run."""
    if not triton_available():
        raise ValueError("impl='triton' needs the triton package (pip install triton); use 'chunked'")
    if not (device.type == "cuda" or _interpreting()):
        raise ValueError(
            f"impl='triton' needs CUDA tensors, got {device} (or TRITON_INTERPRET=1 for the "
            "CPU interpreter); use 'chunked' or 'auto'"
        )
    if not _has_branch(spec):
        raise ValueError(f"objective {spec.objective} {spec.kwargs} has no Triton branch; use impl 'chunked' or 'auto'")


def _auto_backend(spec: LossSpec, device: torch.device) -> str:
    """What impl='auto' means: Triton for CUDA tensors when it imports and the objective has a branch."""
    if not (device.type == "cuda" and triton_available()):
        return "chunked"
    if not _has_branch(spec):
        _note_fallback(f"objective {spec.objective} {dict(spec.params)} has no Triton branch: "
                       "the chunked kernel runs instead")
        return "chunked"
    return "triton"


def _undifferentiated(inp: LossInputs) -> str | None:
    """What of ``inp`` requires a gradient that the backends do not compute (they differentiate the
    student logits only), or None."""
    if inp.teacher is not None and inp.teacher.requires_grad:
        return "the teacher logits"
    if isinstance(inp.temperature, Tensor) and inp.temperature.requires_grad:
        return "the per-row temperatures"
    if isinstance(inp.kd_weight, Tensor) and inp.kd_weight.requires_grad:
        return "the per-row KD weights"
    return None


def choose_backend(impl: str, spec: LossSpec, inputs: LossInputs, device: torch.device | None = None, *,
                   fused: bool = False) -> str:
    """The backend that computes ``inputs`` on ``device`` (default: their student's) for the requested ``impl``.

    ``impl`` is checked here. An explicit "triton" that cannot run is an error; "auto" is Triton or
    chunked (:func:`_auto_backend`). Then the reference runs when something other than the student
    logits requires grad, and sparse teacher targets run on the chunked kernel (no Triton kernel
    reads them); each fallback logs one line per distinct reason. ``fused``: the caller computes the
    gradients in the forward (the fused lm_head), so running the reference is an error instead.
    Returns "reference", "chunked" or "triton".
    """
    check_impl(impl)
    device = inputs.student.device if device is None else device
    if impl == "triton":
        _check_triton(spec, device)
    if fused and impl == "reference":
        raise ValueError("the fused lm_head path computes gradients in the forward: use impl auto, chunked or triton")
    if impl == "reference":
        return "reference"
    what = _undifferentiated(inputs)
    if what is not None:
        if fused:
            raise ValueError(f"the fused lm_head path does not differentiate {what}")
        _note_fallback(f"{what} require a gradient, which the kernels do not compute: the reference runs instead")
        return "reference"
    backend = _auto_backend(spec, device) if impl == "auto" else impl
    if backend == "triton" and inputs.sparse is not None:
        _note_fallback("sparse teacher targets have no Triton kernel: the chunked kernel runs instead")
        return "chunked"
    return backend


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


def backend_forward(backend: str, spec: LossSpec, inp: LossInputs, *, want_grad: bool,
                    want_diagnostics: bool) -> PerRowLoss:
    """The outputs of ``backend`` ("chunked" or "triton", as :func:`choose_backend` chose), with its
    ``grad``; diagnostics a Triton branch does not compute come from the chunked path."""
    if isinstance(inp.teacher, TeacherHead):  # the backends read logits: a large chunk of teacher rows at a time
        return _by_teacher_chunks(backend, spec, inp, want_grad=want_grad, want_diagnostics=want_diagnostics)
    if backend == "chunked":
        return chunked.forward(spec, inp, want_grad=want_grad, want_diagnostics=want_diagnostics)
    from todi.kernels import triton as triton_backend  # imports triton: only when it runs

    out = triton_backend.forward(spec, inp, want_grad=want_grad, want_diagnostics=want_diagnostics)
    missing = want_diagnostics and inp.has_teacher and set(spec.diagnostics) - set(out.diagnostics)
    if missing:
        out.diagnostics.update({k: v for k, v in chunked.diagnostics(spec, inp).items() if k in missing})
    return out


def _by_teacher_chunks(backend: str, spec: LossSpec, inp: LossInputs, *, want_grad: bool,
                       want_diagnostics: bool) -> PerRowLoss:
    """:func:`backend_forward` over chunks of active rows whose teacher logits (from a
    :class:`TeacherHead`) are computed one chunk at a time (:func:`teacher_head_rows`: large enough for
    an efficient matmul): never an ``N × V_t`` teacher tensor."""
    student = inp.student
    n, device = student.shape[0], student.device
    zeros = lambda: torch.zeros(n, dtype=torch.float32, device=device)  # noqa: E731
    out = PerRowLoss(kd=zeros(), ce=zeros(), correct=zeros(), diagnostics={},
                     grad=torch.zeros_like(student) if want_grad else None)
    rows = inp.active_rows().nonzero().squeeze(1)
    step = teacher_head_rows(rows.numel(), inp.teacher.shape[-1], device.type)
    for start in range(0, rows.numel(), step):
        idx = rows[start : start + step]
        res = backend_forward(backend, spec, inp.select(idx, student.index_select(0, idx)), want_grad=want_grad,
                              want_diagnostics=want_diagnostics)
        for total, part in ((out.kd, res.kd), (out.ce, res.ce), (out.correct, res.correct)):
            total.index_copy_(0, idx, part)
        for name, value in res.diagnostics.items():
            out.diagnostics.setdefault(name, zeros()).index_copy_(0, idx, value)
        if want_grad:
            out.grad.index_copy_(0, idx, res.grad.to(out.grad.dtype))
    return out


def _scale_rows_(backend: str, grad: Tensor, scale: Tensor, active: Tensor) -> None:
    """grad[r] *= scale[r] in place for active rows (inactive rows are already zero)."""
    if backend == "triton":
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
    def forward(ctx, student, teacher, backend, spec, inp, want_diagnostics):
        out = backend_forward(backend, spec, inp, want_grad=student.requires_grad, want_diagnostics=want_diagnostics)
        loss = inp.combine(spec, out.kd, out.ce)
        ctx.backend = backend
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
        _scale_rows_(ctx.backend, grad, grad_loss, ctx.active)
        return grad, None, None, None, None, None


def per_row_loss(impl: str, spec: LossSpec, inp: LossInputs, *, want_diagnostics: bool = False) -> PerRowLoss:
    """The per-row loss of ``inp`` (its ``loss`` differentiable) with the backend that
    :func:`choose_backend` picks for ``impl`` ("auto", "reference", "chunked" or "triton")."""
    backend = choose_backend(impl, spec, inp)
    if inp.labels is not None:
        check_labels(inp.labels, inp.ce_valid, inp.student.shape[1])
    want_diagnostics = want_diagnostics and inp.has_teacher and bool(spec.diagnostics)
    if backend == "reference":
        return reference_loss(spec, inp, want_diagnostics=want_diagnostics)
    out = _PerRowLossFunction.apply(inp.student, inp.teacher, backend, spec, inp, want_diagnostics)
    names = sorted(spec.diagnostics) if want_diagnostics else []
    return PerRowLoss(loss=out[0], kd=out[1], ce=out[2], correct=out[3], diagnostics=dict(zip(names, out[4:])))


def reference_loss(spec: LossSpec, inp: LossInputs, *, want_diagnostics: bool = False) -> PerRowLoss:
    """The same outputs from the plain implementations, differentiable by autograd."""
    student, teacher = inp.student, inp.teacher
    if isinstance(teacher, TeacherHead):  # the reference reads every logit at once
        teacher = teacher.materialize()
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
