"""vLLM's answers are the seeded HF sampler's, token for token (fp32): on two tokenizer families, for
any batch size, with the n-gram ban over prompt + answer, never on a padding row, with a LoRA adapter."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from todi.generation.engine import HFEngine
from todi.generation.sampling import SamplingJob, encode_prompts, sample_answers
from todi.generation.vllm_engine import VLLMEngine
from todi.models import load_model, load_tokenizer, stop_token_ids

from _vllm import CONFIG, REQUIRES_VLLM, running

pytest.importorskip("vllm", reason=REQUIRES_VLLM)

SEEDS = (10, 20)


class RecordingTokenizer:
    """The tokenizer, recording every row the HF sampler decodes (its generated tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.rows = tokenizer, []

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __len__(self):
        return len(self.tokenizer)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def batch_decode(self, rows, **kwargs):
        texts = self.tokenizer.batch_decode(rows, **kwargs)
        self.rows += [(t.strip(), row.tolist()) for t, row in zip(texts, rows)]
        return texts


def hf_tokens(model, tokenizer, prompts, config, seed) -> list[list[int]]:
    """The HF sampler's answer tokens per prompt, up to and including the stop token."""
    recorder = RecordingTokenizer(tokenizer)
    texts = sample_answers(model, recorder, prompts, config, seed=seed, batch_size=1).texts
    by_text = dict(recorder.rows)
    stops = set(stop_token_ids(tokenizer))
    answers = []
    for text in texts:
        row = by_text[text]
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        answers.append(row[:end])
    return answers


def vllm_tokens(engine: VLLMEngine, prompts, config, seed) -> list[list[int]]:
    """vLLM's answer tokens per prompt (the engine's own requests, one generate call)."""
    requests = list(engine._requests([SamplingJob(prompts, seed)], config, 0, 1))
    outputs = engine.llm.generate([r[2] for r in requests], [r[3] for r in requests], use_tqdm=False)
    answers = [None] * len(prompts)
    for (_, i, _, _), out in zip(requests, outputs):
        answers[i] = list(out.outputs[0].token_ids)
    return answers


def assert_same_tokens(model_dir, engine, prompts, config=CONFIG, seeds=SEEDS):
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    for seed in seeds:
        expected = hf_tokens(model, tokenizer, prompts, config, seed)
        got = vllm_tokens(engine, prompts, config, seed)
        same = sum(a == b for a, b in zip(expected, got))
        assert same == len(prompts), f"seed {seed}: {same}/{len(prompts)} answers identical"
        assert max(max(a, default=0) for a in got) < len(tokenizer)  # never a padding row
    return got


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
def test_gpt2_answers_are_the_hf_samplers_tokens(gpt2, dolly_prompts, eager):
    """vLLM's default (torch.compile'd model, the GPU path) and eager execution alike."""
    with running(gpt2, eager=eager) as engine:
        tokens = assert_same_tokens(gpt2, engine, dolly_prompts)
    assert len({len(t) for t in tokens}) > 1 or len(tokens[0]) == CONFIG.max_new_tokens


def test_engine_answers_equal_the_hf_engines(gpt2, dolly_prompts):
    """The engine interface: texts and answer lengths, every job of one call, in job order."""
    tokenizer = load_tokenizer(gpt2)
    jobs = [SamplingJob(dolly_prompts, seed) for seed in SEEDS] + [SamplingJob(dolly_prompts[:3], 30)]
    hf = list(HFEngine(load_model(gpt2), tokenizer, batch_size=3).answer(jobs, CONFIG))
    with running(gpt2) as engine:
        got = list(engine.answer(jobs, CONFIG))
    assert [(a.texts, a.new_tokens) for a in got] == [(a.texts, a.new_tokens) for a in hf]
    assert hf[0].texts != hf[1].texts  # seeds differ
    assert all(a.seconds >= 0 for a in got)


def test_qwen_answers_are_the_hf_samplers_tokens(qwen, dolly_prompts):
    """A second family: Qwen2.5's tokenizer (other stop tokens) and its 271 padding rows."""
    with running(qwen) as engine:
        assert_same_tokens(qwen, engine, dolly_prompts[:6], seeds=(10,))


@pytest.mark.parametrize("config", [
    replace(CONFIG, no_repeat_ngram_size=2, do_sample=False),
    replace(CONFIG, no_repeat_ngram_size=3, top_k=20, temperature=0.7),
    replace(CONFIG, no_repeat_ngram_size=0, top_p=0.8),
], ids=["greedy-2gram", "topk-3gram", "topp-no-ban"])
def test_settings_and_ngram_ban_including_the_prompt(gpt2, dolly_prompts, config):
    """Other sampling settings stay identical; with a ban, no n-gram of prompt + answer repeats
    in the answer (Hugging Face's semantics: the prompt's n-grams are banned too)."""
    with running(gpt2) as engine:
        tokens = assert_same_tokens(gpt2, engine, dolly_prompts[:4], config, seeds=(10,))
    n = config.no_repeat_ngram_size
    if not n:
        return
    prompts = encode_prompts(load_tokenizer(gpt2), dolly_prompts[:4], config.max_prompt_length)
    for prompt, answer in zip(prompts, tokens):
        assert_no_repeat(prompt, answer, n)


def assert_no_repeat(prompt: list[int], answer: list[int], n: int) -> None:
    """No n-gram ending in the answer occurred before (in the prompt or the answer)."""
    seq = prompt + answer
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    for start in range(max(len(prompt) - n + 1, 0), len(grams)):
        assert grams[start] not in grams[:start], (start, grams[start])


def test_the_ban_covers_the_prompts_ngrams(gpt2, dolly_prompts):
    """Prompts that end in the loop a random model's greedy answer falls into: without the ban the
    answer goes on repeating the prompt's bigrams from its first token; with it (HF's semantics, the
    prompt included), the first token already differs, on both engines alike."""
    tokenizer = load_tokenizer(gpt2)
    free, banned = replace(CONFIG, do_sample=False, no_repeat_ngram_size=0), replace(CONFIG, do_sample=False,
                                                                                     no_repeat_ngram_size=2)
    with running(gpt2) as engine:
        loops = vllm_tokens(engine, dolly_prompts[:4], free, 10)
        looping = [p + tokenizer.decode(a[:16]) for p, a in zip(dolly_prompts[:4], loops)]
        unbanned = vllm_tokens(engine, looping, free, 10)
        answers = assert_same_tokens(gpt2, engine, looping, banned, seeds=(10,))
    prompts = encode_prompts(tokenizer, looping, CONFIG.max_prompt_length)
    assert any(a[0] != u[0] and (p[-1], u[0]) in set(zip(p, p[1:]))
               for p, a, u in zip(prompts, answers, unbanned))
    for prompt, answer in zip(prompts, answers):
        assert_no_repeat(prompt, answer, 2)


def test_answers_do_not_depend_on_the_batch_size(gpt2, dolly_prompts):
    """8 (one batch), 3 and 1 sequences at a time give the same answers."""
    answers = []
    for max_num_seqs in (8, 3, 1):
        with running(gpt2, max_num_seqs=max_num_seqs) as engine:
            answers.append(vllm_tokens(engine, dolly_prompts, CONFIG, 10))
    assert answers[1] == answers[0] and answers[2] == answers[0]


def test_sharded_requests_cover_every_prompt_once(gpt2, dolly_prompts):
    """rank::world shares of each job partition it (the same rule as the HF sampler; the 2-rank run
    itself: test_run_eval.py)."""
    jobs = [SamplingJob(dolly_prompts, 10), SamplingJob(dolly_prompts[:5], 20)]
    engine = VLLMEngine(None, load_tokenizer(gpt2))  # requests only: no engine needed
    shares = [list(engine._requests(jobs, CONFIG, rank, 3)) for rank in range(3)]
    keys = sorted((j, i) for share in shares for j, i, _, _ in share)
    assert keys == sorted([(0, i) for i in range(8)] + [(1, i) for i in range(5)])


def test_a_merged_lora_adapter_gives_the_hf_engines_answers(gpt2, dolly_prompts, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    lora = get_peft_model(load_model(gpt2), LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"],
                                                       init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    tokenizer = load_tokenizer(gpt2)
    jobs = [SamplingJob(dolly_prompts[:4], 10)]
    common = dict(dtype=torch.float32, device=torch.device("cpu"), adapter_path=tmp_path / "adapter")
    hf = list(HFEngine.from_checkpoint(gpt2, tokenizer, CONFIG, **common).answer(jobs, CONFIG))
    engine = VLLMEngine.from_checkpoint(gpt2, tokenizer, CONFIG, memory_share=0.9, **common)
    got = list(engine.answer(jobs, CONFIG))
    engine.shutdown()
    base = list(HFEngine(load_model(gpt2), tokenizer).answer(jobs, CONFIG))
    assert got[0].texts == hf[0].texts and got[0].new_tokens == hf[0].new_tokens
    assert hf[0].texts != base[0].texts  # the adapter changed the answers
