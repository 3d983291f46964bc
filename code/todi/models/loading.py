"""Loading models (student, teacher, evaluation checkpoints): dtype, LoRA, multimodal checkpoints as
their text model, tiny random models for tests; the optimizer's parameter groups.
"""

from __future__ import annotations

from pathlib import Path

import torch

from todi.models.tokenizers import check_model_dir, load_tokenizer, model_type_at, save_tokenizer_profile
from todi.util.log import logger

__all__ = ['ATTENTION_PROJECTIONS', 'build_student', 'build_teacher', 'load_model', 'optimizer_param_groups', 'save_random_model']

# multimodal checkpoints loaded as their text-only causal LM: checkpoint key prefixes -> the causal LM's
_TEXT_ONLY = {
    "gemma3": {r"^language_model\.model\.": "model.", r"^model\.language_model\.": "model.",
               r"^language_model\.lm_head\.": "lm_head."},
}


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    adapter_path: str | Path | None = None,
    merge_adapter: bool = False,
    device: str | torch.device = "cpu",
):
    """AutoModelForCausalLM in ``dtype`` (SDPA attention), optionally with a LoRA adapter.

    With ``merge_adapter`` the adapter is merged into the weights (a plain model comes back);
    otherwise the :class:`peft.PeftModel` is returned.
    """
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, "model")
    text_only = _text_only_loading(path)
    if text_only is not None:
        model = _load_text_only(path, *text_only, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, check_model_dir(adapter_path, "LoRA adapter"))
        if merge_adapter:
            model = model.merge_and_unload()
    return model.to(device)


def _text_only_loading(path: Path):
    """(text config, key mapping) when ``path`` holds a multimodal checkpoint to load as its text model."""
    model_type = model_type_at(path)
    if model_type not in _TEXT_ONLY:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    text = getattr(config, "text_config", None)
    return (text, _TEXT_ONLY[model_type]) if text is not None else None


def _load_text_only(path: Path, text_config, key_mapping: dict, *, dtype):
    """The text-only causal LM of a multimodal checkpoint (e.g. Gemma 3 4B+ as Gemma3ForCausalLM):
    the language model's weights, the vision tower left out; any missing weight is an error."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the vision tower's weights are "unexpected": by design
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, config=text_config, key_mapping=key_mapping, dtype=dtype, attn_implementation="sdpa",
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    tied = {"lm_head.weight"} if getattr(text_config, "tie_word_embeddings", True) else set()
    missing = sorted(set(info.get("missing_keys", [])) - tied)
    if missing:
        raise ValueError(f"{path}: loading the text model of this multimodal checkpoint left weights missing "
                         f"({len(missing)}, e.g. {missing[:3]})")
    logger.info(f"{path}: multimodal checkpoint loaded as its text-only {type(model).__name__} "
                f"(vision weights left out)")
    return model


def save_random_model(
    reference_dir: str | Path, out_dir: str | Path, *, seed: int = 0, **config_overrides
) -> Path:
    """Save a randomly initialised model built from ``reference_dir``'s config, with its tokenizer.

    For tests, benchmarks and the demo: e.g. ``save_random_model(gpt2_dir, out, n_layer=2,
    n_embd=64, n_head=4)`` gives a tiny GPT-2 with the real GPT-2 tokenizer. Returns ``out_dir``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    reference_dir = check_model_dir(reference_dir, "reference model directory")
    config = AutoConfig.from_pretrained(reference_dir, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer = load_tokenizer(reference_dir)
    tokenizer.save_pretrained(out_dir)
    save_tokenizer_profile(tokenizer, out_dir)
    return out_dir


def build_student(
    path: str | Path,
    *,
    dtype: torch.dtype,
    peft: str | None = None,
    lora_r: int = 16,
    lora_alpha: int = 64,
    lora_dropout: float = 0.1,
    gradient_checkpointing: bool = False,
):
    """The model to train: all weights, or a fresh LoRA adapter (peft) on frozen weights."""
    model = load_model(path, dtype=dtype)
    if gradient_checkpointing:
        # non-reentrant checkpointing works with frozen inputs (LoRA) and with ZeRO-3
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if peft == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        if gradient_checkpointing:
            model.enable_input_require_grads()
        from transformers.pytorch_utils import Conv1D

        # GPT-2 stores its projections transposed (Conv1D): tell peft instead of letting it guess
        transposed = any(isinstance(m, Conv1D) for m in model.modules())
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            fan_in_fan_out=transposed, target_modules=_lora_targets(model))
        model = get_peft_model(model, config)
    elif peft is not None:
        raise ValueError(f"unsupported peft method {peft!r} (supported: lora)")
    return model


# The attention projections LoRA adapts when peft has no default for a model type (OLMo 2, for one)
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _lora_targets(model) -> list[str] | None:
    """None (peft's per-architecture default) where peft knows the model type, else the attention
    projections the model has (the same choice peft makes for Llama-style models)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    if model.config.model_type in defaults:
        return None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    found = [n for n in ATTENTION_PROJECTIONS if n in names]
    if not found:
        raise ValueError(f"--peft lora: peft has no default target modules for {model.config.model_type!r} and the "
                         f"model has none of {', '.join(ATTENTION_PROJECTIONS)}")
    return found


def build_teacher(path: str | Path, *, dtype: torch.dtype, adapter_path: str | Path | None = None):
    """The frozen teacher in eval mode, with its LoRA adapter merged when one is given."""
    model = load_model(path, dtype=dtype, adapter_path=adapter_path, merge_adapter=True)
    model.eval()
    model.requires_grad_(False)
    return model


def optimizer_param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases and norm weights (1-D tensors).

    For GPT-2 this is exactly the official grouping (biases and ln weights undecayed); with LoRA
    every trainable tensor is a matrix, so all are decayed, as in the official code.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
