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
