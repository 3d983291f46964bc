"""DeepSpeed configs: read a JSON, fill in what the command line decides, validate, read the precision.

The command line is the source of truth for the micro-batch size, gradient accumulation and
clipping (the official code overwrote those config fields the same way); the config is the source
of truth for the precision (applied to student *and* teacher) and the ZeRO stage. The optimizer
and the schedule are built by the trainer, so a config must not define them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "fill_config", "load_config", "precision", "validate", "zero_stage"]

# precision name (as in configs and --dtype) -> torch dtype; the one table of them
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON in the DeepSpeed config ({e.msg})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a DeepSpeed config must be a JSON object")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ValueError(
                f"{path}: remove the {section!r} section: the optimizer (AdamW) and the learning-rate "
                "schedule come from the command line (--lr, --weight-decay, --lr-decay-style, --warmup-iters)"
            )
    return config


def precision(config: dict) -> str:
    """'bf16', 'fp16' or 'fp32' from the config's ``bf16``/``fp16`` sections."""
    bf16 = bool(config.get("bf16", {}).get("enabled", False))
    fp16 = bool(config.get("fp16", {}).get("enabled", False))
    if bf16 and fp16:
        raise ValueError("the DeepSpeed config enables both bf16 and fp16")
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def fill_config(
    config: dict, *, micro_batch_size: int, grad_accum: int, clip_grad: float, world_size: int
) -> tuple[dict, list[str]]:
    """A copy of ``config`` with the command-line values in; returns it and what was changed."""
    config = copy.deepcopy(config)
    wanted = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": clip_grad,
        "zero_allow_untested_optimizer": True,  # torch AdamW under ZeRO
        "steps_per_print": 2**31 - 1,  # the trainer logs; DeepSpeed's own step log would sync
    }
    changes = []
    for key, value in wanted.items():
        if key in config and config[key] != value and key != "steps_per_print":
            changes.append(f"{key}: {config[key]} -> {value}")
        config[key] = value
    return config, changes


def validate(config: dict | str | Path) -> None:
    """Parse with DeepSpeed's own config class (raises on anything this DeepSpeed rejects)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    if not isinstance(config, dict):
        config = load_config(config)
    DeepSpeedConfig(copy.deepcopy(config))
