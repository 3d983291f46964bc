"""Keep-best-N, and resumable states that survive a crash mid-save (atomic writes: test_atomic.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from todi.training import checkpoint as ckpt


def test_keep_best_n_by_score(tmp_path):
    best = ckpt.BestCheckpoints(2)
    assert best.add(tmp_path / "a", 10.0) == []
    assert best.add(tmp_path / "b", 30.0) == []
    assert best.add(tmp_path / "c", 20.0) == [tmp_path / "a"]
    assert best.add(tmp_path / "d", 5.0) == [tmp_path / "d"]  # worse than both: itself goes
    assert best.add(tmp_path / "e", 30.0) == [tmp_path / "c"]  # a tie with the best: the newer one stays too
    assert {e["path"] for e in best.entries} == {str(tmp_path / "b"), str(tmp_path / "e")}
    assert best.best["score"] == 30.0
    assert best.add(tmp_path / "b", 40.0) == []  # re-saving a path replaces its entry
    assert best.add(tmp_path / "f", 35.0) == [tmp_path / "e"]


def test_checkpoint_names_are_the_official_ones():
    assert ckpt.checkpoint_name(3, 1071, 2.123456, 24.56789) == "epoch3_step1071_loss2.1235_rougel24.5679"
    assert ckpt.checkpoint_name(1, 10, 1.5, None) == "epoch1_step10_loss1.5000"
    assert ckpt.checkpoint_name(1, 10, None, None) == "epoch1_step10"


class FakeEngine:
    """Stands in for DeepSpeed's save/load: writes one file per tag, can fail mid-way."""

    def __init__(self, fail=False):
        self.fail = fail

    def save_checkpoint(self, root, tag, save_latest):
        assert save_latest is False
        (Path(root) / tag).mkdir(parents=True, exist_ok=True)
        torch.save(torch.tensor([1.0]), Path(root) / tag / "model.pt")
        if self.fail:
            raise OSError("killed while writing the optimizer states")

    def load_checkpoint(self, root, tag, **kwargs):
        return str(Path(root) / tag / "model.pt"), {}


def test_resume_state_survives_a_crash_mid_save(tmp_path):
    root = tmp_path / "resume"
    state = ckpt.TrainerState(epoch=1, step_in_epoch=2, global_step=7, best=[{"path": "x", "score": 1.0}])
    assert ckpt.resume_tag(root) is None
    tag = ckpt.save_resume_state(FakeEngine(), root, state, rank=0, extra={"adakd": {"ema": torch.tensor(0.5)}})
    assert tag == "step7" and ckpt.resume_tag(root) == "step7"

    later = ckpt.TrainerState(epoch=1, step_in_epoch=3, global_step=8)
    with pytest.raises(OSError):
        ckpt.save_resume_state(FakeEngine(fail=True), root, later, rank=0)
    assert ckpt.resume_tag(root) == "step7"  # the pointer still names the complete state
    loaded, extra = ckpt.load_resume_state(FakeEngine(), root, "step7", rank=0)
    assert loaded == state and extra["adakd"]["ema"].item() == 0.5 and "torch" in extra["rng"]

    ckpt.remove_stale_temporaries(root)
    ckpt.save_resume_state(FakeEngine(), root, later, rank=0)
    assert ckpt.resume_tag(root) == "step8"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step8"]  # older states are pruned
    assert json.loads((root / "latest.json").read_text()) == {"tag": "step8"}


def test_rng_state_round_trip():
    import random

    import numpy as np

    saved = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def run_directory(tmp_path, lr: str = "1e-3"):
    """The RunDirectory of a minimal command line (one process, no process group)."""
    from todi.training.args import parse_args
    from todi.training.resume import RunDirectory
    from todi.util.distributed import DistEnv

    args = parse_args(["--model-path", "m", "--data-dir", "d", "--save-dir", str(tmp_path / "run"), "--lr", lr,
                       "--deepspeed_config", "c.json", "--do-train", "--num-epochs", "1"])
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    return RunDirectory(args, env, {"world_size": 1})


def test_a_different_run_is_sent_to_a_fresh_folder_not_told_to_start_over(tmp_path):
    first = run_directory(tmp_path)
    first.write_args({})
    ckpt.save_resume_state(FakeEngine(), first.resume_root, ckpt.TrainerState(global_step=1), rank=0)
    with pytest.raises(SystemExit) as exc:
        run_directory(tmp_path, lr="5e-4")
    message = str(exc.value)
    assert message.startswith(f"{first.path} holds the state of a different run (lr: 0.001 -> 0.0005)")
    assert "another SAVE_PATH (--save-dir)" in message and f"or delete {first.path} to start over" in message
    assert "--no-resume" not in message  # it would delete the other experiment's state
    assert run_directory(tmp_path).resume_tag == "step1"  # the same run still resumes


def test_paused_marker_is_written_once_and_gone_when_the_run_starts_again(tmp_path):
    from todi.training.resume import PAUSED_MARKER

    run = run_directory(tmp_path)
    run.mark_paused("paused at step 1 of 2 by --stop-after-iters: rerun the same command to continue")
    assert (run.path / PAUSED_MARKER).read_text() == \
        "paused at step 1 of 2 by --stop-after-iters: rerun the same command to continue\n"
    run_directory(tmp_path)
    assert not (run.path / PAUSED_MARKER).exists()
