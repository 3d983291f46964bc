"""Real data parallelism: 2-process runs (torchrun, gloo) through the paper's KD script.

* the script trains on CPU and saves a checkpoint that AutoModelForCausalLM loads;
* a run stopped after step 3 (mid-epoch) and restarted reproduces every loss bit for bit (with
  dropout, so the random state must be restored too);
* one process with twice the gradient accumulation gives the same steps (same global batch);
* ZeRO-3, where the teacher is sharded too, gives the same losses as ZeRO-1.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from todi.training.resume import PAUSED_EXIT_CODE
from _training import REPO, cli, make_dolly, make_gpt2_pair, read_metrics, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    student, teacher = make_gpt2_pair(shared_dir, root / "models")
    return root, student, teacher, make_dolly(shared_dir, root / "dolly", n_train=16, n_dev=4)


def run_script(save_path, student, teacher, data, extra="", code=0):
    """The KD script on 2 CPU ranks; ``code``: the exit code expected (PAUSED_EXIT_CODE for a paused run)."""
    env = {
        **subprocess_env(), "KD_OBJ": "ToDi", "GPUS": "", "NPROC": "2", "CKPT_PATH": str(student),
        "TEACHER_MODEL_PATH": str(teacher), "DATA_DIR": str(data), "SAVE_PATH": str(save_path), "EPOCH": "2",
        "BATCH_SIZE": "2", "GRAD_ACC": "2", "MAX_LENGTH": "56", "MAX_PROMPT_LENGTH": "48", "EVAL_BATCH_SIZE": "4",
        "EVAL_GEN_REPEAT": "1", "LOG_INTERVAL": "1", "DEV_NUM": "2", "EXTRA_OPTS": extra,
    }
    result = subprocess.run(["bash", str(REPO / "scripts/gpt2/vanilla_kd_gpt2_base.sh")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == code, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def reference(setup):
    root, student, teacher, data = setup
    run_script(root / "reference", student, teacher, data)
    return root / "reference"


def checkpoints(run):
    return sorted(p for p in run.iterdir() if p.name.startswith("epoch"))


def test_script_trains_on_cpu_and_saves_a_loadable_checkpoint(reference):
    from transformers import AutoModelForCausalLM

    steps = read_metrics(reference)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert (reference / "train.log").read_text().count("train | ") == 4
    args = (reference / "args.json").read_text()
    assert '"world_size": 2' in args and '"kd_objective": "ToDi"' in args
    (best,) = checkpoints(reference)  # SAVE_BEST_N_CKPTS=1
    assert best.name.startswith("epoch") and "_rougel" in best.name
    model = AutoModelForCausalLM.from_pretrained(best)
    assert model.config.n_embd == 32


def test_interrupted_run_resumes_exactly(setup, tmp_path):
    from todi.models import save_random_model

    root, _, teacher, data = setup
    # a student with dropout: the resumed run must also continue the random streams exactly
    student = save_random_model(root / "models/student", tmp_path / "student", resid_pdrop=0.1, embd_pdrop=0.1,
                                attn_pdrop=0.1)
    reference = tmp_path / "reference"
    run_script(reference, student, teacher, data)
    run = tmp_path / "interrupted"
    first = run_script(run, student, teacher, data, extra="--stop-after-iters 3", code=PAUSED_EXIT_CODE)
    assert "stopping after 3 steps" in first.stdout
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    second = run_script(run, student, teacher, data)  # same command: resumes on its own
    assert "resumed at epoch 2, step 1" in second.stdout
    full, resumed = read_metrics(reference), read_metrics(run)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bit for bit
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in full]
    assert read_metrics(run, "dev") == read_metrics(reference, "dev")
    (a,), (b,) = checkpoints(reference), checkpoints(run)
    assert a.name == b.name
    from todi.models import load_model

    for (name, pa), (_, pb) in zip(load_model(a).named_parameters(), load_model(b).named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.fixture(scope="module")
def one_process(setup):
    """The reference's settings on one process with twice the accumulation (in this process)."""
    from todi.util.distributed import init_distributed
    from todi.training.cli import main

    root, student, teacher, data = setup
    init_distributed()
    main([str(a) for a in cli(student, data, root / "one", teacher=teacher, objective="ToDi", num_epochs=2,
                              gradient_accumulation_steps=4, state_interval=0, lr=5e-4, max_length=56)])
    return root / "one"


def test_one_process_with_doubled_accumulation_takes_the_same_steps(one_process, reference):
    one, two = read_metrics(one_process), read_metrics(reference)
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in two], rel=1e-5)


def test_zero3_shards_the_teacher_and_matches_zero1(setup, reference, one_process):
    root, student, teacher, data = setup
    argv = cli(student, data, root / "zero3", teacher=teacher, objective="ToDi", config="ds_config_zero3_fp32.json",
               num_epochs=2, total_iters=4, lr=5e-4, max_length=56)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             str(REPO / "code/distillation.py"), *map(str, argv)],
                            env=subprocess_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    zero3, zero1 = read_metrics(root / "zero3"), read_metrics(reference)
    assert [r["loss"] for r in zero3] == pytest.approx([r["loss"] for r in zero1], rel=1e-5)
    # the checkpoint gathers the sharded weights: the same model as without sharding
    from todi.models import load_model

    (sharded,) = [c for c in checkpoints(root / "zero3") if c.name.startswith("epoch2")]
    (whole,) = [c for c in checkpoints(one_process) if c.name.startswith("epoch2")]
    for (name, pa), (_, pb) in zip(load_model(sharded).named_parameters(), load_model(whole).named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
