"""The papers' results table, or training curves: ``python code/report.py --help``.

The command is :func:`todi.evaluation.report_cli.main`. A failure on bad input ends with one
``error:`` line and exit code 2.
"""

import sys

from todi.evaluation.report_cli import main
from todi.util.failures import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main, prog="report.py"))
