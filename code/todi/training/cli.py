"""``code/distillation.py``: SFT and knowledge distillation on DeepSpeed, from the command line."""

from __future__ import annotations

import os

from todi.training import trainer
from todi.training.resume import PAUSED_EXIT_CODE

__all__ = ["main"]

TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker


def main(argv: list[str] | None = None) -> int:
    """Parse the flags (:func:`todi.training.args.parse_args`), build the trainer and train; the exit code.

    0 when done; :data:`PAUSED_EXIT_CODE` when paused by ``--stop-after-iters``, except under torchrun,
    which reports any non-zero worker exit as a failure: there every rank exits 0 and the launcher
    reads the run directory's ``PAUSED`` marker. A bad input or setting ends as
    ``SystemExit("distillation.py: error: ...")``.
    """
    # the body (parse, build, train) is trainer.main for now; it belongs here once trainer.py moves it
    paused = trainer.main(argv)
    return PAUSED_EXIT_CODE if paused and TORCHRUN_VARIABLE not in os.environ else 0
