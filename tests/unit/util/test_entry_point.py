"""run_entry_point: a non-zero code a command declares an outcome (training's "paused") is not a failure."""

from __future__ import annotations

import subprocess
import sys

from _training import REPO

SCRIPT = """
import sys
sys.path.insert(0, {code!r})
from todi.util.failures import run_entry_point
sys.exit(run_entry_point(lambda: 3, prog="entry.py", outcomes={outcomes}))
"""


def run(tmp_path, outcomes: tuple[int, ...]) -> subprocess.CompletedProcess:
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT.format(code=str(REPO / "code"), outcomes=outcomes))
    env = {"PATH": "/usr/bin:/bin", "TODI_ERROR_DIR": str(tmp_path / "errors"), "RANK": "0"}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)


def test_an_outcome_code_is_returned_without_recording_a_failure(tmp_path):
    result = run(tmp_path, (3,))
    assert result.returncode == 3 and result.stderr == ""
    assert not (tmp_path / "errors").exists()


def test_the_same_code_undeclared_is_a_recorded_failure(tmp_path):
    result = run(tmp_path, ())
    assert result.returncode == 3
    assert "entry.py: error: exit code 3" in (tmp_path / "errors" / "rank0.txt").read_text()
