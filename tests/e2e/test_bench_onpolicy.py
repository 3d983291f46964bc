"""scripts/bench/bench_onpolicy.py on a CPU with tiny shapes and the HF engine: a GKD run through the
entry point whose per-step time split adds up (the vLLM row: tests/vllm_equivalence and the GPU suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_time_split_of_a_gkd_run(shared_dir, tmp_path):
    from _training import subprocess_env

    out = tmp_path / "onpolicy.json"
    cmd = [sys.executable, str(REPO / "scripts/bench/bench_onpolicy.py"), "--backends", "hf",
           "--student-config", str(shared_dir / "model_hub/gpt2/gpt2-base"),
           "--data", str(shared_dir / "data/dolly/train.jsonl"), "--student-overrides", "n_layer=1,n_embd=32,n_head=2",
           "--teacher-overrides", "n_layer=1,n_embd=48,n_head=2", "--max-length", "80", "--max-prompt-length", "64",
           "--batch-size", "2", "--steps", "6", "--warmup", "1", "--ratio", "0.5", "--out", str(out),
           "--ds-config", str(REPO / "configs/deepspeed/ds_config_zero1_fp32.json")]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["backend"] == "hf" and 0 < row["generated_steps"] < row["timed_steps"]
    assert 0 < row["gen_pct_of_all_steps"] < row["gen_pct_of_onpolicy_step"] < 100  # dataset steps generate nothing
    assert row["onpolicy_step_ms"] > row["gen_ms_per_onpolicy_step"] > 0 and 0 < row["rollout_len"] <= 16
    assert "| hf |" in proc.stdout
