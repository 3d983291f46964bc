"""Learning-rate schedules (Hugging Face's), stepped once per optimizer step by DeepSpeed.

* ``cosine``: from ``lr`` to ``lr_min`` over ``total`` steps; with no warm-up this is the official
  ``CosineAnnealingLR(T_max=total_iters, eta_min=lr_min)`` (in closed form). The official code
  ignored ``--warmup-iters`` for cosine; here it is applied.
* ``linear``: linear decay to 0; ``constant``: constant; ``noam`` (the official default):
  polynomial decay with power 0.5 to 1e-7 — all after ``warmup`` linear warm-up steps.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_scheduler"]


def build_scheduler(optimizer: Optimizer, style: str, *, warmup: int, total: int, lr_min: float) -> LambdaLR:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_linear_schedule_with_warmup,
        get_polynomial_decay_schedule_with_warmup,
    )

    if warmup > total:
        raise ValueError(f"--warmup-iters ({warmup}) exceeds the number of optimizer steps ({total})")
    if style == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr=lr_min)
    if style == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if style == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    if style == "noam":
        return get_polynomial_decay_schedule_with_warmup(optimizer, warmup, total, power=0.5)
    raise ValueError(f"unknown --lr-decay-style {style!r}")
