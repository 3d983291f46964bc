"""Failures end with their cause: through the real scripts and entry points, a bad data line, a missing
model, a bad flag, a missing or malformed evaluation set and a bad raw file each stop the run with a
non-zero code, the last line of the output names the cause (file and line, path, flag), and no rank
is left waiting (every run finishes well within its time limit).

Only that promise is asserted: what the processes of a run print before it (torchrun's report, a
rank's traceback, another rank's stop notice) and in which order depends on timing, and a busy
machine changes it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _training import REPO, make_bad_dolly, make_dolly, make_gpt2_pair, subprocess_env

FAILURES = REPO / "code/todi/util/failures.py"
LIMIT = 150  # seconds: a run that hangs in a collective would take the process-group timeout (an hour)


def last_lines(text: str, n: int) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-n:]


def last_line(text: str) -> str:
    return last_lines(text, 1)[0]


def assert_launcher_ends_with(output: str, what: str, code: int, cause: str) -> str:
    """After a failed torchrun, the launcher's last lines: its summary (naming the exit code), then the
    earliest recorded cause; returns the summary line."""
    summary, last = last_lines(output, 2)
    assert summary.startswith(f"error: {what} failed (exit code {code}); the first cause, from rank "), output[-3000:]
    assert cause in last, output[-3000:]
    return summary


def run(cmd, env, limit=LIMIT) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=limit)
    return result, time.monotonic() - start


# --------------------------------------------------------------------------------- the mechanism


def entry(tmp_path, body: str, **env) -> subprocess.CompletedProcess:
    """A tiny entry point run through todi.util.failures.run_entry_point, with TODI_ERROR_DIR set."""
    script = tmp_path / "entry.py"
    script.write_text("import argparse, sys\nfrom todi.util.failures import run_entry_point\n"
                      f"def main():\n{body}\n"
                      "sys.exit(run_entry_point(main, prog='entry.py'))\n")
    return subprocess.run([sys.executable, str(script)], env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("body,code,message", [
    ("    raise SystemExit('--lr must be positive')", 2, "entry.py: error: --lr must be positive"),
    ("    raise FileNotFoundError('/no/such/model: not found')", 2, "entry.py: error: /no/such/model: not found"),
    ("    p = argparse.ArgumentParser(prog='entry.py'); p.add_argument('--lr', type=float); p.parse_args(['--lr', 'x'])",
     2, "entry.py: error: argument --lr: invalid float value: 'x'"),
    ("    print('error: data/x.jsonl:3: malformed JSON', file=sys.stderr); return 2", 2,
     "error: data/x.jsonl:3: malformed JSON"),
    ("    raise RuntimeError('boom')", 1, "entry.py: error: RuntimeError: boom (at "),
], ids=["system-exit", "bad-input", "argparse", "returned", "bug"])
def test_a_failing_entry_point_ends_with_its_cause_and_records_it(tmp_path, body, code, message):
    errors = tmp_path / "errors"
    torchrun_file = tmp_path / "error.json"
    result = entry(tmp_path, body, TODI_ERROR_DIR=str(errors), TORCHELASTIC_ERROR_FILE=str(torchrun_file), RANK="3")
    assert result.returncode == code
    assert last_line(result.stderr).startswith(message)
    recorded = json.loads((errors / "rank3.txt").read_text())
    assert recorded["rank"] == 3 and recorded["message"].startswith(message)
    assert json.loads(torchrun_file.read_text())["message"].startswith(message)  # torchrun's report shows it
    if code == 1:
        assert "Traceback (most recent call last)" in result.stderr  # a bug keeps its traceback


def test_a_successful_entry_point_records_nothing(tmp_path):
    result = entry(tmp_path, "    return 0", TODI_ERROR_DIR=str(tmp_path / "errors"))
    assert result.returncode == 0 and not (tmp_path / "errors").exists()


def test_the_launchers_print_the_earliest_cause_last(tmp_path):
    for rank, t, message in [(1, 20, "error: late"), (0, 10, "error: the cause"), (2, 30, "error: the cause")]:
        (tmp_path / f"rank{rank}.txt").write_text(json.dumps({"time_ns": t, "rank": rank, "message": message}))
    result = subprocess.run([sys.executable, str(FAILURES), str(tmp_path), "training", "1"], capture_output=True,
                            text=True, timeout=60)
    lines = result.stdout.splitlines()
    assert lines == ["error: training failed (exit code 1); the first cause, from rank 0; rank(s) 2 failed the "
                     "same way:", "error: the cause"]
    empty = subprocess.run([sys.executable, str(FAILURES), str(tmp_path / "none"), "training", "137"],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "failed (exit code 137) without recording a cause" in empty.stdout


# ------------------------------------------------------------------------ training, 2 CPU ranks


@pytest.fixture(scope="module")
def tiny(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("failures")
    student, teacher = make_gpt2_pair(shared_dir, root / "models")
    data = make_dolly(shared_dir, root / "dolly", n_train=4, n_dev=2)
    bad = make_bad_dolly(shared_dir, root / "bad")
    return root, student, teacher, data, bad


def train(tiny, save_path: Path, **variables) -> tuple[subprocess.CompletedProcess, float]:
    root, student, teacher, data, _ = tiny
    env = {k: v for k, v in subprocess_env().items() if k not in ("KD_OBJ", "EXTRA_OPTS", "PLUGINS", "OBJ_ARGS")}
    env.update(GPUS="", NPROC="2", CKPT_PATH=str(student), TEACHER_MODEL_PATH=str(teacher), DATA_DIR=str(data),
               SAVE_PATH=str(save_path), EPOCH="1", BATCH_SIZE="2", GRAD_ACC="2", MAX_LENGTH="56",
               MAX_PROMPT_LENGTH="48", EVAL_BATCH_SIZE="2", EVAL_GEN_REPEAT="1", LOG_INTERVAL="1", DEV_NUM="2",
               OMP_NUM_THREADS="1")
    env.update(variables)
    return run(["bash", str(REPO / "scripts/gpt2/vanilla_kd_gpt2_base.sh")], env)


def assert_ends_with(result, elapsed, cause: str, save_path: Path) -> str:
    """A non-zero exit code, no rank left waiting, and the cause last: after everything torchrun and the
    ranks printed (the launcher runs once torchrun has exited), in the output and in train.log alike.
    Returns the launcher's summary line."""
    assert result.returncode != 0, result.stdout[-3000:]
    assert elapsed < LIMIT
    summary = assert_launcher_ends_with(result.stdout, "training (node 0)", result.returncode, cause)
    assert last_lines((save_path / "train.log").read_text(), 2) == last_lines(result.stdout, 2)
    return summary


@pytest.mark.slow
def test_training_on_a_malformed_data_line(tiny, tmp_path):
    bad = tiny[4]
    result, elapsed = train(tiny, tmp_path / "run", DATA_DIR=str(bad))
    assert_ends_with(result, elapsed, f"{bad / 'train.jsonl'}:3: malformed JSON", tmp_path / "run")
    assert "distillation.py: error:" in last_line(result.stdout)


@pytest.mark.slow
def test_training_with_a_missing_model(tiny, tmp_path):
    missing = tmp_path / "no-such-student"
    result, elapsed = train(tiny, tmp_path / "run", CKPT_PATH=str(missing))
    assert_ends_with(result, elapsed, str(missing), tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("variables,cause", [
    ({"KD_OBJ": "no_such_objective"}, "--kd-objective: unknown divergence 'no_such_objective'"),
    ({"EXTRA_OPTS": "--lr fast"}, "argument --lr: invalid float value: 'fast'"),
], ids=["kd-objective", "lr"])
def test_training_with_a_bad_flag_value(tiny, tmp_path, variables, cause):
    result, elapsed = train(tiny, tmp_path / "run", **variables)
    assert_ends_with(result, elapsed, cause, tmp_path / "run")


@pytest.mark.slow
def test_a_rank_failing_alone_does_not_leave_the_other_waiting(tiny, tmp_path):
    """Rank 1 fails at start-up while rank 0 goes on into the first collective: torchrun stops rank 0."""
    plugin = tmp_path / "rank_one_fails.py"
    plugin.write_text("import os\nif os.environ.get('RANK') == '1':\n"
                      "    raise ValueError('rank_one_fails.py: only rank 1 sees this bad setting')\n")
    result, elapsed = train(tiny, tmp_path / "run", PLUGINS=str(plugin))
    summary = assert_ends_with(result, elapsed, "only rank 1 sees this bad setting", tmp_path / "run")
    assert "from rank 1" in summary


# ------------------------------------------------------------------------------ evaluation, data


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_sets")
    (root / "dolly").mkdir()
    lines = [json.dumps({"prompt": "Say hi.", "output": ["hi"]}), '{"prompt": "x" "output": ["y"]}']
    (root / "dolly/valid.jsonl").write_text("\n".join(lines) + "\n")
    return root


def evaluate_env(**variables) -> dict:
    return subprocess_env(GPUS="", OMP_NUM_THREADS="1", SEEDS="10", **variables)


@pytest.mark.slow
@pytest.mark.parametrize("nproc", ["1", "2"])
def test_run_eval_on_a_malformed_set(tiny, eval_data, tmp_path, nproc):
    result, elapsed = run(["bash", str(REPO / "scripts/eval/run_eval.sh"), str(tiny[1]), "2"],
                          evaluate_env(NPROC=nproc, EVAL_DATA_DIR=str(eval_data), EVAL_SETS="dolly",
                                       EVAL_OUT=str(tmp_path / "eval")))
    assert result.returncode != 0 and elapsed < LIMIT
    cause = f"error: {eval_data / 'dolly/valid.jsonl'}:2: malformed JSON"
    if nproc == "2":  # torchrun, then the launcher's summary and the earliest cause
        assert_launcher_ends_with(result.stdout, "evaluation of dolly", result.returncode, cause)
    else:  # one rank: python directly, its own error line is the last one
        assert result.returncode == 2 and "the first cause" not in result.stdout
        assert cause in last_line(result.stdout), result.stdout


def test_run_eval_without_any_set_file(tiny_gpt2, tmp_path):
    result, elapsed = run(["bash", str(REPO / "scripts/eval/run_eval.sh"), str(tiny_gpt2)],
                          evaluate_env(EVAL_DATA_DIR=str(tmp_path), EVAL_SETS="dolly", EVAL_OUT=str(tmp_path / "e")))
    assert result.returncode == 2
    assert last_line(result.stdout) == f"error: none of the sets (dolly) has data under {tmp_path}"


@pytest.mark.slow
def test_evaluate_with_a_missing_set_file(tiny_gpt2, tmp_path):
    missing = tmp_path / "no-such-set"
    result, elapsed = run([sys.executable, str(REPO / "code/evaluate.py"), "--model-path", str(tiny_gpt2),
                           "--data-dir", str(missing), "--save-dir", str(tmp_path / "out")], evaluate_env())
    assert result.returncode == 2 and elapsed < LIMIT
    assert last_line(result.stdout) == (f"error: {missing / 'valid.jsonl'}: no such file (set 'no-such-set'; "
                                        "not one of the papers' sets dolly, self-inst, vicuna, sinst/11_, uinst/11_: "
                                        "a folder of your own needs valid.jsonl)")


@pytest.mark.slow
def test_prepare_data_with_a_bad_raw_file(shared_dir, tmp_path):
    raw = tmp_path / "raw/vicuna"
    raw.mkdir(parents=True)
    (raw / "question.jsonl").write_text('{"question_id": 1, "text": "q", "category": "c"}\n')
    (raw / "answer_gpt35.jsonl").write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, oops}\n')
    result, elapsed = run([sys.executable, str(REPO / "code/prepare_data.py"), "vicuna", "--output-dir",
                           str(tmp_path / "out"), "--raw-dir", str(tmp_path / "raw"), "--tokenizer",
                           str(shared_dir / "model_hub/gpt2/gpt2-base")], subprocess_env())
    assert result.returncode == 2 and elapsed < LIMIT
    line = last_line(result.stdout)
    assert line.startswith(f"error: {raw / 'answer_gpt35.jsonl'}:2") and "JSON" in line, result.stdout


def test_failures_module_needs_only_the_standard_library(tmp_path):
    """The launchers run it as a script with python3, before (and without) the package's dependencies."""
    code = (f"import sys; sys.path.insert(0, {str(FAILURES.parent)!r}); import failures; "
            "print(sorted(m for m in ('torch', 'todi', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.stdout.strip() == "[]", result.stderr
