"""Logging: human-readable lines on the main process (through tqdm, so progress bars stay intact),
machine-readable records in ``metrics.jsonl``, and the launchers' copy of a run's output into its log.

Quiet by default: ``scripts/torchrun_launch.sh`` sets ``TODI_QUIET=1`` unless ``VERBOSE=1`` (the
libraries' per-process output stays off) and ``TODI_PROGRESS`` to the path of the terminal that is its
output (progress bars are drawn there directly, never into the pipe that feeds the log; torchrun's
workers have no terminal of their own), ``off`` when the output is no terminal. Run as a script, this
file is that pipe's tee: ``python3 log.py LOG_FILE [--quiet]`` (standard library only).
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import re
import signal
import sys
from pathlib import Path

__all__ = ["MetricsLog", "PROGRESS_VARIABLE", "QUIET_VARIABLE", "format_record", "progress_bar", "quiet",
           "setup_logging"]

logger = logging.getLogger("todi")

QUIET_VARIABLE = "TODI_QUIET"        # "1": keep the libraries' per-process output off
PROGRESS_VARIABLE = "TODI_PROGRESS"  # a terminal's path: bars there; "off": none; unset: stderr
NO_PROGRESS = "off"
BAR_REFRESH_SECONDS = {True: 1, False: 30}  # on a terminal / into a file or pipe

_terminal: list = []  # the opened terminal ([None] when there is none), opened once per process


def quiet() -> bool:
    """True under the launcher unless ``VERBOSE=1``."""
    return os.environ.get(QUIET_VARIABLE) == "1"


def _progress_stream():
    """Where progress bars go: the terminal under a launcher whose output is one, nowhere under a
    launcher whose output is not (the log records already show progress), stderr without a launcher."""
    where = os.environ.get(PROGRESS_VARIABLE)
    if where is None:
        return sys.stderr
    if where == NO_PROGRESS:
        return None
    if not _terminal:
        try:
            _terminal.append(open(where, "w", encoding="utf-8"))  # noqa: SIM115 (kept for the process)
        except OSError:  # the terminal is gone (the session closed): no bar
            _terminal.append(None)
    return _terminal[0]


def progress_bar(*, disable: bool = False, **kwargs):
    """A tqdm bar (``kwargs``: tqdm's) on :func:`_progress_stream`, disabled when there is none."""
    from tqdm import tqdm

    stream = None if disable else _progress_stream()
    return tqdm(file=stream, disable=stream is None, dynamic_ncols=True,
                mininterval=BAR_REFRESH_SECONDS[bool(stream and stream.isatty())], **kwargs)


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


# ------------------------------------------------------------------ the launchers' tee (a script)

# torchrun's own output: its agent's log records, and on a failure its traceback ending in its report
_TORCHRUN_RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S*torch/distributed/\S+:\d+\] ")
_TORCHRUN_FRAME = re.compile(r'  File "[^"]*(/torchrun|torch/distributed/run\.py)", line \d+')
_TRACEBACK = "Traceback (most recent call last):"
_TORCHRUN_REPORT = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
_ERASE_LINE = "\r\x1b[K"  # before a line on a terminal: wipes a bar drawn there directly (progress_bar)
_READ_BYTES = 1 << 16


def _shown_text(line: str) -> str | None:
    """What a terminal ends up showing of one output line (its part after the last carriage return),
    or None for a progress bar's final drawing (redrawn in place, not cleared)."""
    segments = line.split("\r")
    if len(segments) > 2 and segments[-2].strip():
        return None
    return segments[-1].rstrip()


class _TorchrunFilter:
    """Quiet mode: which lines torchrun itself prints (kept from the terminal, not from the log). Its
    failure report repeats the ranks' causes, which the launcher prints last; any other error of
    torchrun's (a port in use) is shown without the traceback."""

    def __init__(self):
        self.held = None         # a traceback's first line, until its first frame says whose it is
        self.in_frames = False   # inside torchrun's traceback
        self.in_report = False   # past its ChildFailedError: the rest is the report

    def passes(self, text: str) -> tuple[list[str], bool]:
        """For ``text``, one output line: the held lines to show first, and whether to show it."""
        held, self.held = self.held, None
        if self.in_report:
            return [], False
        if held is not None:
            if _TORCHRUN_FRAME.match(text):
                self.in_frames = True
                return [], False
            return [held], self._shown(text)
        return [], self._shown(text)

    def _shown(self, text: str) -> bool:
        """Whether to show ``text`` (after a held line, if any, has been decided)."""
        if text == _TRACEBACK:
            self.held = text
            return False
        if self.in_frames:
            if text.startswith(" "):
                return False
            self.in_frames = False
            self.in_report = text.startswith(_TORCHRUN_REPORT)
            return not self.in_report
        return not _TORCHRUN_RECORD.match(text)

    def close(self) -> list[str]:
        held, self.held = self.held, None
        return [held] if held is not None else []


class _Tee:
    """A run's output, line by line, into the log as a terminal ends up showing it (blank lines and
    progress bars left out); onto the terminal as it comes when that is one or not ``quiet`` (bars drawn
    in place), else the log's lines; ``quiet``: without torchrun's own output (:class:`_TorchrunFilter`)."""

    def __init__(self, log, terminal, quiet: bool):
        self.log, self.terminal = log, terminal
        self.erase = _ERASE_LINE if terminal.isatty() else ""
        self.raw = terminal.isatty() or not quiet
        self.filter = _TorchrunFilter() if quiet else None
        self.partial, self.shown = "", 0  # the unfinished line; how much of it the terminal shows

    def feed(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self._line(line)
        if self.raw and "\r" in self.partial[self.shown:]:  # a progress bar being drawn
            self._show(("" if self.shown else self.erase) + self.partial[self.shown:])
            self.shown = len(self.partial)
        if self.partial.count("\r") > 2:  # a bar redrawn for hours: its last two drawings decide
            unseen = len(self.partial) - self.shown
            self.partial = "\r" + "\r".join(self.partial.rsplit("\r", 2)[-2:])
            self.shown = max(len(self.partial) - unseen, 0)
        self._flush()

    def close(self) -> None:
        if self.partial:
            self._line(self.partial)
        for held in self.filter.close() if self.filter else []:
            self._show(held + "\n")
        self._flush()

    def _line(self, line: str) -> None:
        text = _shown_text(line)
        if text:
            self.log.write(text + "\n")
        shown, self.shown = self.shown, 0
        if shown:  # the terminal has its start already (a bar): the rest
            self._show(line[shown:] + "\n")
            return
        held, keep = self.filter.passes(text or "") if self.filter else ([], True)
        for earlier in held:
            self._show(earlier + "\n")
        if keep and (self.raw or text):
            self._show((self.erase + line if self.raw else text) + "\n")

    def _show(self, text: str) -> None:
        if self.terminal is not None:
            try:
                self.terminal.write(text)
            except OSError:  # the terminal is gone (a closed pipe): the log goes on
                self.terminal = None

    def _flush(self) -> None:
        self.log.flush()
        if self.terminal is not None:
            try:
                self.terminal.flush()
            except OSError:
                self.terminal = None


def _tee(argv: list[str]) -> int:
    """``log.py LOG_FILE [--quiet]``: standard input onto the terminal and, appended, into LOG_FILE."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the run: its last words still get copied
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    terminal = open(sys.stdout.fileno(), "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    with open(argv[0], "a", encoding="utf-8") as log:
        tee = _Tee(log, terminal, quiet="--quiet" in argv[1:])
        while chunk := os.read(sys.stdin.fileno(), _READ_BYTES):
            tee.feed(decoder.decode(chunk))
        tee.feed(decoder.decode(b"", final=True))
        tee.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python3 code/todi/util/log.py LOG_FILE [--quiet]")
    sys.exit(_tee(sys.argv[1:]))
