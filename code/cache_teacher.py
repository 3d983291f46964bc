"""One pass of the teacher over a training split into a teacher cache: ``torchrun ... code/cache_teacher.py --help``.

The command is :func:`todi.cache.cli.main`. A failure on bad input ends with one
``cache_teacher.py: error: <cause>`` line and exit code 2.
"""

import sys

from todi.cache.cli import main
from todi.util.failures import run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main, prog="cache_teacher.py"))
