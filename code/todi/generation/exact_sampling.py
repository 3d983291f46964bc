"""The seeded HF sampler's logits steps, per row, for engines that batch requests their own way.

The HF sampler (:mod:`todi.generation.sampling`) turns a model's next-token logits into a choice in
this order: ban repeated n-grams (Hugging Face's ``NoRepeatNGramLogitsProcessor``, prompt included),
set the padding rows beyond the tokenizer to −inf, warp (temperature, top-k, top-p), then
``log_softmax + gumbel_noise(seed, example id, step)`` and take the argmax. Here the same steps work
on a batch whose rows belong to unrelated requests (each with its own seed, example id, length and
settings), so that an engine taking the argmax of :func:`apply_rows` draws the HF sampler's tokens.
Torch and Hugging Face's warpers only: the vLLM processor (:mod:`todi.generation.vllm_processor`) is a
thin shell around this, and the default test suite checks it without vLLM installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor

from todi.generation.sampling import SamplingConfig, gumbel_noise, warpers

__all__ = ["EXTRA_ARGS_KEY", "NGramBans", "RowSettings", "RowState", "apply_rows", "ban_ngrams", "gumbel_scores",
           "mask_padding_rows", "row_settings"]

EXTRA_ARGS_KEY = "todi"  # SamplingParams.extra_args[EXTRA_ARGS_KEY]: the row's RowSettings as a dict


@dataclass(frozen=True)
class RowSettings:
    """What one request's row needs: its noise key (seed, example id), the tokenizer's length (ids at
    or beyond it are padding rows) and the sampling settings of :class:`SamplingConfig`."""

    seed: int
    example_id: int
    vocab_size: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    no_repeat_ngram_size: int

    @property
    def warp_key(self) -> tuple:
        """Rows with equal keys are warped together."""
        return self.temperature, self.top_k, self.top_p

    def sampling_config(self) -> SamplingConfig:
        return SamplingConfig(do_sample=self.do_sample, top_k=self.top_k, top_p=self.top_p,
                              temperature=self.temperature, no_repeat_ngram_size=self.no_repeat_ngram_size)


def row_settings(config: SamplingConfig, seed: int, example_id: int, vocab_size: int) -> dict:
    """The ``extra_args`` entry of one request (plain values: it may cross a process boundary)."""
    keep = {f.name for f in fields(RowSettings)}
    sampling = {k: v for k, v in asdict(config).items() if k in keep}
    return asdict(RowSettings(seed=seed, example_id=example_id, vocab_size=vocab_size, **sampling))


class NGramBans:
    """The tokens HF's ``NoRepeatNGramLogitsProcessor`` bans next for one sequence (prompt + output).

    HF rebuilds every n-gram of the sequence at every step; here an index (first n−1 tokens → the
    tokens that followed them) grows by the tokens added since the last call, so each step costs O(1).
    ``prompt`` and ``output`` are read, never copied: ``output`` may grow between calls (vLLM appends).
    """

    def __init__(self, n: int, prompt: Sequence[int], output: Sequence[int]):
        self.n, self.prompt, self.output = n, prompt, output
        self.index: dict[tuple[int, ...], list[int]] = {}
        self.indexed = 0  # n-grams starting at 0 .. indexed-1 are in the index

    def token(self, i: int) -> int:
        p = len(self.prompt)
        return self.prompt[i] if i < p else self.output[i - p]

    def banned(self) -> list[int]:
        length = len(self.prompt) + len(self.output)
        if self.n == 0 or length + 1 < self.n:  # HF: nothing before the sequence holds n − 1 tokens
            return []
        for start in range(self.indexed, length - self.n + 1):
            gram = tuple(self.token(start + j) for j in range(self.n))
            self.index.setdefault(gram[:-1], []).append(gram[-1])
        self.indexed = max(self.indexed, length - self.n + 1)
        prefix = tuple(self.token(i) for i in range(length - self.n + 1, length))
        return self.index.get(prefix, [])


@dataclass
class RowState:
    """One request in an engine's batch: its settings, the live token lists and its n-gram index."""

    settings: RowSettings
    prompt: Sequence[int]
    output: Sequence[int]
    bans: NGramBans = field(init=False)

    def __post_init__(self):
        self.bans = NGramBans(self.settings.no_repeat_ngram_size, self.prompt, self.output)

    @property
    def step(self) -> int:
        """Tokens generated so far: the HF sampler's step (prompt width excluded)."""
        return len(self.output)


def ban_ngrams(logits: Tensor, rows: Sequence[RowState | None]) -> Tensor:
    """−inf (in place) at each row's banned tokens; ``logits`` [B, V], ``rows`` [B] (None: untouched)."""
    where = [(i, t) for i, row in enumerate(rows) if row is not None for t in row.bans.banned()]
    if where:
        index = torch.tensor(where, dtype=torch.long, device=logits.device)
        logits[index[:, 0], index[:, 1]] = -float("inf")
    return logits


def mask_padding_rows(logits: Tensor, vocab_sizes: Tensor) -> Tensor:
    """−inf (in place) at ids ≥ the row's tokenizer length; ``logits`` [B, V], ``vocab_sizes`` [B]."""
    ids = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill_(ids.unsqueeze(0) >= vocab_sizes.unsqueeze(1), -float("inf"))


def gumbel_scores(logits: Tensor, seeds: Tensor, example_ids: Tensor, steps: Tensor) -> Tensor:
    """``log_softmax(logits) + gumbel_noise`` per row (float32 [B, V]); seeds, example ids, steps [B].
    Its argmax is the HF sampler's Gumbel-max draw; −inf entries (banned, filtered) stay −inf."""
    noise = gumbel_noise(seeds, example_ids, steps, logits.shape[-1])
    return torch.log_softmax(logits.float(), dim=-1) + noise


def apply_rows(logits: Tensor, rows: Sequence[RowState | None]) -> Tensor:
    """The HF sampler's steps on ``logits`` [B, V] (float32; rows that are None pass through), in its
    order: n-gram ban, padding rows, warpers (rows grouped by settings), Gumbel noise (sampling rows)."""
    ours = [i for i, row in enumerate(rows) if row is not None]
    if not ours:
        return logits
    device = logits.device
    logits = ban_ngrams(logits, rows)
    index = torch.tensor(ours, dtype=torch.long, device=device)
    sizes = torch.tensor([rows[i].settings.vocab_size for i in ours], device=device)
    logits[index] = mask_padding_rows(logits[index], sizes)
    sampled = [i for i in ours if rows[i].settings.do_sample]
    groups: dict[tuple, list[int]] = {}
    for i in sampled:
        groups.setdefault(rows[i].settings.warp_key, []).append(i)
    for members in groups.values():
        at = torch.tensor(members, dtype=torch.long, device=device)
        scores = logits[at]
        for warper in warpers(rows[members[0]].settings.sampling_config()):
            scores = warper(None, scores)  # HF's warpers read the scores only
        logits[at] = scores
    if sampled:
        at = torch.tensor(sampled, dtype=torch.long, device=device)
        keys = [[rows[i].settings.seed, rows[i].settings.example_id, rows[i].step] for i in sampled]
        seeds, example_ids, steps = torch.tensor(keys, dtype=torch.int64, device=device).unbind(1)
        logits[at] = gumbel_scores(logits[at], seeds, example_ids, steps)
    return logits
