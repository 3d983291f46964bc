"""Logging: human-readable lines on the main process (through tqdm, so progress bars stay intact)
and machine-readable records in ``metrics.jsonl``."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

__all__ = ["MetricsLog", "setup_logging", "format_record"]

logger = logging.getLogger("todi")


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except (OSError, ValueError):
            self.handleError(record)


def setup_logging(rank: int) -> logging.Logger:
    """INFO on the main process, WARNING elsewhere (every rank's errors still reach the terminal)."""
    handler = _TqdmHandler()
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(f"[%(asctime)s] {prefix}%(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    return logger


def _clean(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return value


def format_record(record: dict) -> str:
    parts = []
    for key, value in record.items():
        if isinstance(value, float):
            text = f"{value:.3e}" if key == "lr" else f"{value:.4f}" if abs(value) < 1e4 else f"{value:.1f}"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " | ".join(parts)


class MetricsLog:
    """Appends one JSON object per line (main process only); a resumed run appends to the same file."""

    def __init__(self, path: str | Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def clear(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
