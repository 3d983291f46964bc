"""Evaluate a checkpoint by sampled generation and ROUGE-L: ``torchrun ... code/evaluate.py --help``.

The command is :func:`todi.evaluation.cli.main`. A failure on bad input ends with one ``error:``
line and exit code 2 (recorded for torchrun's report and the launchers: :mod:`todi.util.failures`).
"""

import sys

from todi.evaluation.cli import main
from todi.util.failures import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main, prog="evaluate.py"))
