"""The vLLM engine: the seeded HF sampler's answers at vLLM's speed (token-identical in fp32).

Every request is greedy (``temperature=0``) over the scores of one batch-level logits processor
(:mod:`todi.generation.vllm_processor`) that bans repeated n-grams as Hugging Face does (prompt
included), masks the padding rows beyond the tokenizer and adds the project's Gumbel noise for the
request's (seed, example id, step): vLLM's argmax is then the HF sampler's draw, whatever vLLM's
batching. The project tokenises (prompt token ids from :func:`todi.generation.sampling.encode_prompts`)
and decodes; vLLM sees token ids only (``skip_tokenizer_init``).

Pinned choices, each because the alternative changes answers: the V1 model runner (vLLM 0.32's V2
runner on GPUs takes another processor interface), an explicit dtype (``"auto"`` turns fp32
checkpoints into half precision), synchronous scheduling (the processor reads each request's
generated tokens, which asynchronous scheduling fills in late), per-request noise keys carried by the
processor (one ``SamplingParams(seed=...)`` shared by a batch gives every prompt the same noise).

The engine runs inside the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): weights can be
pushed into it (dev evaluation) and, under torchrun, each rank's engine joins the ranks' process group
as vLLM's "external launcher" (tensor parallel size 1: every rank answers its own share on its own
device, ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from todi.generation.backends import check_backend
from todi.generation.exact_sampling import EXTRA_ARGS_KEY, row_settings
from todi.generation.sampling import Answers, SamplingConfig, SamplingJob, answer_lengths, encode_prompts

__all__ = ["DEFAULT_MEMORY_SHARE", "VLLMEngine", "start_llm", "vllm_dtype"]

# the GPU memory share of an engine that has the device to itself (vLLM's own default)
DEFAULT_MEMORY_SHARE = 0.9
VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def vllm_dtype(dtype: torch.dtype) -> str:
    """vLLM's name of ``dtype`` (never "auto", which downcasts fp32 checkpoints)."""
    if dtype not in VLLM_DTYPES:
        raise ValueError(f"the vLLM engine runs {', '.join(map(str, VLLM_DTYPES))}, not {dtype}")
    return VLLM_DTYPES[dtype]


def start_llm(model_path: str | Path, dtype: torch.dtype, max_model_len: int, *, memory_share: float,
              sleep_mode: bool = False, **engine_args):
    """A ``vllm.LLM`` on this process's device (V1 runner, tokenizer-free, exact-sampling processor).

    ``sleep_mode``: the engine can free its memory between uses (CUDA); ``engine_args``: further
    ``vllm.LLM`` arguments (e.g. ``max_num_seqs``, the batch-size bound).
    """
    check_backend("vllm")
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # the V1 runner: the processor interface tested on CPU
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process (see the module docstring)
    import torch.distributed as dist
    from vllm import LLM

    from todi.generation.vllm_processor import ExactSampling

    ranks = dist.get_world_size() if dist.is_initialized() else 1
    return LLM(
        model=str(model_path), skip_tokenizer_init=True, dtype=vllm_dtype(dtype), max_model_len=max_model_len,
        logits_processors=[ExactSampling], gpu_memory_utilization=memory_share, enable_sleep_mode=sleep_mode,
        async_scheduling=False, seed=0,
        distributed_executor_backend="external_launcher" if ranks > 1 else None, **engine_args,
    )


class VLLMEngine:
    """Answers sampling jobs with one ``vllm.LLM`` (see the module docstring); ``llm`` is started by
    :func:`start_llm` (or given, e.g. an engine colocated with training)."""

    name = "vllm"

    def __init__(self, llm, tokenizer):
        from todi.models import stop_token_ids

        self.llm, self.tokenizer = llm, tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        self.vocab_size = len(tokenizer)

    @classmethod
    def from_checkpoint(cls, model_path, tokenizer, config, *, dtype, device=None, adapter_path=None,
                        batch_size=None, memory_share=None) -> "VLLMEngine":
        """An engine whose context fits ``config``'s prompt and answer budget, on this rank's device
        (vLLM picks it: ``LOCAL_RANK``). A LoRA adapter is merged into the base model exactly as the
        HF engine merges it (same dtype, so the same weights), in a temporary folder that vLLM loads."""
        share = DEFAULT_MEMORY_SHARE if memory_share is None else memory_share
        if adapter_path is None:
            return cls(start_llm(model_path, dtype, config.max_length, memory_share=share), tokenizer)
        from todi.models import load_model

        with tempfile.TemporaryDirectory(prefix="todi-merged-") as merged:
            load_model(model_path, dtype=dtype, adapter_path=adapter_path, merge_adapter=True).save_pretrained(merged)
            return cls(start_llm(merged, dtype, config.max_length, memory_share=share), tokenizer)

    def answer(self, jobs: Sequence[SamplingJob], config: SamplingConfig, *, rank: int = 0, world_size: int = 1,
               progress: bool = False) -> Iterator[Answers]:
        """Every job's share of this rank in one ``generate`` call; the call's time is shared among
        the jobs by prompt count."""
        start = time.perf_counter()
        requests = list(self._requests(jobs, config, rank, world_size))
        outputs = self.llm.generate([r[2] for r in requests], [r[3] for r in requests], use_tqdm=progress)
        mine = {(job, example): self._decode(out.outputs[0].token_ids)
                for (job, example, _, _), out in zip(requests, outputs)}
        found = self._gather(mine, world_size)
        seconds = time.perf_counter() - start
        total = max(sum(len(job.prompts) for job in jobs), 1)
        for j, job in enumerate(jobs):
            answers = [found[(j, i)] for i in range(len(job.prompts))]
            yield Answers([a for a, _ in answers], [n for _, n in answers], seconds * len(job.prompts) / total)

    def continuations(self, prompts: Sequence[Sequence[int]], example_ids: Sequence[int], config: SamplingConfig, *,
                      seed: int, budgets: Sequence[int]) -> list[list[int]]:
        """This rank's rollouts in one ``generate`` call, each request with its own budget (the noise of a
        token depends on its position only, so a shorter budget cuts the same sample short)."""
        params = [self._params(config, seed, example, budget) for example, budget in zip(example_ids, budgets)]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [self._through_stop(out.outputs[0]) for out in outputs]

    def _through_stop(self, completion) -> list[int]:
        """A completion's ids up to and including its stop token (vLLM reports a stop token id it ended
        on as ``stop_reason`` and may leave it out of ``token_ids``)."""
        ids = list(completion.token_ids)
        stop = completion.stop_reason
        if isinstance(stop, int) and (not ids or ids[-1] != stop):
            ids.append(stop)
        return ids

    def _requests(self, jobs: Sequence[SamplingJob], config: SamplingConfig, rank: int,
                  world_size: int) -> Iterable[tuple]:
        """(job index, example id, prompt, SamplingParams) of this rank's share of each job (the HF
        sampler's ``rank::world_size`` of the prompts longest first)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank} and {world_size}")
        encoded: dict[int, list[list[int]]] = {}  # jobs of one set (several seeds) share a prompt list
        for j, job in enumerate(jobs):
            if id(job.prompts) not in encoded:
                encoded[id(job.prompts)] = encode_prompts(self.tokenizer, job.prompts, config.max_prompt_length)
            ids = encoded[id(job.prompts)]
            order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
            for i in order[rank::world_size]:
                yield j, i, {"prompt_token_ids": ids[i]}, self._params(config, job.seed, i, config.max_new_tokens)

    def _params(self, config: SamplingConfig, seed: int, example_id: int, max_tokens: int):
        """One request's ``SamplingParams``: greedy over the exact-sampling processor's scores for its
        (seed, example id), ending at a stop token (EOS handled as one, not by vLLM) or ``max_tokens``."""
        from vllm import SamplingParams

        return SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=0, ignore_eos=True,
                              stop_token_ids=self.stop_ids, detokenize=False,
                              extra_args={EXTRA_ARGS_KEY: row_settings(config, seed, example_id, self.vocab_size)})

    def _decode(self, token_ids: Sequence[int]) -> tuple[str, int]:
        """(stripped text, tokens before the stop token), decoded as the HF sampler does."""
        row = torch.tensor([list(token_ids)], dtype=torch.long)
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        return text.strip(), answer_lengths(row, self.stop_ids)[0] if len(token_ids) else 0

    @staticmethod
    def _gather(mine: dict, world_size: int) -> dict:
        if world_size == 1:
            return mine
        import torch.distributed as dist

        parts: list[dict] = [{} for _ in range(world_size)]
        dist.all_gather_object(parts, mine)
        return {key: value for part in parts for key, value in part.items()}

    def shutdown(self) -> None:
        """Stop the engine and free its memory now. vLLM keeps one parallel state per process, which an
        engine's shutdown (also a garbage-collected engine's) tears down, with the default process group:
        run one engine at a time in a process, shutting it down before the next starts."""
        self.llm.llm_engine.engine_core.shutdown()

    # ----------------------------------------------------------------- colocated use (dev evaluation)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights in place (names as in the HF checkpoint), then drop the prefix
        cache, whose keys and values the old weights computed."""
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=iter(named_tensors))
        head = getattr(runner.get_model(), "lm_head", None)
        if head is not None and hasattr(head, "quant_method") and runner.device.type == "cpu":
            # vLLM's CPU backend packs the output layer's weight for its GEMM when loading; an output
            # layer tied to the input embedding is not reloaded itself, so its packed copy would stay
            # stale: pack it again (on GPUs the tied weight is shared storage, updated in place)
            head.quant_method.process_weights_after_loading(head)
        self.llm.reset_prefix_cache()
