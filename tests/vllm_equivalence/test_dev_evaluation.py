"""``--dev-gen-backend vllm``: a training run whose dev evaluations sample through a colocated vLLM
engine (weights pushed before each) logs the same dev ROUGE-L and keeps the same checkpoints as the
HF sampler's run (fp32, CPU); the engine's start leaves training's random streams untouched."""

from __future__ import annotations

import pytest

from _training import cli, make_dolly, read_metrics
from _vllm import REQUIRES_VLLM

pytest.importorskip("vllm", reason=REQUIRES_VLLM)


@pytest.fixture(scope="module")
def process_group():
    from todi.util.distributed import init_distributed

    return init_distributed()


def train(argv):
    from todi.training.cli import main

    main([str(a) for a in argv])


def test_keep_best_decisions_equal_the_hf_runs(process_group, gpt2, shared_dir, tmp_path):
    dolly = make_dolly(shared_dir, tmp_path / "dolly", n_train=16, n_dev=3)
    flags = dict(num_epochs=3, do_valid=True, eval_gen=True, do_sample=True, eval_gen_repeat_times=2,
                 keep_best_n_checkpoints=2, eval_batch_size=2, max_length=72, max_prompt_length=64,
                 gradient_accumulation_steps=1, batch_size=4, lr=2e-2)
    runs = {}
    for backend in ("hf", "vllm"):
        train(cli(gpt2, dolly, tmp_path / backend, dev_gen_backend=backend, **flags))
        runs[backend] = tmp_path / backend
    dev = {b: read_metrics(run, "dev") for b, run in runs.items()}
    assert [r["epoch"] for r in dev["vllm"]] == [1, 2, 3]
    assert dev["vllm"] == dev["hf"]  # loss, accuracy and ROUGE-L of every dev evaluation
    assert len({r["loss"] for r in dev["hf"]}) == 3  # the weights changed between evaluations
    losses = {b: [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run)] for b, run in runs.items()}
    assert losses["vllm"] == losses["hf"]  # training drew the same numbers (dropout) after each evaluation
    kept = {b: sorted(p.name for p in run.iterdir() if p.name.startswith("epoch")) for b, run in runs.items()}
    assert kept["vllm"] == kept["hf"] and len(kept["hf"]) == 2


def test_each_sync_pushes_the_current_weights(gpt2, dolly_prompts):
    """The colocated engine answers as the HF sampler on the model as it is now, after every change."""
    import torch

    from todi.generation.colocated import ColocatedEngine
    from todi.generation.engine import HFEngine
    from todi.generation.sampling import SamplingJob
    from todi.models import load_model, load_tokenizer

    from _vllm import CONFIG

    model, tokenizer = load_model(gpt2), load_tokenizer(gpt2)
    colocated, jobs = ColocatedEngine(tokenizer, CONFIG.max_length), [SamplingJob(dolly_prompts[:4], 10)]
    before = None
    for change in range(2):
        got = list(colocated.synced(model, zero_stage=0).answer(jobs, CONFIG))[0]
        expected = list(HFEngine(model, tokenizer).answer(jobs, CONFIG))[0]
        assert (got.texts, got.new_tokens) == (expected.texts, expected.new_tokens)
        assert got.texts != before
        before = got.texts
        colocated.release()
        with torch.no_grad():  # "a training step"
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    colocated.shutdown()
