"""Loading models and tokenizers (student, teacher, evaluation checkpoints)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["DTYPES", "load_model", "load_tokenizer"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _check_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (expected a Hugging Face model directory)")
    return path


def load_tokenizer(path: str | Path, padding_side: str = "right"):
    """AutoTokenizer with a pad token (the EOS token when the model has none, as the official code)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_check_dir(path, "tokenizer"), padding_side=padding_side)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} has no EOS token; responses could not be terminated")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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

    model = AutoModelForCausalLM.from_pretrained(
        _check_dir(path, "model"), dtype=dtype, attn_implementation="sdpa"
    )
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, _check_dir(adapter_path, "LoRA adapter"))
        if merge_adapter:
            model = model.merge_and_unload()
    return model.to(device)
