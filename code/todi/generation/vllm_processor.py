"""The vLLM (V1 model runner) logits processor that makes vLLM draw the seeded HF sampler's tokens.

Loaded once at engine start (``LLM(logits_processors=[ExactSampling])``); a request opts in with
``SamplingParams(temperature=0, extra_args={EXTRA_ARGS_KEY: row_settings(...)})``. Greedy decoding
then takes the argmax of :func:`todi.generation.exact_sampling.apply_rows`: the Gumbel-max draw of
the HF sampler, with each request's own seed and example id (never one generator shared by a batch).
This module imports vLLM: only :mod:`todi.generation.vllm_engine` imports it, and only when used.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from todi.generation.exact_sampling import EXTRA_ARGS_KEY, RowSettings, RowState, apply_rows

__all__ = ["ExactSampling"]


class ExactSampling(LogitsProcessor):
    """Batch-level processor: per batch slot, the :class:`RowState` of the request there (or none)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.slots: dict[int, RowState] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Reject, at submission, a request whose settings this processor could not apply."""
        settings = (sampling_params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if settings is not None:
            RowSettings(**settings)
            if sampling_params.temperature != 0:
                raise ValueError("exact sampling needs temperature=0 (the processor draws the sample)")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the argmax: vLLM must apply it before greedy decoding

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follow the batch's slots: removals, then additions, then moves (vLLM's documented order)."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            settings = (params.extra_args or {}).get(EXTRA_ARGS_KEY) if params is not None else None
            if settings is None:
                self.slots.pop(index, None)
            else:  # ``output`` is the request's live list of generated tokens
                self.slots[index] = RowState(RowSettings(**settings), prompt, output)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.slots.pop(a, None), self.slots.pop(b, None)
            if row_a is not None:
                self.slots[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self.slots[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [num_requests, V] float32 → the HF sampler's Gumbel scores in our rows."""
        if not self.slots:
            return logits
        return apply_rows(logits, [self.slots.get(i) for i in range(logits.shape[0])])
