"""Each model family end to end through its scripts, as a new user runs them: the teacher's LoRA SFT
(scripts/<family>/sft_teacher_*.sh), KD of the LoRA student from it (vanilla_kd_*.sh, ToDi), then
scripts/eval/run_eval_lora.sh on the student — tiny random models built from the real configs, with
the real vocabulary sizes and tokenizers (Qwen2.5: 152,064 vs 151,936 output rows; Gemma 3: a
262,145-entry tokenizer over 262,144 rows)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from _training import REPO, make_dolly, subprocess_env
from _models import GEMMA_TEXT_SMALL, OLMO_SMALL, QWEN_SMALL, with_tokenizer

FAMILIES = {
    # family: (student config dir, teacher config dir, overrides, script names)
    "qwen2.5": ("qwen2.5/qwen2.5-0.5b", "qwen2.5/qwen2.5-7b", QWEN_SMALL,
                ("sft_teacher_qwen2.5_7b.sh", "vanilla_kd_qwen2.5_0.5b.sh")),
    "olmo2": ("olmo2/olmo-2-1124-13b", "olmo2/olmo-2-1124-7b", OLMO_SMALL,
              ("sft_teacher_olmo2_7b.sh", "vanilla_kd_olmo2_1b.sh")),
    "gemma3": ("gemma3/gemma-3-270m-it", "gemma3/gemma-3-1b-it", GEMMA_TEXT_SMALL,
               ("sft_teacher_gemma3_4b.sh", "vanilla_kd_gemma3_1b.sh")),
}
SMALL_RUN = dict(GPUS="", NPROC="1", EPOCH="1", BATCH_SIZE="2", GRAD_ACC="1", EVAL_BATCH_SIZE="2", DEV_NUM="2",
                 EVAL_GEN_REPEAT="1", LOG_INTERVAL="1", MAX_LENGTH="64", MAX_PROMPT_LENGTH="48", PRECISION="fp32",
                 LORA_RANK="4", LORA_ALPHA="8", SAVE_BEST_N_CKPTS="1")


def _run(script: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script.name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.glob("epoch*"))
    assert len(found) == 1, list(run_dir.iterdir())
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_end_to_end_through_its_scripts(family, shared_dir, tmp_path):
    hub = shared_dir / "model_hub"
    student_cfg, teacher_cfg, small, (sft_teacher, kd) = FAMILIES[family]
    tokenizer = hub / student_cfg
    if not (hub / student_cfg).is_dir() or not (hub / teacher_cfg).is_dir():
        pytest.skip(f"{family}: configs not in ../shared/model_hub")
    student = with_tokenizer(hub / student_cfg, tokenizer, tmp_path / "student", seed=0, **small)
    teacher = with_tokenizer(hub / teacher_cfg, tokenizer, tmp_path / "teacher", seed=1, **small)
    data = make_dolly(shared_dir, tmp_path / "data/dolly", n_train=8, n_dev=2)
    (data / "valid.jsonl").write_text("".join((data / "dev.jsonl").read_text().splitlines(True)[:2]))
    env = {**subprocess_env(), **SMALL_RUN, "BASE_PATH": str(REPO), "DATA_DIR": str(data)}
    scripts = REPO / "scripts" / family

    _run(scripts / sft_teacher, {**env, "CKPT_PATH": str(teacher), "SAVE_PATH": str(tmp_path / "teacher_sft")})
    adapter = _checkpoint(tmp_path / "teacher_sft")
    assert (adapter / "adapter_config.json").is_file()

    kd_dir = tmp_path / "kd"
    _run(scripts / kd, {**env, "CKPT_PATH": str(student), "TEACHER_MODEL_PATH": str(teacher),
                        "TEACHER_PEFT_PATH": str(adapter), "KD_OBJ": "ToDi", "SAVE_PATH": str(kd_dir)})
    args = json.loads((kd_dir / "args.json").read_text())
    assert args["kd_objective"] == "ToDi" and Path(args["model_path"]) == student
    log = (kd_dir / "train.log").read_text()
    assert "KD compares the first" in log  # the shared vocabulary, logged
    student_ckpt = _checkpoint(kd_dir)
    profile = json.loads((student_ckpt / "todi_tokenizer.json").read_text())  # evaluation stops at these
    assert profile["eos"] and profile["stop"]

    _run(REPO / "scripts/eval/run_eval_lora.sh",
         {**env, "EVAL_DATA_DIR": str(tmp_path / "data"), "EVAL_SETS": "dolly", "SEEDS": "10",
          "MODEL_PATH": str(student), "MAX_LENGTH": "64", "MAX_PROMPT_LENGTH": "48"}, str(student_ckpt), "2")
    metrics = json.loads((student_ckpt / "eval/dolly/seed10/metrics.json").read_text())
    assert 0.0 <= metrics["rougeL"] <= 100.0
