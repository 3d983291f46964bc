"""A new user's first runs, through the real scripts and entry point: GPUS naming GPUs that are not
there is an error before anything starts (``GPUS=`` is the CPU, in fp32), and a run paused by
``--stop-after-iters`` exits with its own code, a finished one with 0. (Run folders that never
collide: tests/e2e/test_scripts.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _training import REPO, cli, make_dolly, make_gpt2_pair, read_metrics, subprocess_env

# the scripts that launch through scripts/torchrun_launch.sh: training (SFT, KD) and the teacher cache
LAUNCHING = ["gpt2/sft_gpt2_base.sh", "gpt2/vanilla_kd_gpt2_base.sh", "gpt2/cache_teacher_gpt2_xlarge.sh"]


def fake_torchrun(tmp_path: Path) -> dict:
    """PATH with a torchrun that only prints what it was given (and CUDA_VISIBLE_DEVICES)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "torchrun"
    fake.write_text('#!/bin/sh\necho "LAUNCHED CUDA_VISIBLE_DEVICES=[$CUDA_VISIBLE_DEVICES] $*"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


# settings of the caller's environment that would hide the scripts' defaults
DEFAULTED = ("GPUS", "SAVE_PATH", "CACHE_DIR", "PRECISION", "DS_CONFIG", "CUDA_VISIBLE_DEVICES")


def run_script(script: str, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    """A script with the stand-in torchrun, BASE_PATH = ``tmp_path`` (the default folders go there)."""
    env = {k: v for k, v in subprocess_env().items() if k not in DEFAULTED}
    env.update(fake_torchrun(tmp_path), BASE_PATH=str(tmp_path), MASTER_PORT="29999", TEACHER_MODEL_PATH="/teacher",
               **variables)
    return subprocess.run(["bash", str(REPO / "scripts" / script)], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("script", LAUNCHING)
def test_gpus_naming_gpus_that_are_not_there_is_one_error_before_anything_starts(script, tmp_path):
    import torch

    missing = ",".join(str(i) for i in range(torch.cuda.device_count() + 1))  # one more than there are
    result = run_script(script, tmp_path, GPUS=missing)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert lines[-1].startswith(f"error: GPUS={missing} lists") and "set GPUS= (explicitly empty)" in lines[-1]
    assert "LAUNCHED" not in result.stdout and not (tmp_path / "outputs").exists()  # no run folder either


def test_explicitly_empty_gpus_runs_on_the_cpu_in_fp32_unless_precision_is_set(tmp_path):
    def launched(**variables: str) -> str:
        result = run_script("gpt2/sft_gpt2_base.sh", tmp_path, GPUS="", **variables)
        assert result.returncode == 0, result.stdout + result.stderr
        (line,) = [x for x in result.stdout.splitlines() if x.startswith("LAUNCHED ")]
        return line

    cpu = launched()
    assert "CUDA_VISIBLE_DEVICES=[]" in cpu and "--nproc_per_node 1 " in cpu
    assert "/ds_config_zero1_fp32.json" in cpu and "fp32__epoch=" in cpu
    assert "/ds_config_zero1_bf16.json" in launched(PRECISION="bf16")  # an explicit PRECISION stays


def test_distillation_exit_code_is_the_paused_one_only_outside_torchrun(monkeypatch):
    """Under torchrun a non-zero worker exit is a failure report: there every rank exits 0 and the
    launcher reads the run directory's PAUSED marker instead."""
    from todi.training import cli
    from todi.training.resume import PAUSED_EXIT_CODE

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    for paused, code in ((True, PAUSED_EXIT_CODE), (False, 0)):
        monkeypatch.setattr(cli, "train", lambda argv=None, paused=paused: paused)
        assert cli.main([]) == code
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    monkeypatch.setattr(cli, "train", lambda argv=None: True)
    assert cli.main([]) == 0
    assert PAUSED_EXIT_CODE == 3 and "PAUSED_EXIT_CODE=3 " in (REPO / "scripts/torchrun_launch.sh").read_text()


@pytest.fixture(scope="module")
def tiny(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("first_day")
    student, _ = make_gpt2_pair(shared_dir, root / "models")
    return student, make_dolly(shared_dir, root / "dolly", n_train=4, n_dev=2)


@pytest.mark.slow
def test_a_paused_run_exits_with_the_paused_code_and_its_resumption_with_0(tiny, tmp_path):
    """Through scripts/gpt2/sft_gpt2_base.sh under torchrun: 2 steps, paused after 1, then rerun."""
    from todi.training.resume import PAUSED_EXIT_CODE, PAUSED_MARKER

    student, data = tiny
    run = tmp_path / "run"
    env = subprocess_env(GPUS="", NPROC="1", CKPT_PATH=str(student), DATA_DIR=str(data), SAVE_PATH=str(run),
                         EPOCH="1", BATCH_SIZE="2", GRAD_ACC="1", MAX_LENGTH="56", MAX_PROMPT_LENGTH="48",
                         EVAL_BATCH_SIZE="2", EVAL_GEN_REPEAT="1", LOG_INTERVAL="1", DEV_NUM="2", OMP_NUM_THREADS="1")

    def script(extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO / "scripts/gpt2/sft_gpt2_base.sh")], env={**env, "EXTRA_OPTS": extra},
                              capture_output=True, text=True, timeout=300)

    paused = script("--stop-after-iters 1")
    assert paused.returncode == PAUSED_EXIT_CODE, paused.stdout[-3000:] + paused.stderr[-3000:]
    last = paused.stdout.strip().splitlines()[-1]
    assert last == "paused at step 1 of 2 by --stop-after-iters: rerun the same command to continue"
    assert (run / PAUSED_MARKER).is_file() and "ChildFailedError" not in paused.stdout + paused.stderr
    finished = script("")
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert not (run / PAUSED_MARKER).exists() and [r["step"] for r in read_metrics(run)] == [1, 2]


@pytest.mark.slow
def test_distillation_run_directly_exits_with_the_paused_code(tiny, tmp_path):
    from todi.training.resume import PAUSED_EXIT_CODE, PAUSED_MARKER

    student, data = tiny
    argv = cli(student, data, tmp_path / "run", num_epochs=2, stop_after_iters=1, max_length=56)  # 1 step an epoch
    result = subprocess.run([sys.executable, str(REPO / "code/distillation.py"), *map(str, argv)],
                            env=subprocess_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == PAUSED_EXIT_CODE, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / PAUSED_MARKER).is_file() and "error:" not in result.stderr


def distillation(argv, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "code/distillation.py"), *map(str, argv)],
                          env=subprocess_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)


def test_a_missing_teacher_is_named_as_the_teacher_before_the_run_folder_is_made(tiny, tmp_path):
    student, data = tiny
    missing = tmp_path / "no-such-teacher"
    result = distillation(cli(student, data, tmp_path / "run", teacher=missing, objective="ToDi"), tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"distillation.py: error: --teacher-model-path {missing}: no such directory (the teacher's model directory)")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_adakd_metrics_carry_one_prefix(shared_dir, tmp_path):
    """metrics.jsonl of an AdaKD run holds adakd_ratio, adakd_tau_min, ... (the names README and
    report.py --curves use), never adakd_adakd_*."""
    student, teacher = make_gpt2_pair(shared_dir, tmp_path / "models")
    data = make_dolly(shared_dir, tmp_path / "dolly", n_train=4, n_dev=2)
    argv = cli(student, data, tmp_path / "run", teacher=teacher, objective="forward_kl", adakd=True, max_length=56)
    result = distillation(argv, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fields = {name for record in read_metrics(tmp_path / "run") for name in record}
    assert {"adakd_ratio", "adakd_tau_min", "adakd_tau_max"} <= fields
    assert not any(name.startswith("adakd_adakd") for name in fields)
