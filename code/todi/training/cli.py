"""``code/distillation.py``: SFT and knowledge distillation on DeepSpeed, from the command line."""

from __future__ import annotations

import os

from todi.data.instructions import DataError
from todi.training.args import parse_args
from todi.training.resume import PAUSED_EXIT_CODE
from todi.training.trainer import Trainer
from todi.util.distributed import process_group
from todi.util.log import logger, setup_logging

__all__ = ["exit_code", "main", "train"]

TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker


def train(argv: list[str] | None = None) -> bool:
    """Parse the flags, build the trainer and train; True when paused by ``--stop-after-iters``.
    A bad input or setting ends as ``SystemExit("distillation.py: error: ...")``."""
    args = parse_args(argv)
    with process_group() as env:
        setup_logging(env.rank)
        logger.info(f"{env.world_size} process(es) on {env.device.type}; run directory {args.save_dir}")
        try:
            trainer = Trainer(args, env)
        except (DataError, FileNotFoundError, ValueError) as e:  # bad input: a message, not a traceback
            raise SystemExit(f"distillation.py: error: {e}") from None
        return trainer.train()


def exit_code(paused: bool) -> int:
    """0 when done; :data:`PAUSED_EXIT_CODE` when paused, except under torchrun, which reports any
    non-zero worker exit as a failure: there every rank exits 0 and the launcher reads the run
    directory's ``PAUSED`` marker."""
    return PAUSED_EXIT_CODE if paused and TORCHRUN_VARIABLE not in os.environ else 0


def main(argv: list[str] | None = None) -> int:
    """``code/distillation.py``: :func:`train`, then its :func:`exit_code`."""
    return exit_code(train(argv))
