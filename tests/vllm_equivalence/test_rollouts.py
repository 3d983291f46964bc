"""On-policy rollouts through vLLM (``--rollout-backend vllm``) are the HF engine's (fp32, CPU):

* the engines' continuations of token-id prompts are equal, token for token, with each request's own
  budget, up to and including the first stop token, for full-vocabulary and warped sampling;
* a GKD run through the recipe script (λ = 1, dev generation on the same colocated engine) logs the HF
  run's per-step losses, rollout lengths and dev scores; on 2 ranks (an engine each) too;
* ``--rollout-sync-interval 2`` pushes weights on even steps only, so step 1 samples from step 0's
  weights (its losses differ from interval 1's), and a run paused mid-interval and rerun reproduces the
  uninterrupted run (the synced weights are part of the resumable state).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _training import NO_DROPOUT, REPO, make_dolly, read_metrics, subprocess_env
from _vllm import REQUIRES_VLLM, boost_padding_rows, running

pytest.importorskip("vllm", reason=REQUIRES_VLLM)

EOS = 50256
EOS_WEIGHT = 1.5  # the EOS output row's length along the final layer norm's bias: some samples stop early
MAX_LENGTH, MAX_PROMPT = 72, 48


def eos_likely(path: Path) -> Path:
    """Make EOS a plausible draw: the final layer norm gets a bias along a direction u and the EOS
    output row points along u (its logit ~ EOS_WEIGHT·(4 + N(0, 1)) against ~N(0, 0.23) for the rest)."""
    from todi.models import load_model

    model = load_model(path)
    u = torch.nn.functional.normalize(torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        model.transformer.ln_f.bias += 4 * u
        model.get_output_embeddings().weight[EOS] = EOS_WEIGHT * u
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def student(shared_dir, tmp_path_factory) -> Path:
    """A vLLM-shaped GPT-2 student (head_dim 64) without dropout, padding rows boosted, EOS likely."""
    from todi.models import load_tokenizer, save_random_model

    out = save_random_model(shared_dir / "model_hub/gpt2/gpt2-base", tmp_path_factory.mktemp("student"), seed=0,
                            n_layer=2, n_embd=128, n_head=2, n_positions=256, vocab_size=50304, **NO_DROPOUT)
    return eos_likely(boost_padding_rows(out, len(load_tokenizer(out))))


@pytest.fixture(scope="module")
def teacher(shared_dir, tmp_path_factory) -> Path:
    from todi.models import save_random_model

    return save_random_model(shared_dir / "model_hub/gpt2/gpt2-base", tmp_path_factory.mktemp("teacher"), seed=1,
                             n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=50304, **NO_DROPOUT)


@pytest.mark.parametrize("warp", [dict(), dict(temperature=1.1, top_k=5000, top_p=0.98)], ids=["full", "warped"])
def test_vllm_continuations_are_the_hf_engines(student, dolly_prompts, warp):
    from todi.generation.engine import HFEngine
    from todi.generation.sampling import SamplingConfig, encode_prompts
    from todi.models import load_model, load_tokenizer

    config = SamplingConfig(do_sample=True, no_repeat_ngram_size=0, max_length=MAX_LENGTH + 32,
                            max_prompt_length=MAX_PROMPT, **warp)
    tokenizer = load_tokenizer(student)
    prompts = encode_prompts(tokenizer, dolly_prompts, MAX_PROMPT)
    budgets = [3, 40, 40, 17, 40, 40, 8, 40]
    example_ids = [100 + 7 * i for i in range(len(prompts))]
    hf = HFEngine(load_model(student), tokenizer, batch_size=3)
    ends = []
    with running(student) as engine:
        for seed in (5, 6, 7):
            expected = hf.continuations(prompts, example_ids, config, seed=seed, budgets=budgets)
            got = engine.continuations(prompts, example_ids, config, seed=seed, budgets=budgets)
            assert got == expected
            ends += [(len(c), c[-1] == EOS, b) for c, b in zip(got, budgets)]
    # both rules were exercised: a stop token ends some samples, the budget others
    assert any(eos and n < b for n, eos, b in ends) and any(n == b and not eos for n, eos, b in ends), ends


def run(student, teacher, data, save: Path, *, nproc: int = 1, code: int = 0, **env) -> Path:
    """The GKD recipe (λ = 1, 4 optimizer steps over 2 epochs) with dev evaluation after each epoch."""
    settings = {**subprocess_env(), "GPUS": "", "NPROC": str(nproc), "GRAD_ACC": str(2 // nproc), "KD_OBJ": "ToDi",
                "CKPT_PATH": str(student), "TEACHER_MODEL_PATH": str(teacher), "DATA_DIR": str(data),
                "SAVE_PATH": str(save), "EPOCH": "2", "BATCH_SIZE": "2", "EVAL_BATCH_SIZE": "4",
                "MAX_LENGTH": str(MAX_LENGTH), "MAX_PROMPT_LENGTH": str(MAX_PROMPT), "EVAL_GEN_REPEAT": "1",
                "LOG_INTERVAL": "1", "DEV_NUM": "3", "STUDENT_GEN_RATIO": "1", "LR": "2e-2",
                "PATH": f"{Path(sys.executable).parent}:{subprocess_env()['PATH']}", **env}
    result = subprocess.run(["bash", str(REPO / "scripts/gpt2/gkd_gpt2_base.sh")], env=settings, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == code, result.stdout[-3000:] + result.stderr[-3000:]
    return save


def steps(save: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["kd"], r["rollout_len"]) for r in read_metrics(save)]


@pytest.fixture(scope="module")
def runs(student, teacher, shared_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    data = make_dolly(shared_dir, root / "dolly", n_train=8, n_dev=3)
    out = {"hf": run(student, teacher, data, root / "hf")}
    vllm = dict(ROLLOUT_BACKEND="vllm", EXTRA_OPTS="--dev-gen-backend vllm")
    out["vllm"] = run(student, teacher, data, root / "vllm", **vllm)
    out["two_ranks"] = run(student, teacher, data, root / "two_ranks", nproc=2, **vllm)
    out["sync2"] = run(student, teacher, data, root / "sync2", ROLLOUT_SYNC_INTERVAL="2", **vllm)
    from todi.training.resume import PAUSED_EXIT_CODE

    paused = dict(ROLLOUT_SYNC_INTERVAL="2", **vllm)
    run(student, teacher, data, root / "paused", code=PAUSED_EXIT_CODE,
        **{**paused, "EXTRA_OPTS": paused["EXTRA_OPTS"] + " --stop-after-iters 3"})
    out["paused"] = run(student, teacher, data, root / "paused", **paused)
    return out


def test_gkd_run_with_vllm_rollouts_is_the_hf_run(runs):
    hf, vllm = read_metrics(runs["hf"]), read_metrics(runs["vllm"])
    assert len(hf) == 4 and all(r["gen_share"] == 1 for r in hf + vllm)
    assert steps(runs["vllm"]) == steps(runs["hf"])
    assert [r["weight_syncs"] for r in vllm] == [1, 1, 1, 1] and "weight_syncs" not in hf[0]
    assert len({r["rollout_len"] for r in hf}) > 1  # the samples changed as the student trained
    assert read_metrics(runs["vllm"], "dev") == read_metrics(runs["hf"], "dev")  # the shared engine's dev answers


def test_two_ranks_with_vllm_rollouts_are_the_one_rank_hf_run(runs):
    """Each rank's engine samples its own micro-batches: the rollouts are the same, the losses equal up
    to the order of the gradient reduction."""
    hf, two = read_metrics(runs["hf"]), read_metrics(runs["two_ranks"])
    assert [r["rollout_len"] for r in two] == [r["rollout_len"] for r in hf]
    for x, y in zip(hf, two):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4) and y["kd"] == pytest.approx(x["kd"], rel=1e-4)


def test_sync_interval_samples_from_the_synced_weights_and_resumes_exactly(runs):
    one, two = steps(runs["vllm"]), steps(runs["sync2"])
    assert [r["weight_syncs"] for r in read_metrics(runs["sync2"])] == [1, 0, 1, 0]
    assert one[0] == two[0] and one[1] != two[1]  # step 1 samples from step 0's weights (then the runs part)
    assert steps(runs["paused"]) == two  # paused at step 3 (mid-interval) and rerun
    assert read_metrics(runs["paused"], "dev") == read_metrics(runs["sync2"], "dev")


def test_the_colocated_engine_pushes_only_weights_it_does_not_hold(student, dolly_prompts):
    """A tag it holds is not pushed again (the weights of the last sync stay); a new tag is."""
    from todi.generation.colocated import ColocatedEngine, training_weights
    from todi.generation.engine import HFEngine
    from todi.generation.sampling import SamplingConfig, encode_prompts
    from todi.models import load_model, load_tokenizer

    model, tokenizer = load_model(student), load_tokenizer(student)
    config = SamplingConfig(do_sample=True, no_repeat_ngram_size=0, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT)
    prompts = encode_prompts(tokenizer, dolly_prompts[:4], MAX_PROMPT)
    sample = dict(example_ids=[0, 1, 2, 3], config=config, seed=3, budgets=[20] * 4)
    before = HFEngine(model, tokenizer).continuations(prompts, **sample)
    colocated, pushes = ColocatedEngine(tokenizer, MAX_LENGTH), []

    def weights():
        pushes.append(1)
        return training_weights(model, zero_stage=0)

    try:
        assert colocated.holding(model.config, weights, tag=("rollouts", 0)).continuations(prompts, **sample) == before
        with torch.no_grad():  # "a training step"
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        after = HFEngine(model, tokenizer).continuations(prompts, **sample)
        assert after != before
        assert colocated.holding(model.config, weights, tag=("rollouts", 0)).continuations(prompts, **sample) == before
        assert len(pushes) == 1  # the start only
        assert colocated.holding(model.config, weights, tag=("rollouts", 1)).continuations(prompts, **sample) == after
        assert len(pushes) == 2
    finally:
        colocated.shutdown()
