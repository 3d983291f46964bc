"""SFT and knowledge distillation on DeepSpeed: ``torchrun ... code/distillation.py --help``.

The command is :func:`todi.training.cli.main`. A failure on bad input or settings ends with one
``distillation.py: error: <cause>`` line and exit code 2 (recorded for torchrun's report and the
launcher: :mod:`todi.util.failures`).
"""

import sys

from todi.training.cli import main
from todi.training.resume import PAUSED_EXIT_CODE
from todi.util.failures import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main, prog="distillation.py", outcomes=(PAUSED_EXIT_CODE,)))
