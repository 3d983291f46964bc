"""Small configs of the model families and a random model with another folder's tokenizer, for the
family tests (unit and through the scripts)."""

from __future__ import annotations

from pathlib import Path

import torch

QWEN_SMALL = dict(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                  num_key_value_heads=1, max_window_layers=1, layer_types=["full_attention"])
OLMO_SMALL = dict(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                  num_key_value_heads=2)
GEMMA_TEXT_SMALL = dict(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=8, layer_types=["sliding_attention", "full_attention"])


def with_tokenizer(config_dir: Path, tokenizer_dir: Path, out: Path, *, seed: int, **overrides) -> Path:
    """A random model from ``config_dir``'s config with ``tokenizer_dir``'s tokenizer (model_hub
    folders that say "use ... (same tokenizer)")."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from todi.models import load_tokenizer, save_tokenizer_profile

    config = AutoConfig.from_pretrained(config_dir, **overrides)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.save_pretrained(out)
    save_tokenizer_profile(tokenizer, out)
    return out
