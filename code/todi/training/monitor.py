"""Live training metrics through DeepSpeed's own monitor: TensorBoard, CSV files, Weights & Biases.

:class:`TrainingMonitor` wraps :class:`deepspeed.monitor.monitor.MonitorMaster`, built from sections
shaped like a DeepSpeed config's ``tensorboard`` / ``csv_monitor`` / ``wandb`` entries. It is built
by the trainer rather than passed in the engine's config, so that (1) the engine does not add its own
per-step events (``Train/Samples/lr`` on a samples axis, one TensorBoard flush per step) and (2) the
DeepSpeed config recorded in args.json does not change with where metrics are reported.
MonitorMaster writes from global rank 0 only.

Layout: ``REPORT_DIR/tensorboard/JOB/events.out.tfevents.*`` and ``REPORT_DIR/csv/JOB/<split>_<name>.csv``
(JOB: the run directory's name, so runs sharing a REPORT_DIR show side by side). Every write is
flushed (DeepSpeed's TensorBoard monitor flushes each batch of events; its CSV monitor opens and
closes the file), so a crash loses nothing already written.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import numbers
import os
from pathlib import Path

__all__ = ["BACKENDS", "TrainingMonitor", "missing_package", "monitor_sections", "parse_backends"]

BACKENDS = ("tensorboard", "csv", "wandb")
_SECTION = {"tensorboard": "tensorboard", "csv": "csv_monitor", "wandb": "wandb"}  # --report-to -> config key
# backend -> (module DeepSpeed imports for it, what to install)
_REQUIRES = {"tensorboard": ("tensorboard", "pip install tensorboard (or pip install -e '.[monitor]')"),
             "wandb": ("wandb", "pip install wandb")}
_TB_EVENTS = "events.out.tfevents.*"
# record fields that are not curves: the axes, and per-interval counts whose rates are logged
_NOT_EVENTS = frozenset({"step", "epoch", "examples", "input_tokens", "elapsed"})


def parse_backends(value: str) -> list[str]:
    """argparse ``type`` of ``--report-to``: a comma list of :data:`BACKENDS` (``none``: no backend)."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS + ("none",)]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    return [n for n in names if n != "none"]


def missing_package(backend: str) -> str | None:
    """An install hint when ``backend`` needs a package that is not importable, else None.

    Checked without importing (wandb's import alone takes seconds)."""
    if backend not in _REQUIRES:
        return None
    module, hint = _REQUIRES[backend]
    return None if importlib.util.find_spec(module) is not None else hint


def monitor_sections(backends: list[str], report_dir: str | Path, job_name: str, wandb_project: str) -> dict:
    """DeepSpeed monitor config sections (``tensorboard``, ``csv_monitor``, ``wandb``) for ``backends``."""
    report_dir = Path(report_dir)
    sections = {}
    for backend in backends:
        if backend == "wandb":  # DeepSpeed's wandb section has no path: WANDB_DIR (see TrainingMonitor)
            sections["wandb"] = {"enabled": True, "project": wandb_project}
        else:
            sections[_SECTION[backend]] = {"enabled": True, "output_path": str(report_dir / backend),
                                           "job_name": job_name}
    return sections


def _job_dir(section: dict) -> Path:
    return Path(section["output_path"]) / section["job_name"]


def _wandb_environment(report_dir: Path, job_name: str) -> None:
    """Offline unless an API key (or an explicit WANDB_MODE) says otherwise; files under REPORT_DIR."""
    if "WANDB_API_KEY" not in os.environ:
        os.environ.setdefault("WANDB_MODE", "offline")  # `wandb sync REPORT_DIR/wandb/offline-run-*` later
    os.environ.setdefault("WANDB_DIR", str(report_dir))
    os.environ.setdefault("WANDB_NAME", job_name)
    report_dir.mkdir(parents=True, exist_ok=True)


class TrainingMonitor:
    """Scalars of the trainer's records as ``<split>/<name>`` events at the global step.

    ``fresh``: a new run (not a resume) removes this job's earlier TensorBoard and CSV files, like
    metrics.jsonl is cleared; a resumed run appends to them.
    """

    def __init__(self, sections: dict, *, report_dir: str | Path, job_name: str, is_main: bool, fresh: bool):
        from deepspeed.monitor.config import get_monitor_config
        from deepspeed.monitor.monitor import MonitorMaster

        self.sections = sections
        if is_main:
            self._prepare_files(fresh)
        if "wandb" in sections:
            _wandb_environment(Path(report_dir), job_name)
        self.master = MonitorMaster(get_monitor_config(sections))
        if is_main and "csv_monitor" in sections and self.master.csv_monitor is not None:
            # DeepSpeed writes a header when it first sees a file in this process: not again on resume
            self.master.csv_monitor.filenames.extend(p.stem for p in _job_dir(sections["csv_monitor"]).glob("*.csv"))
        self._closed = not self.master.enabled
        if not self._closed:
            atexit.register(self.close)  # runs that stop early (--stop-after-iters, errors) still close

    @property
    def enabled(self) -> bool:
        return self.master.enabled

    def _prepare_files(self, fresh: bool) -> None:
        for key, pattern in (("tensorboard", _TB_EVENTS), ("csv_monitor", "*.csv")):
            if key in self.sections and fresh:
                for old in _job_dir(self.sections[key]).glob(pattern):
                    old.unlink()

    def write(self, split: str, record: dict, step: int) -> None:
        """Every numeric field of ``record`` (but :data:`_NOT_EVENTS`) as ``split/name`` at ``step``."""
        if self._closed:
            return
        events = [(f"{split}/{name}", float(value), step) for name, value in record.items()
                  if name not in _NOT_EVENTS and isinstance(value, numbers.Real) and not isinstance(value, bool)]
        if events:
            self.master.write_events(events)

    def close(self) -> None:
        """Flush and close the TensorBoard writer and finish the W&B run (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        tb = self.master.tb_monitor
        if tb is not None and tb.summary_writer is not None:
            tb.summary_writer.close()
        if self.master.wandb_monitor is not None:
            import wandb

            wandb.finish()
