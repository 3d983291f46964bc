"""Model surgery for the fused lm_head loss: the student's logits never exist.

:func:`fused_student_loss` is what the trainer calls instead of ``model(...)`` + criterion: it
runs the whole model (a Hugging Face causal LM, possibly inside peft and a DeepSpeed engine) with
the loss computed *inside the output layer's forward*
(:meth:`todi.loss.criterion.DistillationLoss.loss_from_hidden`, over :func:`todi.kernels.fused_linear_loss`).
The output layer is called as a module, so under ZeRO-3 its weight is gathered by DeepSpeed's
hooks for the forward, and the loss that comes out passes through DeepSpeed's backward hooks,
which gather the weight again before its gradient (returned by the kernel's backward) is
accumulated and reduce-scattered.
"""

from __future__ import annotations

from torch import Tensor, nn

from todi.loss.criterion import DistillationLoss, LossOutput

__all__ = ["fused_student_loss", "output_layer"]


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
    criterion: DistillationLoss,
    *,
    diagnostics: bool = False,
    chunk_size: int | None = None,
    ce: bool = True,
    **model_kwargs,
) -> LossOutput:
    """Run the student and return the criterion's LossOutput without materialising its logits.

    ``model`` is called exactly as the unfused trainer calls it (``model(input_ids=...,
    attention_mask=..., use_cache=False, **model_kwargs)``; a DeepSpeed engine, a peft model or a
    plain Hugging Face causal LM), with its output layer's forward replaced, for this call only, by
    :meth:`DistillationLoss.loss_from_hidden` on the hidden states it receives. Labels are aligned with the
    positions (``labels[:, i]`` is the target of position i), as for the criterion; ``ce``: as the criterion's.
    """
    head = output_layer(model)
    captured = {}

    def loss_forward(hidden: Tensor) -> Tensor:
        captured["out"] = criterion.loss_from_hidden(
            hidden, head.weight, head.bias, labels, teacher_logits, diagnostics=diagnostics, chunk_size=chunk_size,
            ce=ce,
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
