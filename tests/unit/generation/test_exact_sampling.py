"""The per-row steps other engines use (todi.generation.exact_sampling) equal the HF sampler's own:
HF's NoRepeatNGramLogitsProcessor, the padding-row mask, HF's warpers and the Gumbel noise, bitwise,
on batches that mix seeds, example ids, steps and settings. No vLLM needed."""

from __future__ import annotations

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from todi.generation.exact_sampling import (
    NGramBans, RowSettings, RowState, apply_rows, ban_ngrams, gumbel_scores, mask_padding_rows, row_settings,
)
from todi.generation.sampling import SamplingConfig, logits_processors, gumbel_noise

V = 50  # vocabulary of the random logits; small, so that random sequences repeat n-grams
TOKENIZER_LEN = 43  # ids 43..49 are padding rows


def _repetitive(generator, length: int, symbols: int = 4) -> list[int]:
    """A random sequence over few symbols: it repeats n-grams."""
    return torch.randint(0, symbols, (length,), generator=generator).tolist()


def _hf_banned(tokens: list[int], n: int) -> set[int]:
    scores = torch.zeros(1, V)
    out = NoRepeatNGramLogitsProcessor(n)(torch.tensor([tokens]), scores)
    return set(torch.nonzero(out[0] == -float("inf")).flatten().tolist())


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_ngram_index_bans_what_hf_bans_at_every_step(n):
    """Growing the output token by token (as vLLM appends), each step's ban equals HF's on prompt + output."""
    g = torch.Generator().manual_seed(n)
    prompt, tokens = _repetitive(g, 9, 2), _repetitive(g, 60, 2)
    output: list[int] = []
    bans = NGramBans(n, prompt, output)
    hits = 0
    for t in tokens:
        got = set(bans.banned())
        assert got == _hf_banned(prompt + output, n), (prompt, output)
        hits += bool(got)
        output.append(t)
    assert hits > 5  # the check saw bans, not only empty sets


def test_ngram_ban_includes_the_prompt():
    """An n-gram of the prompt is banned in the answer (HF's semantics; vLLM's own ban looks at the output)."""
    prompt, output = [5, 6, 7, 8], [5, 6]
    assert NGramBans(3, prompt, output).banned() == [7]
    assert NGramBans(0, prompt, output).banned() == []


def _row(seed, example_id, prompt, output, config=SamplingConfig(), vocab_size=TOKENIZER_LEN):
    return RowState(RowSettings(**row_settings(config, seed, example_id, vocab_size)), prompt, output)


def _hf_row(logits_row, row: RowState, config: SamplingConfig, n: int):
    """The HF sampler's processors on one row, as its generate() applies them (n-gram ban first)."""
    tokens = torch.tensor([list(row.prompt) + list(row.output)])
    scores = NoRepeatNGramLogitsProcessor(n)(tokens, logits_row.unsqueeze(0).clone()) if n else logits_row[None].clone()
    procs = logits_processors(config, row.settings.seed, torch.tensor([row.settings.example_id]), len(row.prompt),
                        vocab_size=row.settings.vocab_size)
    return procs(tokens, scores)[0]


CONFIGS = [
    SamplingConfig(),
    SamplingConfig(top_k=5, no_repeat_ngram_size=2),
    SamplingConfig(top_p=0.7, temperature=0.8, no_repeat_ngram_size=3),
    SamplingConfig(do_sample=False, no_repeat_ngram_size=2),
    SamplingConfig(no_repeat_ngram_size=0, temperature=1.3, top_k=7, top_p=0.9),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"k{c.top_k}-p{c.top_p}-t{c.temperature}-n{c.no_repeat_ngram_size}-s{c.do_sample}")
def test_rows_equal_the_hf_processors_bitwise(config):
    """A batch mixing seeds, example ids, prompts and steps (and a row that is not ours) gives, in
    every row of ours, exactly the scores the HF sampler's processors give that row alone."""
    g = torch.Generator().manual_seed(1)
    rows = [_row(seed, ex, _repetitive(g, 7 + ex % 3), _repetitive(g, step), config)
            for seed, ex, step in [(10, 0, 0), (10, 3, 5), (20, 3, 5), (10, 7, 12), (30, 1, 1)]]
    logits = torch.randn(len(rows) + 1, V, generator=g) * 3
    batch = rows[:2] + [None] + rows[2:]
    out = apply_rows(logits.clone(), batch)
    assert torch.equal(out[2], logits[2])  # another request's row: untouched
    mixed = torch.cat([logits[:2], logits[3:]])
    for i, row in enumerate(rows):
        assert torch.equal(out[[0, 1, 3, 4, 5][i]], _hf_row(mixed[i], row, config, config.no_repeat_ngram_size))


def test_padding_rows_are_never_chosen():
    """Logits that favour the padding rows strongly: the argmax is always a tokenizer id."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(64, V, generator=g)
    logits[:, TOKENIZER_LEN:] += 30
    rows = [_row(10, i, [1, 2, 3], []) for i in range(64)]
    assert apply_rows(logits, rows).argmax(-1).max().item() < TOKENIZER_LEN
    masked = mask_padding_rows(torch.zeros(2, V), torch.tensor([V, 10]))
    assert torch.isinf(masked[1, 10:]).all() and torch.isfinite(masked[1, :10]).all() and torch.isfinite(masked[0]).all()


def test_gumbel_noise_per_row_keys_equal_the_scalar_keys():
    seeds, ids, steps = torch.tensor([10, 20, 10]), torch.tensor([0, 5, 9]), torch.tensor([0, 3, 250])
    batched = gumbel_noise(seeds, ids, steps, 1000)
    for i in range(3):
        assert torch.equal(batched[i], gumbel_noise(int(seeds[i]), ids[i:i + 1], int(steps[i]), 1000)[0])
    logits = torch.randn(3, 1000)
    expected = torch.log_softmax(logits, -1) + batched
    assert torch.equal(gumbel_scores(logits, seeds, ids, steps), expected)


def test_ban_ngrams_marks_each_row_in_place():
    bigrams = SamplingConfig(no_repeat_ngram_size=2)
    rows = [_row(1, 0, [4, 5, 4], [5], bigrams), None, _row(1, 1, [1, 2], [], bigrams)]
    logits = torch.zeros(3, V)
    ban_ngrams(logits, rows)
    assert torch.nonzero(torch.isinf(logits)).tolist() == [[0, 4]]  # "5" was followed by "4"


def test_row_settings_are_plain_values():
    settings = row_settings(SamplingConfig(top_k=3), seed=10, example_id=4, vocab_size=100)
    assert all(isinstance(v, (int, float, bool)) for v in settings.values())
    assert RowSettings(**settings).sampling_config().top_k == 3
