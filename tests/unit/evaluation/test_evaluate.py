"""code/evaluate.py and scripts/eval/run_eval*.sh on tiny checkpoints: files, LoRA, ranks, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from todi.evaluation import cli as evaluate_cli  # code/evaluate.py

REPO = Path(__file__).resolve().parents[3]

# small generation budgets keep these runs to seconds on a CPU
LENGTHS = ["--max-length", "72", "--max-prompt-length", "64"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(shared_dir, tmp_path_factory):
    """Two small sets in the official layout: dolly (string outputs) and sinst/11_ (lists)."""
    root = tmp_path_factory.mktemp("data")
    for name, n in (("dolly", 6), ("sinst/11_", 4)):
        (root / name).mkdir(parents=True)
        lines = open(shared_dir / "data" / name / "valid.jsonl").readlines()[:n]
        (root / name / "valid.jsonl").write_text("".join(lines))
    return root


def _answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(args) -> int:
    return evaluate_cli.main([str(a) for a in args])


def test_writes_every_set_and_seed_and_never_clobbers_others(tiny_gpt2, data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = _run(["--model-path", tiny_gpt2, "--data-dir", data_dir / "dolly", data_dir / "sinst/11_",
               "--data-names", "dolly", "sinst/11_", "--seed", 10, 20, "--save-dir", out,
               "--eval-batch-size", 4, *LENGTHS])
    assert rc == 0
    printed = capsys.readouterr().out
    for name, n, refs_are_lists in (("dolly", 6, False), ("sinst/11_", 4, True)):
        data = [json.loads(line) for line in (data_dir / name / "valid.jsonl").read_text().splitlines()]
        for seed in (10, 20):
            folder = out / name / f"seed{seed}"
            answers = _answers(folder / "answers.jsonl")
            metrics = json.loads((folder / "metrics.json").read_text())
            assert [a["prompt"] for a in answers] == [d["prompt"] for d in data]
            assert [a["references"] for a in answers] == [d["output"] if refs_are_lists else [d["output"]] for d in data]
            assert all(isinstance(a["prediction"], str) for a in answers)
            assert metrics["set"] == name and metrics["seed"] == seed and metrics["num_examples"] == n
            assert 0 <= metrics["rougeL"] <= 100 and metrics["sampling"]["no_repeat_ngram_size"] == 6
            assert f"{name} seed {seed}: rougeL" in printed
        assert not list((out / name).rglob("*.tmp"))  # atomic writes leave no temporary files
    seed10 = _answers(out / "dolly/seed10/answers.jsonl")
    assert seed10 != _answers(out / "dolly/seed20/answers.jsonl")

    # re-evaluating one (set, seed) with a capped set touches nothing else
    before = {p: p.read_bytes() for p in out.rglob("*.json*")}
    assert _run(["--model-path", tiny_gpt2, "--data-dir", data_dir / "dolly", "--seed", 20,
                 "--data-num", 2, "--save-dir", out, *LENGTHS]) == 0
    after = {p: p.read_bytes() for p in out.rglob("*.json*")}
    changed = {p.relative_to(out).as_posix() for p in before if before[p] != after[p]}
    assert changed == {"dolly/seed20/answers.jsonl", "dolly/seed20/metrics.json"}
    assert len(_answers(out / "dolly/seed20/answers.jsonl")) == 2


def test_empty_reference_and_missing_or_bad_data(tiny_gpt2, shared_dir, tmp_path, capsys):
    first = json.loads(open(shared_dir / "data/dolly/valid.jsonl").readline())
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd/valid.jsonl").write_text(json.dumps({"prompt": first["prompt"], "output": ""}) + "\n")
    assert _run(["--model-path", tiny_gpt2, "--data-dir", tmp_path / "odd", "--seed", 1,
                 "--save-dir", tmp_path / "eval", *LENGTHS]) == 0
    assert json.loads((tmp_path / "eval/odd/seed1/metrics.json").read_text())["rougeL"] == 0.0

    assert _run(["--model-path", tiny_gpt2, "--data-dir", tmp_path / "nothing", "--save-dir", tmp_path / "e"]) == 2
    assert f"{tmp_path / 'nothing' / 'valid.jsonl'}: no such file" in capsys.readouterr().err

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/valid.jsonl").write_text(json.dumps({"prompt": "p", "output": "o"}) + "\n{oops\n")
    assert _run(["--model-path", tiny_gpt2, "--data-dir", tmp_path / "bad", "--save-dir", tmp_path / "e"]) == 2
    assert f"{tmp_path / 'bad' / 'valid.jsonl'}:2: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.fixture(scope="module")
def lora_adapter(tiny_gpt2, tmp_path_factory):
    """A LoRA adapter on the tiny GPT-2 with non-zero weights (a fresh one would be a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_gpt2)
    return out


def test_lora_adapter_checkpoint_evaluates(tiny_gpt2, lora_adapter, data_dir, tmp_path):
    from todi.generation.sampling import SamplingConfig, generate
    from todi.models import load_model, load_tokenizer

    # no --model-path: the base model comes from adapter_config.json
    assert _run(["--peft", "lora", "--peft-path", lora_adapter, "--data-dir", data_dir / "dolly", "--seed", 10,
                 "--save-dir", tmp_path / "lora", *LENGTHS]) == 0
    assert _run(["--model-path", tiny_gpt2, "--data-dir", data_dir / "dolly", "--seed", 10,
                 "--save-dir", tmp_path / "base", *LENGTHS]) == 0
    lora = [a["prediction"] for a in _answers(tmp_path / "lora/dolly/seed10/answers.jsonl")]
    base = [a["prediction"] for a in _answers(tmp_path / "base/dolly/seed10/answers.jsonl")]
    assert lora != base  # the adapter is applied
    merged = load_model(tiny_gpt2, adapter_path=lora_adapter, merge_adapter=True)
    prompts = [a["prompt"] for a in _answers(tmp_path / "lora/dolly/seed10/answers.jsonl")]
    assert generate(merged, load_tokenizer(tiny_gpt2), prompts, SamplingConfig(max_length=72, max_prompt_length=64),
                    seed=10, batch_size=2) == lora
    metrics = json.loads((tmp_path / "lora/dolly/seed10/metrics.json").read_text())
    assert metrics["adapter_path"] == str(lora_adapter) and metrics["model_path"] == str(tiny_gpt2)


def _script_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT")}
    env.update(GPUS="", MAX_LENGTH="72", MAX_PROMPT_LENGTH="64", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow
def test_run_eval_two_ranks_match_one_rank_and_skip_missing_sets(tiny_gpt2, data_dir, tmp_path):
    """run_eval.sh with 2 CPU ranks (gloo): every result for the sets that exist, a clear skip for
    the one that does not, the same answers as one in-process rank with another batch size; then
    report.py prints the table and writes the PNG."""
    out = tmp_path / "ckpt_eval"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/eval/run_eval.sh"), str(tiny_gpt2), "3"],
        env=_script_env(NPROC="2", EVAL_DATA_DIR=str(data_dir), EVAL_SETS="vicuna dolly",
                        SEEDS="10 20", EVAL_OUT=str(out)),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"skipping vicuna: {data_dir}/vicuna/valid.jsonl not found" in proc.stdout
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert found == [f"dolly/seed{n}/{f}" for n in (10, 20) for f in ("answers.jsonl", "metrics.json")]
    assert json.loads((out / "dolly/seed10/metrics.json").read_text())["world_size"] == 2

    assert _run(["--model-path", tiny_gpt2, "--data-dir", data_dir / "dolly", "--seed", 10,
                 "--eval-batch-size", 8, "--save-dir", tmp_path / "one", *LENGTHS]) == 0
    assert _answers(tmp_path / "one/dolly/seed10/answers.jsonl") == _answers(out / "dolly/seed10/answers.jsonl")

    report = subprocess.run([sys.executable, str(REPO / "code/report.py"), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "| Method | Dolly | Avg. |" in report.stdout
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_run_eval_lora_script_finds_the_base_model(lora_adapter, data_dir, tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/eval/run_eval_lora.sh"), str(lora_adapter)],
        env=_script_env(EVAL_DATA_DIR=str(data_dir), EVAL_SETS="sinst/11_", SEEDS="30", EVAL_OUT=str(tmp_path / "e")),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "e/sinst/11_/seed30/metrics.json").read_text())
    assert metrics["adapter_path"] == str(lora_adapter) and metrics["num_examples"] == 4

    proc = subprocess.run(["bash", str(REPO / "scripts/eval/run_eval.sh"), str(tmp_path / "no-such-ckpt")],
                          env=_script_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_an_adapters_relative_base_model_is_found_from_the_repository_root(tmp_path, monkeypatch):
    """The training scripts record the base model relative to the checkout (e.g. model_hub/...): found
    from any working directory."""
    from todi.evaluation.sets import base_model_of_adapter

    repo = Path(__file__).resolve().parents[3]
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "configs/deepspeed"}))
    monkeypatch.chdir(tmp_path)
    assert base_model_of_adapter(tmp_path / "adapter") == repo / "configs/deepspeed"
