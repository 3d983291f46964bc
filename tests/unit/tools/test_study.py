"""The toy study (todi.tools.study) on a reduced configuration: its outputs, its metrics, its setup."""

from __future__ import annotations

import math

import pytest
import torch

from todi.tools import study
from todi.loss.divergence import DIVERGENCES

SMALL = ["--vocab", "200", "--contexts", "16", "--rank", "3", "--steps", "25"]


def test_study_writes_its_table_and_plot(tmp_path, capsys):
    result = study.main(["--out", str(tmp_path), *SMALL, "--workers", "1"])
    printed = capsys.readouterr().out
    table = (tmp_path / "study.md").read_text()
    assert table in printed
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| objective")]
    assert [row.split(" | ")[0][2:] for row in rows] == [label for label, _, _ in study.RUNS]
    assert len(study.RUNS) == len(DIVERGENCES) + 3 and sum(adakd for _, _, adakd in study.RUNS) == 3
    assert (tmp_path / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.md", "study.png"]  # no temporary files left

    initial = result["initial"]
    for row in result["rows"]:
        assert all(math.isfinite(row[k]) for k in ("fkl", "rkl", "tvd", "top1", "under", "over"))
        assert row["tvd"] < initial["tvd"], row["label"]  # every objective moved the student towards the teacher
        assert (row["ratio"] is None) == ("AdaKD" not in row["label"])
        if row["ratio"] is not None:
            assert 0.1 <= row["ratio"] <= 1.0
    # the initial student under-estimates some of the teacher's mass and over-estimates the rest
    assert initial["under"] < 0 < initial["over"]


def test_teacher_is_calibrated_and_peaked():
    cfg = study.StudyConfig(vocab=500, contexts=32, teacher_entropy=1.5)
    logits = study.teacher_logits(cfg)
    p = torch.softmax(logits.double(), -1)
    entropy = -(p * p.log()).sum(-1)
    assert abs(entropy.mean().item() - 1.5) < 1e-3
    assert entropy.std() > 0.3 and 0.3 < p.max(-1).values.mean() < 0.9  # contexts differ, mass is peaked
    assert torch.equal(logits, study.teacher_logits(cfg))  # fixed by the seed


def test_metrics_against_hand_computed_values():
    teacher = torch.tensor([[0.5, 0.3, 0.2]]).log()
    initial = torch.tensor([[0.2, 0.3, 0.5]]).log()
    m = study.metrics(initial, teacher, initial)
    assert m["under"] == pytest.approx(math.log(0.2 / 0.5)) and m["over"] == pytest.approx(math.log(0.5 / 0.2))
    assert m["tvd"] == pytest.approx(0.3) and m["top1"] == 0.0
    assert m["fkl"] == pytest.approx(0.5 * math.log(0.5 / 0.2) + 0.2 * math.log(0.2 / 0.5))
    assert m["rkl"] == pytest.approx(0.2 * math.log(0.2 / 0.5) + 0.5 * math.log(0.5 / 0.2))
    matched = study.metrics(teacher, teacher, initial)
    assert matched["fkl"] == matched["rkl"] == matched["tvd"] == matched["under"] == matched["over"] == 0.0
    assert matched["top1"] == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        study.parse_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        study.parse_args(["--vocab", "20", "--teacher-entropy", "5"])


@pytest.mark.slow
def test_parallel_workers_give_the_same_numbers(tmp_path):
    cfg = study.StudyConfig(vocab=120, contexts=8, rank=2, steps=10)
    serial = study.run_study(cfg, workers=1, progress=False)
    parallel = study.run_study(cfg, workers=2, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(serial["rows"]) == strip(parallel["rows"])
    assert serial["curves"] == parallel["curves"]
