"""Quiet by default: through the real KD script on 2 CPU ranks, ``train.log`` has one line per event (no
progress bar, no carriage return, none of the libraries' per-process notices), a failure's cause is
printed once, as the last line, and ``VERBOSE=1`` brings the libraries' output back. The launcher's
tee (``code/todi/util/log.py`` run as a script) and the ranks' quiet failures are checked directly too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _training import REPO, make_bad_dolly, make_dolly, make_gpt2_pair, subprocess_env

TEE = REPO / "code/todi/util/log.py"
LIMIT = 300  # seconds for one script run
# what the ranks and libraries print per process, and what a progress bar leaves
NOISE = ("Setting accelerator", "FutureWarning", "Loading weights", "Writing model shards", "built successfully",
         "OMP_NUM_THREADS", "it/s]", "step/s]", "%|")
RECORD = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")  # todi.util.log's lines


# ----------------------------------------------------------------------- the tee and the ranks, directly


def tee(tmp_path: Path, output: str, *flags: str) -> tuple[str, str]:
    """``output`` through the launcher's tee: (what the terminal gets, here no terminal; the log)."""
    log = tmp_path / f"run{len(list(tmp_path.iterdir()))}.log"
    result = subprocess.run([sys.executable, str(TEE), str(log), *flags], input=output.encode(), capture_output=True,
                            timeout=60)  # bytes: carriage returns as they are
    assert result.returncode == 0, result.stderr
    return result.stdout.decode(), log.read_text()


TORCHRUN_FAILURE = (
    "W1206 22:13:07.349000 19320 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending "
    "process 19363 closing signal SIGTERM\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/bin/torchrun", line 8, in <module>\n'
    "    sys.exit(main())\n"
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    "====\n  traceback : distillation.py: error: the cause\n====\n"
)


def test_the_log_gets_what_a_terminal_shows_without_progress_bars(tmp_path):
    output = ("start\n\rbar 0%|\rbar 50%|\r        \r[record] one\n\rbar 50%|\rbar 100%|\n"
              "Traceback (most recent call last):\n  File \"/x/train.py\", line 3\nValueError: a rank's own\n")
    terminal, log = tee(tmp_path, output)
    assert log.splitlines() == ["start", "[record] one", "Traceback (most recent call last):",
                                '  File "/x/train.py", line 3', "ValueError: a rank's own"]
    assert tee(tmp_path, output, "--quiet")[0] == log  # quiet, not a terminal: the log's lines
    assert terminal == output  # VERBOSE=1: all of it


def test_quiet_keeps_torchrun_report_in_the_log_only(tmp_path):
    terminal, log = tee(tmp_path, "[record] one\n" + TORCHRUN_FAILURE, "--quiet")
    assert terminal == "[record] one\n"
    assert "ChildFailedError" in log and "the cause" in log and "Sending process" in log
    other = "Traceback (most recent call last):\n  File \"/usr/bin/torchrun\", line 8\n    main()\nDistNetworkError: port in use\n"
    assert tee(tmp_path, other, "--quiet")[0] == "DistNetworkError: port in use\n"  # torchrun's own error stays
    assert tee(tmp_path, TORCHRUN_FAILURE)[0] == TORCHRUN_FAILURE  # VERBOSE=1


def test_a_quiet_rank_records_an_argparse_error_without_printing_it(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text("import argparse, sys\nfrom todi.util.failures import run_entry_point\n"
                      "def main():\n    p = argparse.ArgumentParser(prog='entry.py'); p.add_argument('--lr', type=float)\n"
                      "    p.parse_args(['--lr', 'x'])\n"
                      "sys.exit(run_entry_point(main, prog='entry.py'))\n")
    errors = tmp_path / "errors"
    quiet = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                           env=subprocess_env(TODI_ERROR_DIR=str(errors), RANK="1", TODI_CAUSE_BY_LAUNCHER="1"))
    assert quiet.returncode == 2 and quiet.stderr == ""
    assert "argument --lr: invalid float value: 'x'" in json.loads((errors / "rank1.txt").read_text())["message"]
    unrecorded = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                                env=subprocess_env(TODI_CAUSE_BY_LAUNCHER="1"))  # nowhere to record: printed
    assert unrecorded.returncode == 2 and "usage: entry.py" in unrecorded.stderr and "invalid float" in unrecorded.stderr


# ------------------------------------------------------------------------ through the script, 2 CPU ranks


@pytest.fixture(scope="module")
def tiny(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    student, teacher = make_gpt2_pair(shared_dir, root / "models")
    data = make_dolly(shared_dir, root / "dolly", n_train=16, n_dev=2)
    bad = make_bad_dolly(shared_dir, root / "bad")
    return student, teacher, data, bad


def train(tiny, save_path: Path, **variables) -> subprocess.CompletedProcess:
    """The KD script, its output captured (no terminal: no progress bar anywhere)."""
    student, teacher, data, _ = tiny
    dropped = ("KD_OBJ", "EXTRA_OPTS", "PLUGINS", "OBJ_ARGS", "VERBOSE", "OMP_NUM_THREADS", "TODI_QUIET")
    env = {k: v for k, v in subprocess_env().items() if k not in dropped}
    env.update(GPUS="", NPROC="2", CKPT_PATH=str(student), TEACHER_MODEL_PATH=str(teacher), DATA_DIR=str(data),
               SAVE_PATH=str(save_path), EPOCH="1", BATCH_SIZE="2", GRAD_ACC="2", MAX_LENGTH="56",
               MAX_PROMPT_LENGTH="48", EVAL_BATCH_SIZE="2", EVAL_GEN_REPEAT="1", LOG_INTERVAL="1", DEV_NUM="2")
    env.update(variables)
    return subprocess.run(["bash", str(REPO / "scripts/gpt2/vanilla_kd_gpt2_base.sh")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=LIMIT)


@pytest.mark.slow
def test_a_run_logs_one_line_per_event(tiny, tmp_path):
    result = train(tiny, tmp_path / "run")
    assert result.returncode == 0, result.stdout[-3000:]
    log = (tmp_path / "run/train.log").read_text()
    command, *events = log.splitlines()
    assert command.startswith("torchrun ") and "\r" not in log
    assert [line for line in events if not RECORD.match(line)] == []
    assert [n for n in NOISE if n in log or n in result.stdout] == []
    assert log.count("train | ") == 2 and "done: 2 steps" in events[-1]
    assert result.stdout.splitlines()[1:] == events  # the terminal: the same, the command in short


@pytest.mark.slow
def test_verbose_shows_the_libraries_output(tiny, tmp_path):
    result = train(tiny, tmp_path / "run", VERBOSE="1")
    assert result.returncode == 0, result.stdout[-3000:]
    for notice in ("Setting accelerator to CPU", "FutureWarning", "Loading weights", "torchrun --nproc_per_node 2"):
        assert notice in result.stdout, notice
    assert "\r" not in (tmp_path / "run/train.log").read_text()  # bars never reach the log


@pytest.mark.slow
def test_a_failure_prints_its_cause_once_and_last(tiny, tmp_path):
    bad = tiny[3]
    result = train(tiny, tmp_path / "run", DATA_DIR=str(bad))
    cause = f"{bad / 'train.jsonl'}:3: malformed JSON"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode != 0 and cause in lines[-1], result.stdout[-3000:]
    assert result.stdout.count(cause) == 1 and "Traceback" not in result.stdout, result.stdout[-3000:]
    assert lines[-2].startswith("error: training (node 0) failed (exit code ")
    log = [line for line in (tmp_path / "run/train.log").read_text().splitlines() if line.strip()]
    assert log[-2:] == lines[-2:] and "ChildFailedError" in "\n".join(log)  # torchrun's report: in the log
