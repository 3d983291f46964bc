"""process_group: a command's group is destroyed when it ends normally (gloo's worker threads left
alive at interpreter exit can abort a finished run with "terminate called without an active
exception"), a caller's group stays, and a failed multi-rank command leaves without a teardown."""

from __future__ import annotations

import subprocess
import sys

from _training import REPO, subprocess_env

SCRIPT = """
import sys
import torch.distributed as dist
from todi.util.distributed import process_group

mode = sys.argv[1]
if mode == "caller":
    with process_group():
        with process_group() as env:  # nested: the inner block did not create the group
            pass
        print("inner-kept", dist.is_initialized())
elif mode == "failed":
    try:
        with process_group():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
with process_group() as env:
    print("inside", dist.is_initialized(), env.world_size)
print("after", dist.is_initialized())
"""


def run(mode: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=subprocess_env(PYTHONPATH=str(REPO / "code")),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("\n")


def test_a_created_group_is_destroyed_at_the_end():
    lines = run("plain")
    assert "inside True 1" in lines and "after False" in lines


def test_a_callers_group_is_kept_and_a_failed_single_rank_block_tears_down():
    lines = run("caller")
    assert "inner-kept True" in lines and "after False" in lines
    lines = run("failed")  # one rank: nothing to wait for, so the group ends even on failure
    assert "inside True 1" in lines and "after False" in lines
