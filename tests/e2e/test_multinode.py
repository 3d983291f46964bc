"""Two nodes: two torchrun invocations (``--nnodes 2 --node_rank 0/1 --nproc_per_node 1``, rendezvous on
127.0.0.1) through the paper's KD script, on CPU (gloo).

Both "nodes" run on this machine and share its file system, as the nodes of a cluster share their
storage: one SAVE_PATH, written by global rank 0 only. A plug-in audit hook logs every rank's
Python-level writes (open for writing, rename, mkdir, removal; torch.save and safetensors write from
C and are not seen: for those, the run directory must hold exactly the files of a one-node run, where
DeepSpeed's per-rank shards carry the rank in their names). The run is stopped after step 3,
restarted by the same pair of commands, and must give the same per-step losses, gradient norms and
dev results, bit for bit, as one node with two ranks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from _training import REPO, read_metrics, subprocess_env
from todi.training.resume import PAUSED_EXIT_CODE
from test_trainer_dist import checkpoints, run_script
from test_trainer_dist import setup  # noqa: F401  (the module fixture: tiny models and data)

pytestmark = pytest.mark.slow

# Imported by every rank (a plug-in): logs each Python-level write under TODI_WATCH_DIR (open for
# writing, rename/replace, mkdir, removal) to TODI_WRITES_DIR/writes-rank<RANK>.txt.
AUDIT = '''
import os
import sys

_root = os.path.abspath(os.environ["TODI_WATCH_DIR"])
_log = open(os.path.join(os.environ["TODI_WRITES_DIR"], "writes-rank%s.txt" % os.environ.get("RANK", "x")), "a",
            buffering=1)
_busy = [False]
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _hook(event, args):
    if _busy[0]:
        return
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & _WRITE)
        target = path if writes else None
    elif event == "os.rename":
        target = args[1]
    elif event in ("os.mkdir", "os.remove", "shutil.rmtree"):
        target = args[0]
    else:
        return
    if target is None or isinstance(target, int):
        return
    target = os.path.abspath(os.fsdecode(os.fspath(target)))
    if target.startswith(_root):
        _busy[0] = True
        try:
            _log.write("%s %s\\n" % (event, target))
        finally:
            _busy[0] = False


sys.addaudithook(_hook)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(save_path: Path, student, teacher, data, extra: str = "", timeout: int = 300,
                  node1: dict | None = None, check: bool = True, code: int = 0) -> list[subprocess.CompletedProcess]:
    """The same script on node 0 and node 1 at once (``node1``: other settings there); their results
    (with ``check``, each node's exit code is ``code``)."""
    port = str(free_port())
    procs, outputs = [], []
    try:
        for node_rank in (0, 1):
            env = {
                **subprocess_env(), "KD_OBJ": "ToDi", "GPUS": "", "NPROC": "1", "NNODES": "2",
                "NODE_RANK": str(node_rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                "CKPT_PATH": str(student), "TEACHER_MODEL_PATH": str(teacher), "DATA_DIR": str(data),
                "SAVE_PATH": str(save_path), "EPOCH": "2", "BATCH_SIZE": "2", "GRAD_ACC": "2", "MAX_LENGTH": "56",
                "MAX_PROMPT_LENGTH": "48", "EVAL_BATCH_SIZE": "4", "EVAL_GEN_REPEAT": "1", "LOG_INTERVAL": "1",
                "DEV_NUM": "2", "OMP_NUM_THREADS": "1", "EXTRA_OPTS": extra,
                **((node1 or {}) if node_rank == 1 else {}),
            }
            # its own process group: a node left behind (a failed test) is killed with all its children
            procs.append(subprocess.Popen(["bash", str(REPO / "scripts/gpt2/vanilla_kd_gpt2_base.sh")], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True))
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    results = [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outputs)]
    for node_rank, result in enumerate(results):
        assert not check or result.returncode == code, f"node {node_rank}:\n{result.stdout[-3000:]}"
    return results


def files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def test_two_nodes_write_one_run_and_resume_like_one_node(setup, tmp_path):  # noqa: F811
    root, student, teacher, data = setup
    writes = tmp_path / "writes"
    writes.mkdir()
    plugin = tmp_path / "audit_writes.py"
    plugin.write_text(AUDIT)
    os.environ["TODI_WATCH_DIR"], os.environ["TODI_WRITES_DIR"] = str(tmp_path), str(writes)
    try:
        one_node = tmp_path / "one_node"
        run_script(one_node, student, teacher, data, extra=f"--plugin {plugin}")  # 2 ranks on one node
        (writes / "writes-rank0.txt").rename(writes / "one-node-rank0.txt")
        (writes / "writes-rank1.txt").rename(writes / "one-node-rank1.txt")

        run = tmp_path / "two_nodes"
        first = run_two_nodes(run, student, teacher, data, extra=f"--plugin {plugin} --stop-after-iters 3",
                              code=PAUSED_EXIT_CODE)  # paused: both nodes exit 3
        assert "stopping after 3 steps" in first[0].stdout
        assert "2 process(es) on cpu" in first[0].stdout
        assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
        second = run_two_nodes(run, student, teacher, data, extra=f"--plugin {plugin}")
        assert "resumed at epoch 2, step 1" in second[0].stdout
    finally:
        del os.environ["TODI_WATCH_DIR"], os.environ["TODI_WRITES_DIR"]

    # the same steps as one node with two ranks
    reference, resumed = read_metrics(one_node), read_metrics(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]  # bit for bit
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in reference]
    assert read_metrics(run, "dev") == read_metrics(one_node, "dev")

    # one set of outputs: the same files as the one-node run (one best checkpoint, one resume state),
    # no leftover of a partial write; each node has its own log
    (best,) = checkpoints(run)
    assert best.name == checkpoints(one_node)[0].name
    logs = {"train.log", "train-node1.log"}
    assert files(run) - logs == files(one_node) - {"train.log"}
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp-")]
    assert (run / "train-node1.log").is_file() and "train | " not in (run / "train-node1.log").read_text()
    assert (run / "train.log").read_text().count("stopping after 3 steps") == 1

    # global rank 0 wrote the run; rank 1 (local rank 0 of node 1) only made sure the shared temporary
    # directory of a resume state exists (DeepSpeed, every rank, exist_ok) to put its own shards in
    rank0 = (writes / "writes-rank0.txt").read_text().splitlines()
    rank1 = (writes / "writes-rank1.txt").read_text().splitlines()
    assert any(str(best.name) in line for line in rank0) and any("metrics.jsonl" in line for line in rank0)
    shared_mkdir = re.compile(rf"os\.mkdir {re.escape(str(run))}/resume/\.tmp-step\d+$")
    assert [line for line in rank1 if not shared_mkdir.match(line)] == []


def test_a_failure_on_one_node_stops_the_other_with_its_cause(setup, tmp_path):  # noqa: F811
    """Node 1 cannot read its data (its own storage, here another path): it fails; node 0, already in the
    first collectives, would wait for the process-group timeout (an hour) but stops within seconds,
    and both launchers end with node 1's cause (each copies it, so no shared storage is needed)."""
    root, student, teacher, data = setup
    missing = tmp_path / "not-mounted-on-node-1"
    start = time.monotonic()
    results = run_two_nodes(tmp_path / "run", student, teacher, data, timeout=120, check=False,
                            node1={"DATA_DIR": str(missing), "SAVE_PATH": str(tmp_path / "run-node1")})
    assert time.monotonic() - start < 120
    cause = f"distillation.py: error: {missing / 'train.jsonl'}: no such file"
    for node_rank, result in enumerate(results):
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert result.returncode != 0 and lines[-1] == cause, f"node {node_rank}:\n{result.stdout[-3000:]}"
        assert "the first cause, from rank 1" in lines[-2]
    assert "[rank 0] stopping: rank 1 failed" in results[0].stdout
