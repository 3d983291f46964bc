"""Batched sampling for evaluation, reproducible per example.

A sampled answer depends only on (model, prompt, seed, example index): not on the batch size, the
batch it lands in, the number of ranks, or the device. This is done with Gumbel-max sampling whose
noise comes from a counter-based hash of (seed, example index, step, vocabulary index) rather than
from a stateful RNG shared by the batch: ``argmax(log_softmax(warped logits) + Gumbel)`` is an exact
sample from the warped distribution, and every row draws its own noise.

Official semantics are kept where they matter for the numbers: prompts are tokenised without special
tokens, each example may generate up to ``max_length − max_prompt_length`` new tokens (the official
code left-pads every prompt to ``max_prompt_length`` and generates up to ``max_length`` in total),
generation stops at EOS, answers are stripped of surrounding whitespace, and the default sampling is
top_k 0, top_p 1.0, temperature 1.0 with no_repeat_ngram_size 6. Prompts are batched by length (least
padding) and results come back in dataset order.

Two deliberate differences: a prompt longer than ``max_prompt_length`` keeps its *last* tokens (the
official code keeps the first ones and so cuts off the "### Response:" cue; this only happens with
tokenizers other than GPT-2's, whose 256-token limit the data preparation enforces), and the same
no_repeat_ngram_size is used on dev and test (the official dev evaluation silently used 0).

Exactness: the answer is a pure function of (model, prompt, seed, index) given the logits. Batches of
other shapes compute the logits with other reduction orders, which in fp32 moves them by ~1e-6 (a
different answer would need a near-tie that close: practically never), but in bf16/fp16 by up to
~1e-2, enough to resolve some near-ties differently, after which an answer goes its own (equally
valid) way. So answers are bitwise independent of batch size and rank count in fp32, and only
distributionally so in half precision (``scripts/bench/bench_generate.py`` counts the differences).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = [
    "Answers", "SamplingConfig", "SamplingJob", "answer_lengths", "encode_prompts", "generate", "gumbel_noise",
    "eval_mode", "left_pad", "logits_processors", "pinned_generation_config", "sample_answers", "sample_new_tokens",
    "warpers",
]

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingConfig:
    """How answers are sampled; the same object drives dev evaluation and test evaluation."""

    do_sample: bool = True
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    # MiniLLM/DSKD/ToDi evaluate the test sets with no_repeat_ngram_size 6 (their dev evaluation
    # silently used 0); here one explicit value applies to both.
    no_repeat_ngram_size: int = 6
    max_length: int = 512
    max_prompt_length: int = 256

    def __post_init__(self):
        if self.max_prompt_length <= 0 or self.max_length <= self.max_prompt_length:
            raise ValueError(
                f"need 0 < max_prompt_length < max_length, got {self.max_prompt_length} and {self.max_length}"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.no_repeat_ngram_size < 0:
            raise ValueError(f"invalid sampling settings: {asdict(self)}")

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - self.max_prompt_length


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors, overflow-free (products < 2^63)."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x21F0AAAD) & _MASK32
    x = ((x ^ (x >> 15)) * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def gumbel_noise(seed: int | Tensor, example_ids: Tensor, step: int | Tensor, vocab_size: int) -> Tensor:
    """Standard Gumbel noise ``[len(example_ids), vocab_size]`` (float32), a pure function of its inputs.

    Each row gets a 32-bit key from (seed, example id, step); entry ``v`` of a row is one more hash
    round of ``key ^ (v · golden ratio)``, whose top 24 bits give a uniform in (0, 1) exactly
    representable in float32 (one hash round per entry keeps this cheap next to the model on CPU).
    ``seed`` and ``step`` are one value for all rows or one per row (``[len(example_ids)]``, as the
    vLLM engine's batches mix requests of several seeds and lengths).
    """
    device = example_ids.device
    example_ids = example_ids.to(torch.int64)
    seeds = torch.as_tensor(seed, dtype=torch.int64, device=device).expand_as(example_ids)
    steps = torch.as_tensor(step, dtype=torch.int64, device=device).expand_as(example_ids)
    key = _mix32((seeds & _MASK32) ^ _mix32(example_ids + 0x9E3779B9))
    key = _mix32(key ^ _mix32(steps + 0x85EBCA6B))
    weyl = (torch.arange(vocab_size, device=device, dtype=torch.int64) * 0x9E3779B1) & _MASK32
    bits = _mix32(key.unsqueeze(1) ^ weyl.unsqueeze(0))
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)  # in (0, 1)
    return -torch.log(-torch.log(uniform))


class _VocabularyMask:
    """Logits processor: -inf at ids ≥ ``size`` (output rows no tokenizer entry stands for, e.g.
    Qwen2.5's padding rows 151,665..152,063), so that no answer ever samples a padding row."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if scores.shape[-1] > self.size:
            scores = scores.clone()
            scores[:, self.size:] = -float("inf")
        return scores


class _GumbelSampler:
    """Logits processor: adds per-example Gumbel noise so that greedy decoding samples."""

    def __init__(self, seed: int, example_ids: Tensor, prompt_width: int):
        self.seed = seed
        self.example_ids = example_ids
        self.prompt_width = prompt_width

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1] - self.prompt_width
        logp = torch.log_softmax(scores.float(), dim=-1)
        noise = gumbel_noise(self.seed, self.example_ids.to(scores.device), step, scores.shape[-1])
        return logp + noise  # -inf entries (filtered by top-k/top-p) stay -inf


def logits_processors(config: SamplingConfig, seed: int, example_ids: Tensor, prompt_width: int,
                vocab_size: int | None = None):
    """The logits processors: the padding-row mask (``vocab_size`` = len(tokenizer)) first, then the
    sampling warpers and the Gumbel sampler."""
    from transformers import LogitsProcessorList

    procs = LogitsProcessorList()
    if vocab_size is not None:
        procs.append(_VocabularyMask(vocab_size))
    if not config.do_sample:
        return procs
    procs.extend(warpers(config))
    procs.append(_GumbelSampler(seed, example_ids, prompt_width))
    return procs


def warpers(config: SamplingConfig) -> list:
    """The sampling warpers in the order they apply (temperature, top-k, top-p): Hugging Face's own,
    each a function of the scores only; shared with the vLLM engine so that both warp alike."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    found = []
    if config.temperature != 1.0:
        found.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k > 0:
        found.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        found.append(TopPLogitsWarper(config.top_p))
    return found


def encode_prompts(tokenizer, prompts: list[str], max_prompt_length: int) -> list[list[int]]:
    """Token ids of each prompt (no special tokens, as the official code and training data), keeping
    its last ``max_prompt_length`` tokens (the end with the "### Response:" cue), after the family's
    prompt prefix (Gemma's ``<bos>``, :func:`todi.models.prompt_prefix_ids`)."""
    from todi.models import prompt_prefix_ids

    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty: there is nothing to answer")
    prefix = prompt_prefix_ids(tokenizer)
    return [prefix + ids[-(max_prompt_length - len(prefix)):] for ids in encoded]


def left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    return ids.to(device), mask.to(device)


@dataclass(frozen=True)
class SamplingJob:
    """Prompts to answer with one seed; example ids are the prompts' indices in ``prompts``."""

    prompts: list[str]
    seed: int


@dataclass(frozen=True)
class Answers:
    """Sampled answers in dataset order: ``texts`` (decoded, stripped) and ``new_tokens``, the tokens each
    answer generated before its stop token (at most ``max_new_tokens``; re-tokenising the decoded text
    can give another count, since decoding is not invertible for byte-level tokenizers). ``seconds``:
    the generation time, where an engine (:mod:`todi.generation.engine`) measured it."""

    texts: list[str]
    new_tokens: list[int]
    seconds: float | None = None


def answer_lengths(generated: Tensor, stop_ids: list[int]) -> list[int]:
    """Tokens before the first stop token of each row of ``generated`` [B, L] (L where there is none);
    what follows a stop token is the padding of a finished row."""
    stops = torch.isin(generated, torch.tensor(stop_ids, device=generated.device))
    first = torch.where(stops.any(dim=1), stops.int().argmax(dim=1), generated.shape[1])
    return first.tolist()


def pinned_generation_config(config: SamplingConfig, max_new_tokens: int, stop_ids: list[int], pad_id: int):
    """``generate()``'s settings, every one pinned so a checkpoint's generation_config.json (e.g. a repetition
    penalty) cannot change the protocol; greedy, since the Gumbel processor samples reproducibly.
    ``stop_ids``: the family's end tokens (todi_tokenizer.json), EOS first."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
                            no_repeat_ngram_size=config.no_repeat_ngram_size, repetition_penalty=1.0,
                            eos_token_id=stop_ids, pad_token_id=pad_id)


@contextmanager
def eval_mode(model):
    """``model`` in eval mode for the block (no dropout, and no draw from the global RNG: exact resume)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def sample_new_tokens(model, prompts: list[list[int]], example_ids: list[int], config: SamplingConfig, *, seed: int,
                      max_new_tokens: int, stop_ids: list[int], pad_id: int, vocab_size: int,
                      synced_gpus: bool = False) -> Tensor:
    """One ``generate`` call of the seeded sampler: ``prompts`` (token ids, no padding) left-padded,
    each row drawn with the noise of its example id. Returns the new tokens ``[B, ≤ max_new_tokens]``
    on the model's device (rows that stopped early padded with ``pad_id``); the caller sets eval mode."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=pinned_generation_config(config, max_new_tokens, stop_ids, pad_id),
        logits_processor=logits_processors(config, seed, torch.tensor(example_ids, dtype=torch.int64, device=device),
                                           ids.shape[1], vocab_size=vocab_size),
        synced_gpus=synced_gpus,
    )
    return out[:, ids.shape[1]:]


def generate(model, tokenizer, prompts: list[str], config: SamplingConfig = SamplingConfig(), **kwargs) -> list[str]:
    """The answers' texts of :func:`sample_answers` (same arguments), in the order of ``prompts``."""
    return sample_answers(model, tokenizer, prompts, config, **kwargs).texts


@torch.no_grad()
def sample_answers(
    model,
    tokenizer,
    prompts: list[str],
    config: SamplingConfig = SamplingConfig(),
    *,
    seed: int,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    synced_gpus: bool = False,
    progress: bool = False,
) -> Answers:
    """Answers to ``prompts`` (decoded, without the prompt and special tokens), in the same order.

    With ``world_size > 1`` every rank passes the same prompts, generates a share of them and all
    ranks return the full list (``torch.distributed`` must be initialised). ``synced_gpus`` keeps
    ranks in lock-step for ZeRO-3, where every forward needs every rank.
    """
    from todi.models import stop_token_ids

    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
    if not prompts:
        return Answers([], [])
    encoded = encode_prompts(tokenizer, prompts, config.max_prompt_length)
    # Longest first: similar lengths share a batch (little padding) and memory peaks early.
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    mine = order[rank::world_size]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    if synced_gpus and world_size > 1:
        # every rank must run the same number of generate() calls
        most = -(-len(order[0::world_size]) // batch_size)
        batches += [[]] * (most - len(batches))

    stop_ids = stop_token_ids(tokenizer)
    results: dict[int, tuple[str, int]] = {}
    iterator = batches
    if progress:
        from todi.util.log import progress_bar

        iterator = progress_bar(iterable=batches, desc="generating", unit="batch", disable=rank != 0)
    with eval_mode(model):
        for batch in iterator:
            dummy = not batch
            batch = batch or [order[0]]
            new = sample_new_tokens(model, [encoded[i] for i in batch], batch, config, seed=seed,
                                    max_new_tokens=config.max_new_tokens, stop_ids=stop_ids,
                                    pad_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), synced_gpus=synced_gpus)
            if dummy:
                continue
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            results.update(zip(batch, zip((t.strip() for t in texts), answer_lengths(new, stop_ids))))

    if world_size > 1:
        import torch.distributed as dist

        gathered: list[dict[int, tuple[str, int]]] = [{} for _ in range(world_size)]
        dist.all_gather_object(gathered, results)
        for part in gathered:
            results.update(part)
    answers = [results[i] for i in range(len(prompts))]
    return Answers([text for text, _ in answers], [n for _, n in answers])
