"""``BACKEND=vllm bash scripts/eval/run_eval.sh CKPT`` (and run_eval_lora.sh) write the HF backend's
answer files, byte for byte, on one process and on two (torchrun: each rank's engine answers its
share of every (set, seed) in one call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _vllm import REQUIRES_VLLM

pytest.importorskip("vllm", reason=REQUIRES_VLLM)

REPO = Path(__file__).resolve().parents[2]
TIMING = {"generation_seconds", "examples_per_second", "backend", "world_size"}


def run_eval(script: str, target: Path, out: Path, shared_dir: Path, **extra) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update({"GPUS": "", "NPROC": "1", "MAX_LENGTH": "104", "MAX_PROMPT_LENGTH": "64", "EVAL_NUM": "5",
                "SEEDS": "10 20", "EVAL_SETS": "dolly self-inst", "EVAL_DATA_DIR": str(shared_dir / "data"),
                "EVAL_OUT": str(out), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                **extra})
    proc = subprocess.run(["bash", str(REPO / "scripts/eval" / script), str(target), "3"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def results(out: Path) -> dict:
    """answers.jsonl text and metrics.json (less timings and the backend's name) of every set and seed."""
    found = {}
    for answers in sorted(out.rglob("answers.jsonl")):
        metrics = json.loads((answers.parent / "metrics.json").read_text())
        found[str(answers.parent.relative_to(out))] = (
            answers.read_text(), {k: v for k, v in metrics.items() if k not in TIMING})
    return found


@pytest.fixture(scope="module")
def hf_results(gpt2, shared_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("hf")
    run_eval("run_eval.sh", gpt2, out, shared_dir, BACKEND="hf")
    return results(out)


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_vllm_backend_writes_the_hf_backends_answers(gpt2, shared_dir, tmp_path, hf_results, nproc):
    run_eval("run_eval.sh", gpt2, tmp_path, shared_dir, BACKEND="vllm", NPROC=nproc)
    got = results(tmp_path)
    assert sorted(got) == ["dolly/seed10", "dolly/seed20", "self-inst/seed10", "self-inst/seed20"]
    assert got == hf_results
    metrics = json.loads((tmp_path / "dolly/seed10/metrics.json").read_text())
    assert metrics["backend"] == "vllm" and metrics["world_size"] == int(nproc)


def test_lora_script_with_vllm(gpt2, shared_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from todi.models import load_model

    torch.manual_seed(4)
    lora = get_peft_model(load_model(gpt2), LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"],
                                                       init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    for backend in ("hf", "vllm"):
        run_eval("run_eval_lora.sh", tmp_path / "adapter", tmp_path / backend, shared_dir, BACKEND=backend,
                 MODEL_PATH=str(gpt2), EVAL_SETS="dolly", SEEDS="10")
    assert results(tmp_path / "vllm") == results(tmp_path / "hf")
