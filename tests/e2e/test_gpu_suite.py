"""scripts/bench/gpu_suite.sh without a GPU: its dry run lists every step and writes the report; the
report renders each step's results (here synthetic) as one JSON and one Markdown table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = ["triton", "loss", "step", "epoch", "generation", "onpolicy"]


def test_dry_run_lists_every_step(shared_dir, tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT_DIR": str(tmp_path), "PYTHON": sys.executable,
           "MODEL_DIR": str(shared_dir / "model_hub/gpt2/gpt2-base"), "DOLLY": str(shared_dir / "data/dolly")}
    proc = subprocess.run(["bash", str(REPO / "scripts/bench/gpu_suite.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("== ")] == \
        [f"== {s}" for s in STEPS]
    assert "bench_engines.py" in proc.stdout and "--num-prompts 500" in proc.stdout
    assert "bench_onpolicy.py" in proc.stdout and "--steps 16" in proc.stdout
    suite = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert list(suite) == STEPS and {s["status"] for s in suite.values()} == {"dry-run"}


def test_missing_inputs_are_one_error_line(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT_DIR": str(tmp_path), "MODEL_DIR": str(tmp_path / "none")}
    proc = subprocess.run(["bash", str(REPO / "scripts/bench/gpu_suite.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: not found: {tmp_path / 'none'}/config.json")


def test_report_renders_the_results(tmp_path):
    (tmp_path / "status.tsv").write_text("triton\tok\t40\nloss\tfailed\t3\ngeneration\tok\t200\nonpolicy\tok\t90\n")
    (tmp_path / "onpolicy.json").write_text(json.dumps({"settings": {}, "rows": [
        {"backend": "hf", "gen_pct_of_onpolicy_step": 61.0}, {"backend": "vllm", "gen_pct_of_onpolicy_step": 22.5}]}))
    (tmp_path / "triton.xml").write_text('<testsuites><testsuite tests="12" failures="0" errors="0" '
                                         'skipped="1"/></testsuites>')
    (tmp_path / "generation.json").write_text(json.dumps({
        "exactness": {"fp32": {"prompts": 20, "identical_answers": 20}, "bf16": {"prompts": 20, "identical_answers": 17}},
        "speed": {"dtype": "bf16", "prompts": 500, "vllm_start_seconds": 30.0, "speedup": 9.5,
                  "hf": {"prompts_per_second": 8.5}, "vllm": {"prompts_per_second": 80.8}}}))
    subprocess.run([sys.executable, str(REPO / "scripts/bench/gpu_suite_report.py"), str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| loss | failed | 3 |" in md and "tests: 12, failures: 0, errors: 0, skipped: 1" in md
    assert "| fp32 identical answers, HF vs vLLM | 20/20 |" in md and "| vLLM / HF | 9.5x" in md
    assert "| backend | gen_pct_of_onpolicy_step |" in md and "| vllm | 22.5 |" in md
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["triton"]["results"]["tests"] == 12
