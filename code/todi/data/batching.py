"""Which examples go into which optimizer step, micro-batch and process: the epoch plan.

Every process computes the same global plan from (seed, epoch) alone, then takes its share, so
the plan never depends on the process's rank or on any RNG state the training consumes:

* an epoch is a permutation of the training set (numpy's generator seeded with ``[seed, epoch]``);
* an optimizer step takes the next ``batch_size × grad_accum × world_size`` examples (the global
  batch); the examples left over at the end of an epoch (fewer than a global batch) are skipped,
  as in the official code, and counted in the log;
* within a step, micro-batch ``j`` goes to rank ``j % world_size`` as its micro-step
  ``j // world_size``.

The set of examples of each step therefore depends only on the seed, the epoch and the global
batch size. With ``group_by_length`` the permutation is cut into chunks of 50 global batches,
each chunk is sorted by length (longest first) before being cut into micro-batches, and the
steps are shuffled: a step holds examples of similar length (less padding, balanced ranks), and
the epoch still visits the same examples, in a different grouping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochPlan", "epoch_plan"]

# Steps per length-sorted chunk with --group-by-length (Hugging Face uses 50 batches per "megabatch").
GROUP_CHUNK_STEPS = 50


@dataclass
class EpochPlan:
    """steps[s][j]: example indices of micro-batch ``j`` of optimizer step ``s`` (world_size × grad_accum of them)."""

    steps: list[list[list[int]]]
    world_size: int
    grad_accum: int
    skipped: int

    def __len__(self) -> int:
        return len(self.steps)

    def rank_batches(self, rank: int, start_step: int = 0) -> list[list[int]]:
        """This rank's micro-batches in execution order, from ``start_step`` on."""
        out = []
        for step in self.steps[start_step:]:
            for micro in range(self.grad_accum):
                out.append(step[micro * self.world_size + rank])
        return out


def epoch_plan(
    lengths: list[int],
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
    group_by_length: bool = False,
) -> EpochPlan:
    """The plan of epoch ``epoch`` (0-based) for a dataset whose examples have ``lengths``."""
    n = len(lengths)
    per_micro = batch_size
    micros_per_step = world_size * grad_accum
    per_step = per_micro * micros_per_step
    n_steps = n // per_step
    if n_steps == 0:
        raise ValueError(
            f"{n} training examples do not fill one optimizer step of {per_step} "
            f"(batch size {batch_size} × gradient accumulation {grad_accum} × {world_size} processes)"
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)[: n_steps * per_step]
    if not group_by_length:
        micros = order.reshape(-1, per_micro).tolist()
        steps = [micros[s * micros_per_step:(s + 1) * micros_per_step] for s in range(n_steps)]
    else:
        lengths_arr = np.asarray(lengths)
        steps = []
        chunk = per_step * GROUP_CHUNK_STEPS
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            # stable sort on -length keeps the random order among equal lengths
            part = part[np.argsort(-lengths_arr[part], kind="stable")]
            micros = part.reshape(-1, per_micro).tolist()
            steps += [micros[s:s + micros_per_step] for s in range(0, len(micros), micros_per_step)]
        steps = [steps[i] for i in rng.permutation(len(steps))]
    return EpochPlan(steps=steps, world_size=world_size, grad_accum=grad_accum, skipped=n - n_steps * per_step)
