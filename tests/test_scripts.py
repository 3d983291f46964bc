"""The shell scripts: overridable settings, official names, failures that explain themselves, the benchmark."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from _training import subprocess_env

REPO = Path(__file__).resolve().parents[1]
TRAINING = sorted((REPO / "scripts").glob("gpt2/*.sh")) + sorted((REPO / "scripts").glob("tinyllama/*.sh"))
ALL = TRAINING + [REPO / "scripts/demo/run_demo.sh", REPO / "scripts/bench/bench_epoch.sh",
                  REPO / "scripts/download_models.sh"]


def test_official_script_names_exist():
    names = {f"{p.parent.name}/{p.name}" for p in TRAINING}
    assert {"gpt2/sft_gpt2_base.sh", "gpt2/vanilla_kd_gpt2_base.sh", "gpt2/sft_teacher_gpt2_xlarge.sh",
            "tinyllama/sft_teacher_llama2.sh", "tinyllama/sft_tinyllama.sh",
            "tinyllama/vanilla_kd_tinyllama.sh"} <= names


def settings(script: Path) -> list[str]:
    """The assignment lines of the settings block: from the first assignment to the first blank line."""
    lines = []
    for line in script.read_text().splitlines():
        if re.match(r"^[A-Z_]+=", line):
            lines.append(line)
        elif lines and not line.strip():
            break
    return lines


@pytest.mark.parametrize("script", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_setting_is_overridable(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)
    lines = settings(script)
    assert lines, script
    for line in lines:
        name = line.split("=", 1)[0]
        if name == "GPUS":  # an explicitly empty GPUS means "CPU"
            assert re.match(r"^GPUS=\$\{GPUS-[^}]*\}", line), line
        else:
            assert line.startswith(f"{name}=${{{name}:-"), line


def test_training_scripts_take_the_issue_variables():
    wanted = ["BASE_PATH", "CKPT_PATH", "DATA_DIR", "SAVE_PATH", "GPUS", "NPROC", "EPOCH", "BATCH_SIZE", "GRAD_ACC",
              "LR", "EVAL_BATCH_SIZE", "MAX_LENGTH", "PRECISION", "SEED"]
    for script in TRAINING:
        names = {line.split("=", 1)[0] for line in settings(script)}
        missing = set(wanted) - names
        kd = "vanilla_kd" in script.name
        if kd:
            missing |= {"KD_OBJ", "TEACHER_MODEL_PATH"} - names
        if script.name == "vanilla_kd_tinyllama.sh":
            missing |= {"TEACHER_PEFT_PATH"} - names
        assert not missing, (script.name, missing)


def test_paper_defaults():
    text = (REPO / "scripts/gpt2/vanilla_kd_gpt2_base.sh").read_text()
    for setting in ("LR=${LR:-0.0005}", "EPOCH=${EPOCH:-20}", "BATCH_SIZE=${BATCH_SIZE:-4}", "GRAD_ACC=${GRAD_ACC:-2}",
                    "KD_RATE=${KD_RATE:-0.5}", "KD_TEMP=${KD_TEMP:-2.0}", "MAX_LENGTH=${MAX_LENGTH:-512}",
                    "SEED=${SEED:-10}", "SAVE_BEST_N_CKPTS=${SAVE_BEST_N_CKPTS:-1}", "GPUS=${GPUS-0,1,2,3}"):
        assert setting in text, setting
    tiny = (REPO / "scripts/tinyllama/vanilla_kd_tinyllama.sh").read_text()
    for setting in ("LR=${LR:-0.001}", "EPOCH=${EPOCH:-10}", "LORA_RANK=${LORA_RANK:-256}", "LORA_ALPHA=${LORA_ALPHA:-8}",
                    "LORA_DROPOUT=${LORA_DROPOUT:-0.1}", '--teacher-peft-path ${TEACHER_PEFT_PATH}', "--peft lora"):
        assert setting in tiny, setting


@pytest.mark.parametrize("script,variable", [("gpt2/vanilla_kd_gpt2_base.sh", "TEACHER_MODEL_PATH"),
                                             ("tinyllama/vanilla_kd_tinyllama.sh", "TEACHER_PEFT_PATH")])
def test_kd_scripts_ask_for_the_teacher(script, variable, tmp_path):
    env = {k: v for k, v in subprocess_env().items() if k not in ("TEACHER_MODEL_PATH", "TEACHER_PEFT_PATH")}
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], env={**env, "SAVE_PATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"set {variable}" in result.stderr


@pytest.mark.slow
def test_benchmark_runs_on_cpu(shared_dir, tmp_path):
    env = {**subprocess_env(), "GPUS": "", "STUDENT_CONFIG": str(shared_dir / "model_hub/gpt2/gpt2-base"),
           "STUDENT_OVERRIDES": "n_layer=1,n_embd=32,n_head=2", "TEACHER_OVERRIDES": "n_layer=1,n_embd=48,n_head=2",
           "DATA": str(shared_dir / "data/dolly/train.jsonl"), "STEPS": "1", "WARMUP": "1", "BATCH_SIZE": "2",
           "MAX_LENGTH": "96", "MAX_PROMPT_LENGTH": "64", "OUT_DIR": str(tmp_path), "MODES": "official-style default"}
    result = subprocess.run(["bash", str(REPO / "scripts/bench/bench_epoch.sh")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = re.findall(r"^\| todi (official-style|default) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", result.stdout,
                      re.M)
    assert [r[0] for r in rows] == ["official-style", "default"]
    assert all(int(r[1]) == 1 and float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    assert (tmp_path / "bench.md").is_file() and "speed-up vs todi official-style" in result.stdout
