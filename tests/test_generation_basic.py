"""Sampling is reproducible per example: independent of batch size and batch composition."""

from __future__ import annotations

import json

import torch

from todi.generation import SamplingConfig, generate, gumbel_noise
from todi.models import load_model, load_tokenizer


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


def test_answers_do_not_depend_on_batch_size(tiny_gpt2, shared_dir):
    model, tok = load_model(tiny_gpt2), load_tokenizer(tiny_gpt2)
    prompts = [json.loads(line)["prompt"] for line in open(shared_dir / "data/dolly/valid.jsonl")][:9]
    config = SamplingConfig(max_length=80, max_prompt_length=64)
    one = generate(model, tok, prompts, config, seed=10, batch_size=1)
    many = generate(model, tok, prompts, config, seed=10, batch_size=4)
    other_seed = generate(model, tok, prompts, config, seed=20, batch_size=4)
    assert one == many
    assert one != other_seed
    assert all(isinstance(a, str) for a in one)
