"""The teacher's output layer for a hidden-state cache: what it is, the states it reads, and the
check that it alone turns them into the teacher's logits.

A causal LM's logits are its output layer applied to its final hidden states (after the final norm):
``logits = h @ W.T + b``. Some families post-process that map; those a config states are handled
(a final logit soft-capping ``c·tanh(z/c)``, Gemma 2 style; a constant logit scale, folded into
``W`` and ``b``), and every build checks on its first batch that the stored layer reproduces the
teacher's logits, so an unstated post-processing is refused instead of silently cached.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from todi.kernels.teacher_head import TeacherHead
from todi.util.atomic import atomic_write_bytes

__all__ = ["HEAD_FILE", "OutputLayer", "capture_head_inputs", "check_output_layer", "load_output_layer",
           "output_layer", "save_output_layer"]

HEAD_FILE = "head.safetensors"
# Largest difference between the stored layer's logits and the teacher's, relative to the largest
# logit, that still counts as "the same map" (the same matmul in other batch shapes moves it by
# rounding only; a soft-capping or scale the config does not state moves it by orders more).
MATCH_TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# config attributes that post-process the logits, and what this module does with them
SOFTCAP_KEYS = ("final_logit_softcapping",)
SCALE_KEYS = {"logit_scale": lambda s: s, "logits_scaling": lambda s: 1.0 / s}  # Cohere multiplies, Granite divides


@dataclass
class OutputLayer:
    """weight ``[V_t, H]``, bias ``[V_t]`` or None, softcap: the final logit soft-capping or None."""

    weight: Tensor
    bias: Tensor | None
    softcap: float | None

    def head(self, hidden: Tensor) -> TeacherHead:
        """The teacher logits of ``hidden`` ``[..., H]`` (computed where they are read)."""
        return TeacherHead(hidden, self.weight, self.bias, self.softcap)


def _text_config(model):
    config = model.config
    return getattr(config, "text_config", None) or config


def output_layer(teacher) -> OutputLayer:
    """The teacher's output layer as the map from its final hidden states to its logits (a stated
    constant logit scale folded in, a stated soft-capping kept aside)."""
    layer = teacher.get_output_embeddings()
    weight = layer.weight.detach()
    bias = layer.bias.detach() if getattr(layer, "bias", None) is not None else None
    config = _text_config(teacher)
    scale = 1.0
    for key, factor in SCALE_KEYS.items():
        value = getattr(config, key, None)
        if value not in (None, 1, 1.0):
            scale *= factor(float(value))
    if scale != 1.0:
        weight = weight * scale
        bias = bias * scale if bias is not None else None
    softcap = next((float(v) for k in SOFTCAP_KEYS if (v := getattr(config, k, None)) not in (None, 0)), None)
    return OutputLayer(weight, bias, softcap)


@contextmanager
def capture_head_inputs(teacher):
    """Within the block, ``captured[0]`` is the last input of the teacher's output layer ``[B, L, H]``:
    its final hidden states exactly as the layer reads them."""
    captured: list[Tensor] = []

    def hook(_module, args):
        captured[:] = [args[0].detach()]

    handle = teacher.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _post_processing(teacher) -> list[str]:
    """The config's settings that look like a post-processing of the logits (for the refusal)."""
    config = _text_config(teacher).to_dict()
    return [f"{k}={v}" for k, v in sorted(config.items())
            if v not in (None, False, 0, 1, 1.0) and ("logit" in k or "softcap" in k) and isinstance(v, (int, float))]


def check_output_layer(teacher, layer: OutputLayer, hidden: Tensor, logits: Tensor) -> float:
    """The relative difference between ``layer`` on ``hidden`` ``[N, H]`` and the teacher's ``logits``
    ``[N, V_t]``; a ValueError naming what the config states when it is more than rounding."""
    recomputed = layer.head(hidden).materialize().float()
    reference = logits.float()
    diff = float((recomputed - reference).abs().max() / reference.abs().max().clamp_min(1.0))
    if diff > MATCH_TOLERANCE.get(logits.dtype, MATCH_TOLERANCE[torch.bfloat16]):
        found = _post_processing(teacher)
        what = f"its config sets {', '.join(found)}" if found else "its config states no post-processing"
        raise ValueError(
            f"the teacher's logits are not its output layer applied to that layer's input (relative difference "
            f"{diff:.2e}; {what}): a hidden-state cache cannot reproduce them; use --mode topk")
    return diff


def save_output_layer(root: Path, layer: OutputLayer, dtype: torch.dtype) -> None:
    """``head.safetensors`` (weight, bias) in ``dtype``, written atomically."""
    from safetensors.torch import save

    tensors = {"weight": layer.weight.to(dtype).contiguous().cpu()}
    if layer.bias is not None:
        tensors["bias"] = layer.bias.to(dtype).contiguous().cpu()
    atomic_write_bytes(Path(root) / HEAD_FILE, save(tensors))


def load_output_layer(root: Path, softcap: float | None, device) -> OutputLayer:
    """The stored output layer on ``device``."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(root) / HEAD_FILE), device=str(device))
    return OutputLayer(tensors["weight"], tensors.get("bias"), softcap)
