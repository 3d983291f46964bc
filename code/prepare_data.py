"""Prepare the instruction data sets (MiniLLM's processing): ``python code/prepare_data.py --help``.

The command is :func:`todi.data.cli.main`. A failure on bad input ends with one ``error:`` line and
exit code 2.
"""

import sys

from todi.data.cli import main
from todi.util.failures import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main, prog="prepare_data.py"))
