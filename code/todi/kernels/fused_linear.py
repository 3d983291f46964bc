"""Fused lm_head + loss: the student's logits are never materialised beyond a chunk of rows.

:func:`fused_linear_loss` takes the student's final hidden states ``[N, H]`` and the output
layer (weight ``[V, H]``, optional bias), and for one chunk of rows at a time computes the logits,
the per-row CE + KD and its gradient with respect to those logits (the chunked or Triton
backend), then the gradients for the hidden states and the weight; the teacher's logits are read
one chunk of rows at a time. Rows without a loss term are skipped. Peak extra memory:
``chunk × V`` logits and their gradient, plus the weight's gradient (float32 ``[V, H]``).

Swapping this into a Hugging Face / peft / DeepSpeed model is model surgery and lives above the
kernels, in :mod:`todi.models.fused_head`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from todi.kernels.autograd import backend_forward, check_labels, choose_backend
from todi.kernels.rows import FUSED_HEAD_FACTOR, LossInputs, LossSpec, PerRowLoss, rows_per_chunk

__all__ = ["fused_linear_loss"]


class _FusedLinearLoss(torch.autograd.Function):
    """Σ_rows ce_weight·CE + kd_weight·KD from hidden states; gradients computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, backend, spec, teacher, base: LossInputs, want_diagnostics, chunk):
        n, _ = hidden.shape
        device = hidden.device
        kd = torch.zeros(n, dtype=torch.float32, device=device)
        ce = torch.zeros_like(kd)
        correct = torch.zeros_like(kd)
        diagnostics = {name: torch.zeros_like(kd) for name in (spec.diagnostics if want_diagnostics else ())}
        grad_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) if weight.requires_grad else None
        grad_bias = None
        if bias is not None and bias.requires_grad:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=device)
        want_grad = grad_hidden is not None or grad_weight is not None or grad_bias is not None

        rows = base.active_rows().nonzero().squeeze(1)
        step = chunk or rows_per_chunk(rows.numel(), weight.shape[0], device.type,
                                       element_size=hidden.element_size(), factor=FUSED_HEAD_FACTOR)
        for start in range(0, rows.numel(), step):
            idx = rows[start : start + step]
            h = hidden.index_select(0, idx)
            part = base.select(idx, F.linear(h, weight, bias))
            res = backend_forward(backend, spec, part, want_grad=want_grad, want_diagnostics=want_diagnostics)
            del part
            kd.index_copy_(0, idx, res.kd)
            ce.index_copy_(0, idx, res.ce)
            correct.index_copy_(0, idx, res.correct)
            for name, value in res.diagnostics.items():
                diagnostics[name].index_copy_(0, idx, value)
            if want_grad:
                g = res.grad
                if grad_hidden is not None:
                    grad_hidden.index_copy_(0, idx, g @ weight)
                if grad_weight is not None:
                    grad_weight += (g.t() @ h).float()
                if grad_bias is not None:
                    grad_bias += g.float().sum(0)
                del g, res
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        names = sorted(diagnostics)
        outputs = (kd, ce, correct) + tuple(diagnostics[k] for k in names)
        ctx.mark_non_differentiable(*outputs)
        return (base.combine(spec, kd, ce).sum(),) + outputs

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if ctx.grads is None:
            raise RuntimeError("the fused lm_head loss frees its gradients after the first backward")
        grads, ctx.grads = ctx.grads, None
        scaled = []
        for g, dtype in zip(grads, ctx.dtypes):
            scaled.append(None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype))
        return (*scaled, None, None, None, None, None, None)


def fused_linear_loss(impl: str, spec: LossSpec, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                      inputs: LossInputs, *, want_diagnostics: bool = False,
                      chunk_size: int | None = None) -> PerRowLoss:
    """The loss of ``inputs`` with the student logits ``hidden @ weight.T + bias``, chunk by chunk.

    Args:
        impl: "auto", "chunked" or "triton" (:func:`todi.kernels.choose_backend`; the gradients are
            computed in the forward, so the reference is an error, as are teacher logits that require grad).
        hidden: ``[N, H]`` final hidden states (after the final norm), one per row of ``inputs``.
        weight, bias: the output layer, ``[V_s, H]`` and ``[V_s]`` or None.
        inputs: the rows' teacher logits ``[N, V_t]``, labels, masks and weights; its ``student``
            is not read (pass ``hidden``).
        chunk_size: rows per chunk (default: a few times the device's temporary budget of logits).

    Returns per-row ``kd``, ``ce``, ``correct`` and diagnostics, with ``loss`` the *summed* loss (0-dim).
    """
    backend = choose_backend(impl, spec, inputs, hidden.device, fused=True)
    check_labels(inputs.labels, inputs.ce_valid, weight.shape[0])
    want_diagnostics = want_diagnostics and inputs.teacher is not None and bool(spec.diagnostics)
    out = _FusedLinearLoss.apply(hidden, weight, bias, backend, spec, inputs.teacher, inputs, want_diagnostics,
                                chunk_size)
    names = sorted(spec.diagnostics) if want_diagnostics else []
    return PerRowLoss(loss=out[0], kd=out[1], ce=out[2], correct=out[3], diagnostics=dict(zip(names, out[4:])))
