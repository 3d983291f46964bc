"""Loading models and tokenizers (student, teacher, evaluation checkpoints)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["DTYPES", "load_model", "load_tokenizer", "save_random_model"]

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


def save_random_model(
    reference_dir: str | Path, out_dir: str | Path, *, seed: int = 0, **config_overrides
) -> Path:
    """Save a randomly initialised model built from ``reference_dir``'s config, with its tokenizer.

    For tests, benchmarks and the demo: e.g. ``save_random_model(gpt2_dir, out, n_layer=2,
    n_embd=64, n_head=4)`` gives a tiny GPT-2 with the real GPT-2 tokenizer. Returns ``out_dir``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    reference_dir = _check_dir(reference_dir, "reference model directory")
    config = AutoConfig.from_pretrained(reference_dir, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    load_tokenizer(reference_dir).save_pretrained(out_dir)
    return out_dir
