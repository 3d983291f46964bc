"""Generation engines behind one interface: sampling jobs in, answers in dataset order out (and, for
on-policy rollouts, token-id prompts in, sampled continuations out).

A job is one (prompt list, seed) pair, e.g. one (eval set, seed) of a checkpoint's evaluation. Every
engine gives each prompt the answer the seeded HF sampler (:mod:`todi.generation.sampling`, the
reference) gives it: a pure function of (model, prompt, seed, index in its job), whatever the
batching, the rank count or the engine (bitwise in fp32). Engines differ in speed only:

* ``hf``: today's sampler, job after job (answers come back as each job ends);
* ``vllm``: every job of a call submitted to one vLLM engine at once (:mod:`todi.generation.vllm_engine`).

The backends' names and the availability check: :mod:`todi.generation.backends`.

Every rank calls :meth:`GenerationEngine.answer` with the same jobs; each generates its share
(``rank::world_size`` of each job's prompts, longest first) and all ranks get every answer back.
:meth:`GenerationEngine.continuations` is per rank: each rank samples its own prompts (rollouts of its
micro-batches), again a pure function of (weights, prompt, seed, example id).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch

from todi.generation.backends import check_backend
from todi.generation.sampling import Answers, SamplingConfig, SamplingJob, sample_answers

__all__ = ["GenerationEngine", "HFEngine", "engine_class"]


class GenerationEngine(Protocol):
    """What every engine offers (see the module docstring for the contract)."""

    name: str

    @classmethod
    def from_checkpoint(cls, model_path: str | Path, tokenizer, config: SamplingConfig, *, dtype: torch.dtype,
                        device: torch.device, adapter_path: str | Path | None = None, batch_size: int = 32,
                        memory_share: float | None = None) -> "GenerationEngine":
        """An engine for a checkpoint (a LoRA adapter merged into it, as :func:`todi.models.load_model`
        merges); ``batch_size`` is the HF engine's, ``memory_share`` the vLLM engine's (None: its default)."""
        ...

    def answer(self, jobs: Sequence[SamplingJob], config: SamplingConfig, *, rank: int = 0, world_size: int = 1,
               progress: bool = False) -> Iterator[Answers]:
        """The answers of each job, in job order (``Answers.seconds``: the generation time spent on it)."""
        ...

    def continuations(self, prompts: Sequence[Sequence[int]], example_ids: Sequence[int], config: SamplingConfig, *,
                      seed: int, budgets: Sequence[int]) -> list[list[int]]:
        """Sampled continuations of token-id ``prompts`` (no padding; this rank's own), in their order:
        each up to and including its first stop token, at most ``budgets[i]`` tokens."""
        ...


def engine_class(name: str, flag: str = "--backend") -> type:
    """The engine class of backend ``name`` (vLLM imported only when asked for); :func:`check_backend` first."""
    check_backend(name, flag)
    if name == "hf":
        return HFEngine
    from todi.generation.vllm_engine import VLLMEngine

    return VLLMEngine


class HFEngine:
    """The seeded HF sampler on an already loaded model (the reference), one job after another.

    ``synced_gpus`` keeps ranks in lock-step for ZeRO-3 (every forward needs every rank).
    """

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 32, synced_gpus: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.synced_gpus = batch_size, synced_gpus

    @classmethod
    def from_checkpoint(cls, model_path, tokenizer, config, *, dtype, device, adapter_path=None, batch_size=32,
                        memory_share=None) -> "HFEngine":
        from todi.models import load_model

        model = load_model(model_path, dtype=dtype, adapter_path=adapter_path, merge_adapter=True, device=device)
        return cls(model, tokenizer, batch_size=batch_size)

    def answer(self, jobs: Sequence[SamplingJob], config: SamplingConfig, *, rank: int = 0, world_size: int = 1,
               progress: bool = False) -> Iterator[Answers]:
        for job in jobs:
            start = time.perf_counter()
            answers = sample_answers(
                self.model, self.tokenizer, job.prompts, config, seed=job.seed, batch_size=self.batch_size,
                rank=rank, world_size=world_size, synced_gpus=self.synced_gpus, progress=progress,
            )
            yield replace(answers, seconds=time.perf_counter() - start)

    def continuations(self, prompts, example_ids, config, *, seed, budgets) -> list[list[int]]:
        """One ``generate`` call per ``batch_size`` prompts (the answers do not depend on the split)."""
        from todi.generation.rollout import sample_continuations
        from todi.models import stop_token_ids

        out: list[list[int]] = []
        for i in range(0, len(prompts), self.batch_size):
            part = slice(i, i + self.batch_size)
            out += sample_continuations(
                self.model, [list(p) for p in prompts[part]], list(example_ids[part]), config, seed=seed,
                pad_id=self.tokenizer.pad_token_id, stop_ids=stop_token_ids(self.tokenizer),
                vocab_size=len(self.tokenizer), budgets=list(budgets[part]), synced_gpus=self.synced_gpus)
        return out
