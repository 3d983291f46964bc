"""The results table from fixture result files: rows by method, mean ± std over seeds, files written."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from todi.evaluation import report_cli  # code/report.py
from todi.evaluation.results import ResultError, collect, method_name, run_label, summarize, write_result

SETS = ["dolly", "self-inst", "vicuna", "sinst/11_", "uinst/11_"]
KD = "criterion=various_divergence__{obj}-bf16__teacher=gpt2-xlarge__kd^rate=0.5__kd^temp=2.0__epoch=20__bsz=4x2x4=32__lr=0.0005"


def _write(eval_dir: Path, set_name: str, seed: int, rouge: float, em: float = 1.0):
    write_result(eval_dir, set_name, seed, ["p"], [["r"]], ["a"], {"rougeL": rouge, "exact_match": em})


@pytest.fixture
def outputs(tmp_path) -> tuple[Path, dict]:
    """Three evaluated checkpoints as the training and eval scripts lay them out, with known scores."""
    root = tmp_path / "outputs"
    scores = {
        "ToDi": {s: {seed: 20 + i + seed / 100 for seed in (10, 20, 30)} for i, s in enumerate(SETS)},
        "forward_kl": {s: {seed: 18 + i + seed / 50 for seed in (10, 20, 30)} for i, s in enumerate(SETS)},
    }
    for obj, per_set in scores.items():
        ckpt = root / "gpt2/gpt2-base/vanilla_kd" / KD.format(obj=obj) / "epoch20_step7140_loss2.1_rougel25.3"
        for s, per_seed in per_set.items():
            for seed, value in per_seed.items():
                _write(ckpt / "eval", s, seed, value)
    # SFT: only two sets, one seed
    sft = root / "gpt2/gpt2-base/sft/criterion=cross_entropy__bf16__epoch=20__bsz=8x1x4=32__lr=0.0005/epoch10_step10"
    _write(sft / "eval", "dolly", 10, 22.5)
    _write(sft / "eval", "vicuna", 10, 15.0)
    # files that are not results must be ignored
    (root / "gpt2/metrics.json").write_text("not json")
    return root, scores


def test_table_values_labels_and_columns(outputs, capsys):
    root, scores = outputs
    assert report_cli.main([str(root)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert lines[0] == "| Method | Dolly | SelfInst | Vicuna | S-NI | UnNI | Avg. |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert set(rows) == {"ToDi", "forward_kl", "SFT"}

    for method in ("ToDi", "forward_kl"):
        for i, s in enumerate(SETS):
            values = list(scores[method][s].values())
            assert rows[method][i] == f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
        per_seed = [statistics.mean(scores[method][s][seed] for s in SETS) for seed in (10, 20, 30)]
        assert rows[method][5] == f"{statistics.mean(per_seed):.2f} ± {statistics.stdev(per_seed):.2f}"
    # a single seed has no spread; missing sets (and so the average) are dashes
    assert rows["SFT"] == ["22.50", "–", "15.00", "–", "–", "–"]

    table = list(csv.DictReader(io.StringIO((root / "report.csv").read_text())))
    todi = next(r for r in table if r["method"] == "ToDi")
    assert float(todi["dolly mean"]) == pytest.approx(20.2) and todi["dolly seeds"] == "3"
    assert todi["checkpoint"].endswith("epoch20_step7140_loss2.1_rougel25.3")
    assert (root / "report.md").read_text() in printed
    assert (root / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_method_names_from_run_directories(tmp_path):
    assert method_name(Path("o/gpt2/x/vanilla_kd") / KD.format(obj="ToDi") / "epoch1_step2") == "ToDi"
    assert method_name(Path("o") / KD.format(obj="skewed_reverse_kl") / "e") == "skewed_reverse_kl"
    assert method_name(Path("o/criterion=cross_entropy__lora-rank=256-alpha=8-dropout=0.1-bf16__epoch=10/e")) == "SFT (LoRA)"
    assert method_name(Path("o/criterion=dual_space_kd__x/e")) == "dual_space_kd"
    assert method_name(Path("o/my_model")) is None


def test_duplicate_methods_get_their_paths_and_other_sets_follow(tmp_path):
    for run in ("a", "b"):
        ckpt = tmp_path / run / KD.format(obj="ToDi") / "ckpt"
        _write(ckpt / "eval", "dolly", 10, 30.0)
        _write(ckpt / "eval", "demo", 10, 40.0)
    rows, columns = summarize(collect([tmp_path]), root=tmp_path)
    assert columns == ["dolly", "demo"]
    assert [r.label for r in rows] == ["ToDi (a)", "ToDi (b)"]  # what tells them apart
    assert rows[0].average(columns) == (35.0, 0.0, 1)


def test_bad_result_files_are_named(tmp_path, capsys):
    bad = tmp_path / "ck/eval/dolly/seed10/metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"set": "dolly", "seed": 10, "rougeL": "high"}))
    with pytest.raises(ResultError, match=f"{bad}: field 'rougeL' must be a finite number"):
        collect([tmp_path])
    bad.write_text(json.dumps({"set": "vicuna", "seed": 10, "rougeL": 1.0}))
    assert report_cli.main([str(tmp_path)]) == 2
    assert f"{bad}: says set 'vicuna' seed 10" in capsys.readouterr().err
    assert report_cli.main([str(tmp_path / "empty")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_a_hyperparameter_sweep_is_labelled_by_what_differs_from_the_recipe(tmp_path):
    """A label comes from the run's own name: the recipe's lr is not shown, another lr is, and each
    row keeps its label in a table of its own (labels never depend on the other rows)."""
    tree = tmp_path / "gpt2/gpt2-base/vanilla_kd"
    for lr in ("0.0005", "0.001"):
        run = KD.format(obj="ToDi").replace("lr=0.0005", f"lr={lr}")
        _write(tree / run / "epoch20_step100" / "eval", "dolly", 10, 25.0)
    rows, _ = summarize(collect([tmp_path]), root=tmp_path)
    assert sorted(r.label for r in rows) == ["ToDi", "ToDi (lr=0.001)"]
    for row in rows:
        alone, _ = summarize(collect([row.checkpoint]), root=row.checkpoint)
        assert [r.label for r in alone] == [row.label]


NEW_KD = KD + "__seed={seed}__data=dolly__len=512-256"


@pytest.mark.parametrize("run, label", [
    (NEW_KD.format(obj="ToDi", seed=10), "ToDi"),  # today's names: seed, data and lengths at the protocol's
    (NEW_KD.format(obj="ToDi", seed=20), "ToDi (seed=20)"),
    (NEW_KD.format(obj="ToDi-todi^beta=2.0", seed=10), "ToDi (todi-beta=2.0)"),
    (NEW_KD.format(obj="forward_kl", seed=10) + "__cache", "forward_kl, cached teacher"),
    (NEW_KD.format(obj="ToDi", seed=10).replace("data=dolly", "data=demo").replace("kd^temp=2.0", "kd^temp=1.0"),
     "ToDi (kd-temp=1.0, data=demo)"),
    (KD.format(obj="reverse_kl").replace("bf16__", "bf16__adakd^c=0.5^eps=0.05^delta=0.05^hellinger__")
     .replace("kd^rate=0.5__kd^temp=2.0", "kd^rate=1.0__kd^temp=1.0"), "reverse_kl + AdaKD"),
    (KD.format(obj="reverse_kl").replace("bf16__", "bf16__adakd^c=0.3^eps=0.05^delta=0.05^hellinger__"),
     "reverse_kl + AdaKD (adakd-c=0.3, kd-rate=0.5, kd-temp=2.0)"),
    ("criterion=cross_entropy__bf16__epoch=10__bsz=8x1x4=32__lr=0.0005__seed=10__data=dolly__len=512-256",
     "SFT (epoch=10)"),
])
def test_labels_name_the_method_and_what_differs_from_the_recipe(run, label):
    assert run_label(Path("outputs/gpt2/gpt2-base/task") / run / "epoch1_step2_loss1.0_rougel20.0") == label


def test_folders_not_named_by_the_scripts_are_labelled_by_their_run_folder():
    assert run_label(Path("outputs/demo/runs/student_kd_ToDi/epoch5_step250_loss1.2_rougel60.1")) == "student_kd_ToDi"
    assert run_label(Path("somewhere/my_model")) == "my_model"
    # lr and epochs only where the recipe is known (runs saved under outputs/<family>/<model>/<task>/)
    assert run_label(Path("elsewhere") / KD.format(obj="ToDi").replace("lr=0.0005", "lr=0.1") / "e") == "ToDi"
    assert run_label(Path("outputs/tinyllama/tinyllama-1.1b-3T/vanilla_kd") / KD.format(obj="ToDi") / "e") == \
        "ToDi (lr=0.0005, epoch=20)"
