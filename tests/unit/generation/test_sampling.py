"""Sampling is exact and reproducible per example: independent of batch size and batch composition."""

from __future__ import annotations

import json
import pytest
import torch

from todi.generation.sampling import SamplingConfig, logits_processors, answer_lengths, generate, gumbel_noise, sample_answers
from todi.models import load_model, load_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(shared_dir, n):
    return [json.loads(line)["prompt"] for line in open(shared_dir / "data/dolly/valid.jsonl")][:n]


def test_gumbel_noise_is_a_pure_function_with_gumbel_statistics():
    ids = torch.tensor([3, 7, 3])
    a = gumbel_noise(10, ids, 5, 4000)
    assert torch.equal(a, gumbel_noise(10, ids, 5, 4000))
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert not torch.equal(a, gumbel_noise(11, ids, 5, 4000)) and not torch.equal(a, gumbel_noise(10, ids, 6, 4000))
    # Gumbel(0, 1): mean = Euler–Mascheroni constant, variance = π²/6
    sample = gumbel_noise(1, torch.arange(64), 0, 4000).double()
    assert abs(sample.mean().item() - 0.5772) < 0.01
    assert abs(sample.var().item() - 1.6449) < 0.03


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (2, 1.0), (0, 0.7)])
def test_sampling_follows_the_warped_distribution(top_k, top_p):
    """Empirical token frequencies over many examples match softmax(logits) after top-k / top-p."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 20000
    config = SamplingConfig(top_k=top_k, top_p=top_p, temperature=0.8)
    procs = logits_processors(config, seed=7, example_ids=torch.arange(n), prompt_width=4)
    scores = procs(torch.zeros((n, 4), dtype=torch.long), logits.expand(n, -1).clone())
    freq = torch.bincount(scores.argmax(-1), minlength=6).double() / n

    expected = torch.softmax(logits / 0.8, -1).double()
    if top_k:
        expected[top_k:] = 0
    if top_p < 1:
        keep = torch.cumsum(expected, 0) - expected < top_p  # smallest prefix with mass >= top_p
        expected[~keep] = 0
    expected /= expected.sum()
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)
    assert (freq[expected == 0] == 0).all()


def test_answers_do_not_depend_on_batch_size(tiny_gpt2, shared_dir):
    model, tok = load_model(tiny_gpt2), load_tokenizer(tiny_gpt2)
    prompts = _prompts(shared_dir, 9)
    config = SamplingConfig(max_length=80, max_prompt_length=64)
    one = generate(model, tok, prompts, config, seed=10, batch_size=1)
    many = generate(model, tok, prompts, config, seed=10, batch_size=4)
    other_seed = generate(model, tok, prompts, config, seed=20, batch_size=4)
    assert one == many
    assert one != other_seed
    assert all(isinstance(a, str) and a == a.strip() for a in one)
    # a subset (other batch neighbours, other padding) gives the same answers for the same indices
    assert generate(model, tok, prompts[:5], config, seed=10, batch_size=8) == one[:5]


def test_greedy_batched_equals_unpadded_hf_generate(tiny_gpt2, shared_dir):
    """Left padding, positions, the n-gram ban and EOS handling match HF on each prompt alone."""
    from transformers import GenerationConfig

    model, tok = load_model(tiny_gpt2), load_tokenizer(tiny_gpt2)
    prompts = _prompts(shared_dir, 5)
    config = SamplingConfig(do_sample=False, max_length=90, max_prompt_length=60, no_repeat_ngram_size=2)
    ours = generate(model, tok, prompts, config, seed=0, batch_size=5)
    for prompt, answer in zip(prompts, ours):
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)[-60:]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=30, no_repeat_ngram_size=2,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == answer


def test_checkpoint_generation_defaults_do_not_change_the_protocol(tiny_gpt2, shared_dir, tmp_path):
    """A generation_config.json with its own sampling settings is ignored."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    # sharpen the random model's (nearly uniform) next-token distributions so a penalty would show
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(40)
    model.save_pretrained(tmp_path / "plain")
    model.generation_config = GenerationConfig(repetition_penalty=50.0, no_repeat_ngram_size=1, do_sample=True,
                                               top_k=1, min_new_tokens=5)
    model.save_pretrained(tmp_path / "opinionated")
    prompts = _prompts(shared_dir, 3)
    config = SamplingConfig(max_length=80, max_prompt_length=64)
    tok = load_tokenizer(tiny_gpt2)
    plain = generate(load_model(tmp_path / "plain"), tok, prompts, config, seed=3, batch_size=3)
    assert generate(load_model(tmp_path / "opinionated"), tok, prompts, config, seed=3, batch_size=3) == plain


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_prompt_length"):
        SamplingConfig(max_length=100, max_prompt_length=100)
    with pytest.raises(ValueError, match="invalid sampling"):
        SamplingConfig(top_p=0.0)
    assert generate(None, None, [], seed=1) == []


def test_answer_lengths_count_the_tokens_before_the_stop_token():
    generated = torch.tensor([[5, 6, 7, 9, 9], [5, 0, 7, 8, 4], [1, 2, 3, 4, 5]])
    assert answer_lengths(generated, [9]) == [3, 5, 5]
    assert answer_lengths(generated, [9, 0]) == [3, 1, 5]


def test_answer_token_counts_stay_within_the_budget(tiny_gpt2, shared_dir):
    """An answer's token count is what it generated (≤ max_length − max_prompt_length), the answer text
    the same as generate()'s; a row that stopped early ended on a stop token."""
    model, tok = load_model(tiny_gpt2), load_tokenizer(tiny_gpt2)
    prompts = _prompts(shared_dir, 6)
    config = SamplingConfig(max_length=80, max_prompt_length=64)
    answers = sample_answers(model, tok, prompts, config, seed=10, batch_size=4)
    assert answers.texts == generate(model, tok, prompts, config, seed=10, batch_size=3)
    budget = config.max_length - config.max_prompt_length
    assert all(0 <= n <= budget for n in answers.new_tokens)
    assert sample_answers(model, tok, prompts[:2], config, seed=10, batch_size=1).new_tokens == answers.new_tokens[:2]
