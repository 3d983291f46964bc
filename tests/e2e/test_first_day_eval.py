"""A new user's evaluation mistakes, through scripts/eval/*.sh and code/evaluate.py: each is one clear
error before anything is generated (issue 21: eval-set typos, run folders, EVAL_NUM)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from todi.evaluation import cli as evaluate_cli  # code/evaluate.py
from todi.evaluation.results import PAPER_SETS

REPO = Path(__file__).resolve().parents[2]
RUN = "epoch{e}_step{s}_loss1.0000_rougel{r}"


def _eval(script: str, target: Path, **extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(GPUS="", NPROC="1", MAX_LENGTH="72", MAX_PROMPT_LENGTH="64", OMP_NUM_THREADS="1", **extra)
    return subprocess.run(["bash", str(REPO / "scripts/eval" / script), str(target)], env=env,
                          capture_output=True, text=True, timeout=300)


def _last(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def _run_folder(root: Path, model_file: str = "config.json") -> Path:
    """A training run folder as the scripts leave it: args.json and two checkpoints."""
    run = root / "criterion=various_divergence__ToDi-bf16__lr=0.0005"
    for e, s, r in ((1, 5, "30.0000"), (2, 10, "25.5000")):
        (run / RUN.format(e=e, s=s, r=r)).mkdir(parents=True)
        (run / RUN.format(e=e, s=s, r=r) / model_file).write_text("{}")
    (run / "args.json").write_text("{}")
    return run


def test_a_misspelled_eval_set_is_an_error_listing_the_known_ones(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")  # never loaded: the sets are checked first
    (tmp_path / "data/demo").mkdir(parents=True)
    (tmp_path / "data/demo/valid.jsonl").write_text("")
    proc = _eval("run_eval.sh", ckpt, EVAL_DATA_DIR=str(tmp_path / "data"), EVAL_SETS="dolly selfinst demo")
    assert proc.returncode == 2 and not (ckpt / "eval").exists()
    assert _last(proc).startswith("error: unknown EVAL_SETS entry: selfinst; known: the papers' "
                                  "dolly self-inst vicuna sinst/11_ uinst/11_")
    assert "(there: demo)" in _last(proc)
    assert "evaluation of" not in proc.stdout + proc.stderr
    # the script's list is the table's
    script = (REPO / "scripts/eval/eval_sets.sh").read_text()
    assert f'PAPER_SETS="{" ".join(PAPER_SETS)}"' in script


def test_a_run_folder_is_an_error_naming_its_checkpoints_best_first(tmp_path, capsys):
    run = _run_folder(tmp_path)
    proc = _eval("run_eval.sh", run)
    assert proc.returncode == 2
    best, other = RUN.format(e=1, s=5, r="30.0000"), RUN.format(e=2, s=10, r="25.5000")
    assert _last(proc) == (f"error: --model-path {run} is a training run folder, not a checkpoint; evaluate one of "
                           f"its checkpoints (best dev ROUGE-L first): {best}, {other}, e.g. {run / best}")
    assert "sentencepiece" not in proc.stderr

    # code/evaluate.py says the same before loading anything; any other folder says what was expected
    assert evaluate_cli.main(["--model-path", str(run), "--data-dir", str(tmp_path), "--save-dir", str(tmp_path / "e")]) == 2
    assert f"{run} is a training run folder" in capsys.readouterr().err
    proc = _eval("run_eval.sh", tmp_path)
    assert proc.returncode == 2
    assert _last(proc) == (f"error: --model-path {tmp_path} is not a checkpoint: expected a folder holding "
                           "config.json, such as a training run's epoch*_step* subfolder")

    lora_run = _run_folder(tmp_path / "lora", "adapter_config.json")
    proc = _eval("run_eval_lora.sh", lora_run)
    assert proc.returncode == 2 and f"--peft-path {lora_run} is a training run folder" in _last(proc)


def test_eval_num_evaluates_the_first_n_examples(tiny_gpt2, shared_dir, tmp_path):
    (tmp_path / "data/dolly").mkdir(parents=True)
    lines = open(shared_dir / "data/dolly/valid.jsonl").readlines()[:5]
    (tmp_path / "data/dolly/valid.jsonl").write_text("".join(lines))
    common = dict(EVAL_DATA_DIR=str(tmp_path / "data"), EVAL_SETS="dolly vicuna", SEEDS="10", EVAL_OUT=str(tmp_path / "e"))
    proc = _eval("run_eval.sh", tiny_gpt2, EVAL_NUM="abc", **common)
    assert proc.returncode == 2 and _last(proc).startswith("error: EVAL_NUM=abc: expected a positive number")

    proc = _eval("run_eval.sh", tiny_gpt2, EVAL_NUM="2", **common)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "e/dolly/seed10/metrics.json").read_text())["num_examples"] == 2
    # a paper set without data is skipped, and said again at the end, where it does not scroll away
    assert f"skipped (no data under {tmp_path / 'data'}): vicuna" in proc.stdout.splitlines()[-2]
