"""A run's directory: leftovers of interrupted saves, whether to resume, ``args.json``, and the
resumable state (engine, trainer counters, RNG, and what the trainer adds) written and read back.

A run resumes when its directory holds a resumable state and the settings that define what it
computes (:func:`todi.training.args.run_identity`, plus the process count, precision and ZeRO stage) are
those the state was written with; otherwise it is a different run and an error says what differs
and asks for a fresh folder.

A run stopped by ``--stop-after-iters`` leaves ``PAUSED`` in its directory (one line: where it stopped,
how to continue), removed when a run starts there: launchers tell "paused" from "done" by it, and
``code/distillation.py`` exits with :data:`PAUSED_EXIT_CODE` (under torchrun every rank exits 0, since
torchrun reports any other code as a failure, and ``scripts/torchrun_launch.sh`` turns the marker into
that code).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from todi.training import checkpoint as ckpt
from todi.training.args import run_identity
from todi.util.distributed import DistEnv, barrier
from todi.util.log import logger

__all__ = ["PAUSED_EXIT_CODE", "PAUSED_MARKER", "RunDirectory"]

PAUSED_MARKER = "PAUSED"  # in the run directory while the run is paused by --stop-after-iters
PAUSED_EXIT_CODE = 3  # the exit code of a paused run (scripts/torchrun_launch.sh has the same)


class RunDirectory:
    """``--save-dir``: created, cleaned of interrupted saves, and checked for a state to resume.

    ``run_info``: settings that do not come from the flags but define the run (world size,
    precision, ZeRO stage). After construction ``resume_tag`` is the state to resume or None.
    """

    def __init__(self, args: argparse.Namespace, env: DistEnv, run_info: dict):
        self.args, self.env = args, env
        self.path = Path(args.save_dir)
        self.resume_root = self.path / "resume"
        if env.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in ckpt.remove_stale_temporaries(self.path) + ckpt.remove_stale_temporaries(self.resume_root):
                logger.info(f"removed the leftover of an interrupted save: {stale}")
            (self.path / PAUSED_MARKER).unlink(missing_ok=True)  # running again: no longer paused
        barrier()
        self.identity = {**run_identity(args), **run_info}
        self.resume_tag = self._decide()

    def _decide(self) -> str | None:
        args = self.args
        tag = ckpt.resume_tag(self.resume_root)
        if args.no_resume and tag is not None:
            barrier()  # every process has read the pointer before it goes
            if self.env.is_main:
                shutil.rmtree(self.resume_root)
                logger.info(f"--no-resume: removed the resumable state in {self.resume_root}")
            tag = None
        if args.resume and tag is None:
            raise SystemExit(f"--resume: no resumable state in {self.resume_root}")
        if tag is None:
            return None
        saved_path = self.path / "args.json"
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
        differ = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in self.identity.items() if saved.get(k) != v]
        if differ:  # --no-resume here would delete the other run's state: a fresh folder instead
            raise SystemExit(f"{self.path} holds the state of a different run ({'; '.join(differ)}); "
                             "give this run a folder of its own: another SAVE_PATH (--save-dir), "
                             f"or delete {self.path} to start over there")
        logger.info(f"resuming from {self.resume_root / tag}")
        return tag

    def write_args(self, extra: dict) -> None:
        """``args.json``: every flag, the run info and ``extra`` (e.g. the filled DeepSpeed config)."""
        if self.env.is_main:
            record = {**vars(self.args), **self.identity, **extra}
            ckpt.atomic_write_text(self.path / "args.json", json.dumps(record, indent=1, default=str))

    def mark_paused(self, message: str) -> None:
        """Write ``PAUSED`` (``message``, one line) from the main process; every process returns after it
        exists, so no launcher (one per node) looks for it too early."""
        if self.env.is_main:
            ckpt.atomic_write_text(self.path / PAUSED_MARKER, message + "\n")
        barrier()

    def save(self, engine, state: ckpt.TrainerState, extra: dict) -> None:
        ckpt.save_resume_state(engine, self.resume_root, state, rank=self.env.rank, extra=extra)  # routine: no line

    def load(self, engine) -> tuple[ckpt.TrainerState, dict]:
        """The saved trainer state and its extras (``rng`` and what :meth:`save` was given)."""
        state, extra = ckpt.load_resume_state(engine, self.resume_root, self.resume_tag, rank=self.env.rank)
        logger.info(f"resumed at epoch {state.epoch + 1}, step {state.step_in_epoch} of that epoch "
                    f"(global step {state.global_step})")
        return state, extra

    @property
    def where(self) -> Path:
        return self.resume_root / (self.resume_tag or "")
