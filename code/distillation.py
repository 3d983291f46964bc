"""SFT and knowledge distillation on DeepSpeed: ``torchrun ... code/distillation.py --help``.

A failure on bad input or settings ends with one ``distillation.py: error: <cause>`` line and exit
code 2 (recorded for torchrun's report and the launcher: :mod:`todi.util.failures`).
"""

import sys

from todi.util.failures import run_entry_point
from todi.training.trainer import main

if __name__ == "__main__":
    sys.exit(run_entry_point(main, prog="distillation.py"))
