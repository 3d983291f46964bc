"""Rollouts for on-policy distillation: a model's sampled continuations of prompts given as token ids.

The same seeded Gumbel-max sampler as the evaluation's (:mod:`todi.generation.sampling`), so a
continuation is a pure function of (model, prompt, seed, example id): not of the batch it lands in,
the number of ranks, or a resume. Training keys ``seed`` on (run seed, optimizer step)
(:func:`rollout_seed`) and the example id is the record's index in its data file.
"""

from __future__ import annotations

import torch

from todi.generation.sampling import SamplingConfig, answer_lengths, eval_mode, sample_new_tokens

__all__ = ["rollout_seed", "sample_continuations"]

_MASK32 = 0xFFFFFFFF
_STEP_MULTIPLIER = 0x9E3779B1  # spreads consecutive steps over the 32-bit seed space


def rollout_seed(run_seed: int, step: int) -> int:
    """The sampler's seed of optimizer step ``step`` (0-based) of a run seeded ``run_seed``."""
    return (run_seed * _STEP_MULTIPLIER + step + 1) & _MASK32


@torch.no_grad()
def sample_continuations(model, prompts: list[list[int]], example_ids: list[int], config: SamplingConfig, *,
                         seed: int, pad_id: int, stop_ids: list[int], vocab_size: int, budgets: list[int] | None = None,
                         synced_gpus: bool = False) -> list[list[int]]:
    """Sampled continuations of ``prompts`` (token ids, no padding), one generate call for all of them.

    ``budgets``: the most new tokens each may keep (default ``config.max_new_tokens``; the call
    generates up to the largest); a continuation ends with its first stop token when it has one.
    ``vocab_size``: the tokenizer's entries (output rows beyond it are never sampled).
    ``synced_gpus``: keep ranks in lock-step (ZeRO-3, where every forward needs every rank).
    Returns the continuations' ids, in the order of ``prompts``.
    """
    if not prompts:
        return []
    budgets = budgets or [config.max_new_tokens] * len(prompts)
    with eval_mode(model):
        new = sample_new_tokens(model, prompts, example_ids, config, seed=seed, max_new_tokens=max(budgets),
                                stop_ids=stop_ids, pad_id=pad_id, vocab_size=vocab_size, synced_gpus=synced_gpus).cpu()
    # up to and including the first stop token (answer_lengths: the tokens before it), within the budget
    ends = [min(n + 1, new.shape[1], budget) for n, budget in zip(answer_lengths(new, stop_ids), budgets)]
    return [row[:end].tolist() for row, end in zip(new, ends)]
