"""Pairwise LLM-as-a-judge comparison of two evaluated checkpoints: ``python code/judge.py --help``.

The command is :func:`todi.judge.cli.main` (it never imports torch). A failure on bad input ends
with one ``error:`` line and exit code 2; an interruption with exit code 130, the verdicts kept.
"""

import sys

from todi.judge.cli import main
from todi.util.failures import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main, prog="judge.py"))
