"""The engine interface without vLLM: the HF engine is today's sampler, job by job; asking for an
unknown or missing backend is one clear error line naming the flag (evaluate.py, the eval scripts)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from todi.generation.backends import VLLM_INSTALL, EngineUnavailable, check_backend
from todi.generation.engine import HFEngine, engine_class
from todi.generation.sampling import SamplingConfig, SamplingJob, sample_answers
from todi.models import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[3]
VLLM_MISSING = importlib.util.find_spec("vllm") is None
CONFIG = SamplingConfig(max_length=80, max_prompt_length=64)

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(shared_dir, n):
    with open(shared_dir / "data/dolly/valid.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line, _ in zip(f, range(n))]


def test_hf_engine_answers_every_job_as_the_sampler(tiny_gpt2, shared_dir):
    model, tokenizer = load_model(tiny_gpt2), load_tokenizer(tiny_gpt2)
    prompts = _prompts(shared_dir, 5)
    jobs = [SamplingJob(prompts, 10), SamplingJob(prompts[:2], 20)]
    answered = list(engine_class("hf")(model, tokenizer, batch_size=2).answer(jobs, CONFIG))
    for job, answers in zip(jobs, answered):
        expected = sample_answers(model, tokenizer, job.prompts, CONFIG, seed=job.seed, batch_size=4)
        assert (answers.texts, answers.new_tokens) == (expected.texts, expected.new_tokens)
        assert answers.seconds > 0
    engine = HFEngine.from_checkpoint(tiny_gpt2, tokenizer, CONFIG, dtype=model.dtype, device=model.device)
    assert list(engine.answer(jobs[:1], CONFIG))[0].texts == answered[0].texts


def test_unknown_and_missing_backends_are_one_message(monkeypatch):
    with pytest.raises(EngineUnavailable, match=r"^--dev-gen-backend sglang: unknown generation backend \(choose"):
        check_backend("sglang", "--dev-gen-backend")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(EngineUnavailable) as e:
        engine_class("vllm")
    message = str(e.value)
    assert message.startswith("--backend vllm: vLLM is not installed") and VLLM_INSTALL in message
    assert "docs/evaluation.md" in message and "\n" not in message
    check_backend("hf")


@pytest.mark.skipif(not VLLM_MISSING, reason="vLLM is installed here")
def test_evaluate_with_vllm_missing_is_one_error_line(tiny_gpt2, shared_dir, tmp_path, capsys):
    from todi.evaluation import cli

    code = cli.main(["--model-path", str(tiny_gpt2), "--data-dir", str(shared_dir / "data/dolly"),
                     "--save-dir", str(tmp_path / "out"), "--backend", "vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].endswith(f"error: --backend vllm: vLLM is not installed in this Python; install it with "
                           f"{VLLM_INSTALL} (GPU) or see docs/evaluation.md, 'Generation backends', for the CPU build")
    assert not (tmp_path / "out").exists()


def _script(tmp_path, **extra) -> subprocess.CompletedProcess:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text("{}")  # never loaded: the settings are checked first
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(GPUS="", NPROC="1", **extra)
    return subprocess.run(["bash", str(REPO / "scripts/eval/run_eval.sh"), str(ckpt)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_eval_script_backend_errors(tmp_path):
    proc = _script(tmp_path, BACKEND="vlm")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: BACKEND=vlm: expected hf (the seeded HF sampler) or vllm"]
    if VLLM_MISSING:
        proc = _script(tmp_path, BACKEND="vllm")
        [line] = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and line.startswith("error: BACKEND=vllm: vLLM is not installed for ")
        assert VLLM_INSTALL in line and not (tmp_path / "ckpt/eval").exists()


def test_per_set_example_caps(tiny_gpt2, shared_dir, tmp_path):
    """--data-num takes one cap for all sets or one per set (the vLLM run of the scripts passes
    UnNI's 10,000 next to the others' -1); a count that fits neither is an argparse error."""
    from todi.evaluation import cli

    out = tmp_path / "out"
    argv = ["--model-path", str(tiny_gpt2), "--data-dir", str(shared_dir / "data/dolly"),
            str(shared_dir / "data/vicuna"), "--save-dir", str(out), "--seed", "10", "--max-length", "72",
            "--max-prompt-length", "64"]
    assert cli.main([*argv, "--data-num", "2", "1"]) == 0
    counts = {s: len((out / s / "seed10/answers.jsonl").read_text().splitlines()) for s in ("dolly", "vicuna")}
    assert counts == {"dolly": 2, "vicuna": 1}
    with pytest.raises(SystemExit):
        cli.parse_args([*argv, "--data-num", "2", "1", "3"])
