"""Fused lm_head + loss: the student's logits are never materialised beyond a chunk of rows.

:func:`fused_linear_loss` takes the student's final hidden states ``[N, H]`` and the output
layer (weight ``[V, H]``, optional bias), and for one chunk of rows at a time computes the logits,
the criterion's CE + KD and its gradient with respect to those logits (the chunked or Triton
backend), then the gradients for the hidden states and the weight; the teacher's logits are read
one chunk of rows at a time. Rows without a response token are skipped. Peak extra memory:
``chunk × V`` logits and their gradient, plus the weight's gradient (float32 ``[V, H]``).

:func:`fused_student_loss` is what the trainer calls instead of ``model(...)`` + criterion: it
runs the whole model (a Hugging Face causal LM, possibly inside peft and a DeepSpeed engine) with
the loss computed *inside the output layer's forward*. The output layer is called as a module, so
under ZeRO-3 its weight is gathered by DeepSpeed's hooks for the forward, and the loss that comes
out passes through DeepSpeed's backward hooks, which gather the weight again before its gradient
(returned by this module's backward) is accumulated and reduce-scattered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from todi.kernels import per_row, resolve
from todi.kernels.rows import backend_forward, check_labels
from todi.kernels.spec import LossSpec, RowsInput

__all__ = ["fused_linear_loss", "fused_student_loss", "output_layer"]

# Bytes of one [chunk, V] logits tensor the fused path aims for (the gradient takes as much again).
CHUNK_BYTES_CUDA = 256 * 1024 * 1024
CHUNK_BYTES_CPU = 16 * 1024 * 1024


def _chunk_rows(n: int, vocab: int, element_size: int, device: torch.device) -> int:
    budget = CHUNK_BYTES_CUDA if device.type == "cuda" else CHUNK_BYTES_CPU
    return max(1, min(n, budget // (vocab * max(element_size, 4))))


class _FusedLinearLoss(torch.autograd.Function):
    """Σ_rows ce_weight·CE + kd_weight·KD from hidden states; gradients computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, impl, spec, teacher, base: RowsInput, want_alpha, chunk):
        n, _ = hidden.shape
        device = hidden.device
        kd = torch.zeros(n, dtype=torch.float32, device=device)
        ce = torch.zeros_like(kd)
        correct = torch.zeros_like(kd)
        alpha = torch.zeros_like(kd) if want_alpha else None
        grad_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) if weight.requires_grad else None
        grad_bias = None
        if bias is not None and bias.requires_grad:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=device)
        want_grad = grad_hidden is not None or grad_weight is not None or grad_bias is not None

        rows = base.active_rows().nonzero().squeeze(1)
        step = chunk or _chunk_rows(rows.numel(), weight.shape[0], hidden.element_size(), device)
        for start in range(0, rows.numel(), step):
            idx = rows[start : start + step]
            h = hidden.index_select(0, idx)
            logits = F.linear(h, weight, bias)
            part = RowsInput(
                student=logits,
                teacher=teacher.index_select(0, idx) if teacher is not None else None,
                vocab=base.vocab,
                labels=base.labels.index_select(0, idx),
                kd_mask=base.kd_mask.index_select(0, idx) if base.kd_mask is not None else None,
                temperature=_take(base.temperature, idx),
                kd_weight=_take(base.kd_weight, idx),
                ce_weight=base.ce_weight,
                ignore_index=base.ignore_index,
            )
            res = backend_forward(impl, spec, part, want_grad=want_grad, want_alpha=want_alpha)
            del logits
            kd.index_copy_(0, idx, res.kd)
            ce.index_copy_(0, idx, res.ce)
            correct.index_copy_(0, idx, res.correct)
            if alpha is not None:
                alpha.index_copy_(0, idx, res.alpha)
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
        loss = ce.sum() * base.ce_weight if base.ce_weight != 0.0 else ce.new_zeros(())
        if teacher is not None and spec.objective is not None:
            loss = loss + (kd * base.kd_weight).sum()
        outputs = (kd, ce, correct) + ((alpha,) if alpha is not None else ())
        ctx.mark_non_differentiable(*outputs)
        return (loss,) + outputs

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if ctx.grads is None:
            raise RuntimeError("the fused lm_head loss frees its gradients after the first backward")
        grads, ctx.grads = ctx.grads, None
        scaled = []
        for g, dtype in zip(grads, ctx.dtypes):
            scaled.append(None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype))
        return (*scaled, None, None, None, None, None, None)


def _take(value: float | Tensor, idx: Tensor) -> float | Tensor:
    return value.index_select(0, idx) if isinstance(value, Tensor) else value


def fused_linear_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    teacher_logits: Tensor | None,
    criterion,
    *,
    diagnostics: bool = False,
    chunk_rows: int | None = None,
):
    """The criterion's :class:`~todi.criterion.LossOutput` from hidden states and the output layer.

    Args:
        hidden: ``[..., H]`` final hidden states (after the final norm), aligned with ``labels``.
        weight, bias: the output layer, ``[V_s, H]`` and ``[V_s]`` or None.
        labels: ``[...]`` int64, ``criterion.ignore_index`` where not supervised.
        teacher_logits: ``[..., V_t]`` (required when the criterion uses a teacher).
        criterion: a :class:`todi.criterion.DistillationLoss` without a token planner.
        chunk_rows: rows per chunk (default: about 256 MiB of logits on CUDA, 16 MiB on CPU).
    """
    from todi.criterion import LossOutput

    if criterion.planner is not None:
        raise ValueError("the fused lm_head path does not support a token planner (AdaKD needs the full logits)")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states {tuple(hidden.shape)}")
    impl = resolve(criterion.impl, hidden)
    if impl == "reference":
        raise ValueError("the fused lm_head path computes gradients in the forward: use impl auto, chunked or triton")
    shape = labels.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    v_student = weight.shape[0]
    spec, teacher, vocab, kd_mask = LossSpec(None), None, v_student, None
    mask = labels.ne(criterion.ignore_index)
    if criterion.uses_teacher:
        if teacher_logits is None:
            raise ValueError(f"objective {criterion.objective} with kd_rate {criterion.kd_rate} needs teacher logits")
        if teacher_logits.shape[:-1] != shape:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match labels {tuple(shape)}")
        if teacher_logits.requires_grad:
            raise ValueError("the fused lm_head path does not differentiate the teacher logits")
        spec = LossSpec.make(criterion.objective, criterion.params)
        teacher = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        vocab = min(v_student, teacher.shape[1])
        kd_mask = mask.reshape(-1)
    base = RowsInput(
        student=h,  # only its device and row count are used here
        teacher=teacher,
        vocab=vocab,
        labels=labels.reshape(-1),
        kd_mask=kd_mask,
        temperature=per_row(criterion.temperature, shape, h.device),
        kd_weight=criterion.kd_rate,
        ce_weight=1.0 - criterion.kd_rate if criterion.kd_rate < 1.0 else 0.0,
        ignore_index=criterion.ignore_index,
    )
    check_labels(base.labels, base.ce_valid, v_student)
    want_alpha = diagnostics and spec.objective == "ToDi"
    out = _FusedLinearLoss.apply(h, weight, bias, impl, spec, teacher, base, want_alpha, chunk_rows)
    loss, kd, ce, correct = out[:4]
    stats = {"ce": ce.sum(), "correct": correct.sum()}
    if teacher is not None:
        stats["kd"] = kd.sum()
        stats["kd_tokens"] = mask.sum().float()
        if want_alpha:
            stats["todi_alpha"] = out[4].sum()
    return LossOutput(loss=loss, num_tokens=mask.sum(), stats=stats)


def _causal_lm(model: nn.Module):
    """The Hugging Face model inside a DeepSpeed engine (``.module``) and/or a peft wrapper."""
    from transformers import PreTrainedModel

    inner = model
    for _ in range(4):
        if isinstance(inner, PreTrainedModel):
            return inner
        if hasattr(inner, "get_base_model"):  # peft
            inner = inner.get_base_model()
        elif isinstance(getattr(inner, "module", None), nn.Module):  # DeepSpeed engine, DDP
            inner = inner.module
        else:
            break
    raise TypeError(f"expected a Hugging Face causal LM (optionally wrapped by peft/DeepSpeed), got {type(model).__name__}")


def output_layer(model: nn.Module) -> nn.Linear:
    """The student's output layer, checked to be a plain Linear whose output is the logits."""
    lm = _causal_lm(model)
    head = lm.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"the fused lm_head path needs a plain nn.Linear output layer; {type(lm).__name__} has "
            f"{type(head).__name__} (e.g. LoRA on lm_head is not supported)"
        )
    config = lm.config
    for attr, neutral in (("final_logit_softcapping", None), ("logit_scale", 1.0), ("output_multiplier_scale", 1.0)):
        value = getattr(config, attr, neutral)
        if value is not None and value != neutral:
            raise TypeError(f"{type(lm).__name__} post-processes its logits ({attr}={value}); use the unfused path")
    return head


def fused_student_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    teacher_logits: Tensor | None,
    criterion,
    *,
    diagnostics: bool = False,
    chunk_rows: int | None = None,
    **model_kwargs,
):
    """Run the student and return the criterion's LossOutput without materialising its logits.

    ``model`` is called exactly as the unfused trainer calls it (``model(input_ids=...,
    attention_mask=..., use_cache=False, **model_kwargs)``; a DeepSpeed engine, a peft model or a
    plain Hugging Face causal LM), with its output layer's forward replaced, for this call only, by
    :func:`fused_linear_loss` on the hidden states it receives. Labels are aligned with the
    positions (``labels[:, i]`` is the target of position i), as for the criterion.
    """
    head = output_layer(model)
    captured = {}

    def loss_forward(hidden: Tensor) -> Tensor:
        captured["out"] = fused_linear_loss(
            hidden, head.weight, head.bias, labels, teacher_logits, criterion,
            diagnostics=diagnostics, chunk_rows=chunk_rows,
        )
        return captured["out"].loss

    head.forward = loss_forward  # an instance attribute: nn.Module.__call__ (and its hooks) use it
    try:
        output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **model_kwargs)
    finally:
        del head.forward
    result = captured.get("out")
    loss = getattr(output, "logits", None)
    # the same storage (wrappers such as DeepSpeed's hooks may return an alias), not equal values:
    # comparing values would make the host wait for the device on every step
    if result is None or loss is None or loss.data_ptr() != result.loss.data_ptr():
        raise RuntimeError(
            f"{type(_causal_lm(model)).__name__} did not return its output layer's result unchanged as logits; "
            "the fused lm_head path cannot be used with this model"
        )
    # The tensor the model returned carries DeepSpeed's backward hooks (ZeRO-3 gathers the weight there).
    result.loss = loss
    return result
