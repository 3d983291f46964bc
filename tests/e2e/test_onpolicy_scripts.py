"""On-policy KD through the scripts a user runs (scripts/gpt2/vanilla_kd_gpt2_base.sh with DATA_MODE,
and the GKD / DistiLLM recipes):

* GKD with λ = 0 is the fixed run, bit for bit;
* with λ = 1 every trained token is the student's own sample (up to and including EOS) and the
  teacher saw exactly prompt + sample (in-process, through the trainer: tests/unit/training/test_onpolicy.py);
* 1 rank and 2 ranks give the same rollouts and losses (fp32), and so do ZeRO-1 and ZeRO-3;
* a DistiLLM run (generation, replay and dataset steps) paused mid-run and rerun reproduces the
  uninterrupted run's per-step losses and final weights;
* bad settings are one clear error line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from todi.training.resume import PAUSED_EXIT_CODE
from _training import REPO, make_dolly, make_gpt2_pair, read_metrics, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("onpolicy")
    student, teacher = make_gpt2_pair(shared_dir, root / "models")
    return root, student, teacher, make_dolly(shared_dir, root / "dolly", n_train=16, n_dev=4)


def settings(setup, save: str, *, nproc=2, extra="", **env) -> dict:
    root, student, teacher, data = setup
    return {**subprocess_env(), "GPUS": "", "NPROC": str(nproc), "GRAD_ACC": str(4 // nproc), "KD_OBJ": "ToDi",
            "CKPT_PATH": str(student), "TEACHER_MODEL_PATH": str(teacher), "DATA_DIR": str(data),
            "SAVE_PATH": str(root / save), "EPOCH": "2", "BATCH_SIZE": "2", "EVAL_BATCH_SIZE": "4",
            "MAX_LENGTH": "56", "MAX_PROMPT_LENGTH": "48", "EVAL_GEN_REPEAT": "1", "LOG_INTERVAL": "1",
            "DEV_NUM": "2", "EXTRA_OPTS": extra, **env}


def run(setup, save: str, *, script="vanilla_kd_gpt2_base.sh", code=0, **env):
    result = subprocess.run(["bash", str(REPO / "scripts/gpt2" / script)], env=settings(setup, save, **env),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == code, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_once(setup, save: str, **kwargs) -> None:
    """``run`` unless this module already ran it (runs shared by tests)."""
    if not (setup[0] / save / "metrics.jsonl").is_file():
        run(setup, save, **kwargs)


def losses(setup, save: str) -> list[tuple]:
    return [(r["step"], r["loss"], r["ce"], r["kd"]) for r in read_metrics(setup[0] / save)]


def test_gkd_with_lambda_zero_is_the_fixed_run(setup):
    run(setup, "fixed")
    run(setup, "gkd0", DATA_MODE="gkd", STUDENT_GEN_RATIO="0")
    assert losses(setup, "gkd0") == losses(setup, "fixed")
    assert all(r["gen_share"] == 0 for r in read_metrics(setup[0] / "gkd0"))


def test_gkd_rollouts_and_losses_do_not_depend_on_the_rank_count(setup):
    one = run(setup, "gkd_one", nproc=1, DATA_MODE="gkd", STUDENT_GEN_RATIO="0.5")
    run_once(setup, "gkd_two", nproc=2, DATA_MODE="gkd", STUDENT_GEN_RATIO="0.5")
    assert "data mode gkd: student responses with probability 0.5" in one.stdout
    a, b = read_metrics(setup[0] / "gkd_one"), read_metrics(setup[0] / "gkd_two")
    assert [r["gen_share"] for r in a] == [r["gen_share"] for r in b] and 0 < sum(r["gen_share"] for r in a) < len(a)
    for x, y in zip(a, b):
        assert x.get("rollout_len") == y.get("rollout_len")
        for key in ("loss", "ce", "kd"):
            assert x[key] == pytest.approx(y[key], rel=1e-5), (key, x, y)
    on = [r for r in a if r["gen_share"] == 1]  # sampled responses: kd_rate·KD, no CE (KD_RATE 0.5 here)
    assert on and all(r["loss"] == pytest.approx(0.5 * r["kd"], rel=1e-6) for r in on)


def test_gkd_under_zero3_samples_as_under_zero1(setup):
    """ZeRO-3 partitions the student: its rollouts gather the weights with the ranks in lock-step
    (``synced_gpus``), and sample what the whole model samples."""
    run_once(setup, "gkd_two", nproc=2, DATA_MODE="gkd", STUDENT_GEN_RATIO="0.5")
    run(setup, "gkd_zero3", nproc=2, DATA_MODE="gkd", STUDENT_GEN_RATIO="0.5", ZERO_STAGE="3")
    a, b = read_metrics(setup[0] / "gkd_two"), read_metrics(setup[0] / "gkd_zero3")
    assert [r["gen_share"] for r in a] == [r["gen_share"] for r in b] and any(r["gen_share"] for r in a)
    for x, y in zip(a, b):
        assert x.get("rollout_len") == y.get("rollout_len")
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (x, y)


DISTILLM = {"DATA_MODE": "distillm", "INIT_THRESHOLD": "1.0", "REPLAY_CAPACITY": "8"}  # generate, then replay


def test_distillm_killed_mid_run_and_rerun_is_the_uninterrupted_run(setup):
    """SIGKILL (every process of the run) once 3 steps are logged, with a resume state after every step;
    the rerun resumes from the last complete state and logs the uninterrupted run's steps."""
    run_once(setup, "distillm", script="distillm_gpt2_base.sh", **DISTILLM)
    killed = setup[0] / "distillm_killed"
    env = settings(setup, "distillm_killed", extra="--state-interval 1", **DISTILLM)
    proc = subprocess.Popen(["bash", str(REPO / "scripts/gpt2/distillm_gpt2_base.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / "metrics.jsonl").is_file() and len(read_metrics(killed)) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 3 <= len(read_metrics(killed)) < 8  # killed mid-run
    run(setup, "distillm_killed", script="distillm_gpt2_base.sh", extra="--state-interval 1", **DISTILLM)
    full, resumed = read_metrics(setup[0] / "distillm"), read_metrics(killed)
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bit for bit
    assert [r["replay_size"] for r in resumed] == [r["replay_size"] for r in full]


def test_distillm_paused_and_rerun_is_the_uninterrupted_run(setup):
    from todi.models import load_model

    run_once(setup, "distillm", script="distillm_gpt2_base.sh", **DISTILLM)
    first = run(setup, "distillm_paused", script="distillm_gpt2_base.sh", code=PAUSED_EXIT_CODE,
                extra="--stop-after-iters 3", **DISTILLM)
    assert "stopping after 3 steps" in first.stdout
    run(setup, "distillm_paused", script="distillm_gpt2_base.sh", **DISTILLM)
    full, resumed = read_metrics(setup[0] / "distillm"), read_metrics(setup[0] / "distillm_paused")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bit for bit
    assert [r["replay_size"] for r in resumed] == [r["replay_size"] for r in full]
    assert full[-1]["replay_size"] == 8 and any(r.get("gen_s") == 0 and r["gen_share"] == 1 for r in full)  # replays
    ckpt = lambda d: sorted(p for p in (setup[0] / d).iterdir() if p.name.startswith("epoch"))[-1]  # noqa: E731
    for (name, pa), (_, pb) in zip(load_model(ckpt("distillm")).named_parameters(),
                                   load_model(ckpt("distillm_paused")).named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("env,message", [
    ({"DATA_MODE": "gkd", "STUDENT_GEN_RATIO": "1.5"}, "--student-gen-ratio 1.5: must be in [0, 1]"),
    ({"DATA_MODE": "gkd", "ROLLOUT_MAX_NEW_TOKENS": "0"}, "the generation budget must be at least 1 token"),
])
def test_bad_settings_are_one_clear_line(setup, env, message):
    result = run(setup, "bad", nproc=1, code=1, **env)  # the launcher's code; the cause is the last line
    assert message in (result.stdout + result.stderr).strip().splitlines()[-1]
