"""Failures that end with their cause: one ``error:`` line per failing process, recorded where the
launchers find it.

A process that stops on bad input or settings (a malformed data line, a missing model, a bad flag)
prints one line, ``<prog>: error: <cause>``, and exits with a non-zero code (2 for bad input, 1 for
anything else, which also keeps its traceback). Under torchrun, where the agent's ``ChildFailedError``
report follows and would scroll that line away, the cause is also written

* to ``$TORCHELASTIC_ERROR_FILE`` (torchrun's own mechanism, what its ``record`` decorator writes):
  the report then shows the line as the rank's "traceback" instead of "To enable traceback see ...";
* to ``$TODI_ERROR_DIR/rank<RANK>.txt`` when the launcher sets that directory
  (``scripts/train_launch.sh``: ``<save-dir>/.failures``, shared by all nodes on shared storage;
  ``scripts/eval/eval_sets.sh``: one per set). After a failed torchrun, the launcher prints, as the
  last lines, the earliest cause: ``python code/todi/util/failures.py DIR`` (this file, run as a script).

Quiet (``$TODI_CAUSE_BY_LAUNCHER`` is ``1``: set by ``scripts/torchrun_launch.sh`` unless ``VERBOSE=1``),
the launcher's lines are the only place the cause appears: a failing rank records it without printing
it (printing it after all when it cannot be recorded), argparse's usage and error stay off the
terminal, and a rank stopped by another's failure says so without repeating the cause.

No rank waits for a failed one. Bad input is the same for every rank (same flags, same files), so
usually every rank fails alike, and torchrun terminates the rest of its local group as soon as one
worker fails. Across nodes that is not enough (a node's workers would wait in their next collective
until the process-group timeout, an hour), so under torchrun every process of an entry point also
watches the rendezvous store of the run (torchrun's agent store at MASTER_ADDR:MASTER_PORT, which
every node reaches): a failing rank posts its cause there (key ``todi/failure``), and every other
rank, polling it each second from a daemon thread, copies that cause into its own
``$TODI_ERROR_DIR`` (so each node's launcher names it even without shared storage) and leaves at
once, which makes its torchrun stop too. A rank that loses the store for several seconds (node 0's
agent is gone) leaves as well. A failing process exits through ``os._exit`` once a multi-process
group exists, so it never blocks in the group's teardown.

Standard library only at import: the launchers run this file as a script; the watcher imports torch
when it starts (under torchrun only).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

__all__ = ["BAD_INPUT", "CAUSE_BY_LAUNCHER_VARIABLE", "ERROR_DIR_VARIABLE", "FAILURE_KEY", "fail", "first_cause",
           "record", "run_entry_point", "watch_group"]

ERROR_DIR_VARIABLE = "TODI_ERROR_DIR"
CAUSE_BY_LAUNCHER_VARIABLE = "TODI_CAUSE_BY_LAUNCHER"  # "1": the launcher prints the recorded cause, not the rank
# Exceptions that mean bad input or settings (the package's DataError is a ValueError, its
# PrepareError a RuntimeError and listed by prepare_data.py): a message, no traceback.
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, OSError)
FAILURE_KEY = "todi/failure"  # in the run's rendezvous store: the first failing rank's record

_recorded: list[str] = []
_store = None  # a client of torchrun's agent store, once watch_group() has connected


def _rank() -> str:
    return os.environ.get("RANK", "0")


def _cause_by_launcher() -> bool:
    return os.environ.get(CAUSE_BY_LAUNCHER_VARIABLE) == "1"


def _write_record(directory: str, entry: dict, *, replace: bool = True) -> bool:
    """Write ``entry`` as ``directory``'s record of its rank; False if it could not be written."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / f"rank{entry['rank']}.txt"
        if not replace and path.exists():
            return True
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(entry) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return True
    except (OSError, ValueError):
        return False


def record(message: str) -> bool:
    """Write ``message`` where torchrun's report, the launchers and the other ranks find it; True if the
    launcher will find it (``$TODI_ERROR_DIR`` is set and the record written there)."""
    _recorded.append(message)
    now = time.time_ns()
    entry = {"time_ns": now, "rank": int(_rank()), "message": message}
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            with open(error_file, "w", encoding="utf-8") as f:
                json.dump({"message": message, "timestamp": now // 10**9}, f)
        except OSError:
            pass
    directory = os.environ.get(ERROR_DIR_VARIABLE)
    recorded = bool(directory) and _write_record(directory, entry)
    if _store is not None:
        try:  # the first failure stays: set only while the key is absent
            _store.compare_set(FAILURE_KEY, "", json.dumps(entry))
        except Exception:
            pass
    return recorded


def watch_group(poll_seconds: float = 1.0, lost_after: int = 5) -> bool:
    """Under torchrun with more than one process: stop this process as soon as another rank of the
    run records a failure (or the run's store is gone for ``lost_after`` polls); True if watching.

    Connects to torchrun's agent store (``TORCHELASTIC_USE_AGENT_STORE``), which exists before the
    workers start and outlives them, so it works before, during and after the process group.
    """
    global _store
    if (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(os.environ.get("WORLD_SIZE", "1")) <= 1
            or _store is not None):
        return False
    try:
        from datetime import timedelta

        from torch.distributed import TCPStore

        _store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=30))
    except Exception:
        return False
    me = int(_rank())

    def stop(text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)

    def loop() -> None:
        misses = 0
        while True:
            time.sleep(poll_seconds)
            if _recorded:  # this rank failed itself: its own exit is under way
                return
            try:
                if _store.check([FAILURE_KEY]):
                    entry = json.loads(_store.get(FAILURE_KEY))
                    if entry.get("rank") != me and not _recorded:
                        directory = os.environ.get(ERROR_DIR_VARIABLE)
                        if directory:  # this node's launcher names the cause even without shared storage
                            _write_record(directory, entry, replace=False)
                        cause = "" if _cause_by_launcher() else f": {entry.get('message')}"
                        stop(f"[rank {me}] stopping: rank {entry.get('rank')} failed{cause}")
                misses = 0
            except Exception:
                misses += 1
                if misses >= lost_after and not _recorded:
                    stop(f"[rank {me}] stopping: lost the run's store at {os.environ['MASTER_ADDR']}:"
                         f"{os.environ['MASTER_PORT']} (another node has stopped)")

    threading.Thread(target=loop, name="todi-failure-watch", daemon=True).start()
    return True


def fail(message: str, code: int = 2) -> int:
    """Print ``message`` to stderr as the process's last word, record it (:func:`record`); ``code``.
    Quiet: only recorded, unless that fails."""
    by_launcher = _cause_by_launcher()
    if not by_launcher:
        print(message, file=sys.stderr, flush=True)
    if not record(message) and by_launcher:
        print(message, file=sys.stderr, flush=True)
    return code


class _StderrTail:
    """sys.stderr, remembering its last ``error:`` line (argparse prints its message, then exits 2).
    Quiet: argparse's usage and the error line it writes next are withheld (:meth:`release`)."""

    def __init__(self, stream):
        self.stream, self.last_error, self._partial = stream, None, ""
        self.withheld = "" if _cause_by_launcher() else None  # None: nothing is withheld

    def write(self, text):
        *lines, partial = (self._partial + text).replace("\r", "\n").split("\n")
        self._partial = partial[-4096:]  # progress bars rewrite one line for hours
        for line in lines:
            if "error:" in line:
                self.last_error = line.strip()
        if self.withheld is not None and (text.startswith("usage:") or (self.withheld and "error:" in text)):
            self.withheld += text
            return len(text)
        self.release()
        return self.stream.write(text)

    def release(self) -> None:
        """Write what was withheld after all (it was no argparse error, or its cause was not recorded)."""
        if self.withheld:
            self.stream.write(self.withheld)
            self.withheld = ""

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _message(prog: str, text: str) -> str:
    text = str(text).strip()
    if text.startswith((f"{prog}: error:", "error:")):
        return text
    return f"{prog}: error: {text}"


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def run_entry_point(main: Callable[[], int | None], *, prog: str,
                    bad_input: tuple[type[BaseException], ...] = BAD_INPUT, outcomes: tuple[int, ...] = ()) -> int:
    """Run an entry point's ``main()``; its exit code, after making sure a failure ends with its cause.

    ``outcomes``: non-zero codes ``main`` returns that are results, not failures (training's "paused").

    ``SystemExit`` with a message and the ``bad_input`` exceptions become one ``<prog>: error:`` line
    (code 2; a SystemExit keeps its code when it has one); an argparse error or a ``main`` that returns
    non-zero keeps the ``error:`` line it printed; any other exception prints its traceback and then
    its one-line summary with where it was raised (code 1). Under torchrun the process also watches for
    the other ranks' failures (:func:`watch_group`). A failing process in a multi-process group leaves
    through ``os._exit``, so the group's teardown cannot hang it; so does every worker of a multi-process
    torchrun run, after flushing its output (:func:`_exit_promptly`).
    """
    tail = _StderrTail(sys.stderr)
    sys.stderr = tail
    watch_group()
    code = 1
    try:
        try:
            code = main()
            code = 0 if code is None else code
            message = None
        except SystemExit as e:
            if e.code is None or e.code == 0:
                return 0
            if isinstance(e.code, int):
                code, message = e.code, None
            else:
                code, message = (2, _message(prog, e.code))
        except bad_input as e:
            code, message = 2, _message(prog, str(e) or type(e).__name__)
        except Exception as e:  # a bug, or an environment problem: keep the traceback, end with the cause
            traceback.print_exc()
            code, message = 1, _message(prog, f"{type(e).__name__}: {e}{_where(e)}")
        if code != 0 and not (message is None and code in outcomes):
            if message is not None:
                fail(message, code)
            elif not _recorded:  # the message is on stderr already (argparse, a main that returned 2) or withheld
                if record(tail.last_error or f"{prog}: error: exit code {code}"):
                    tail.withheld = None  # argparse's usage and error: the launcher prints the cause
        return code
    finally:
        tail.release()
        sys.stderr = tail.stream
        if _recorded or _store is not None:
            _exit_promptly(code, watched=_store is not None)


def _exit_promptly(code, *, watched: bool = False) -> None:
    """Leave without the interpreter's finalization: a failed rank of a larger group (its teardown could
    wait for the others), and every torchrun worker of a multi-process run (``watched``): finalizing
    with the watch thread inside the store and DeepSpeed's references to gloo process groups alive
    can abort a finished run ("terminate called without an active exception", exit code 1)."""
    dist = sys.modules.get("torch.distributed")
    try:
        in_group = dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    except Exception:
        in_group = False
    if in_group or watched:
        sys.stdout.flush()
        sys.stderr.flush()
        import logging

        logging.shutdown()
        os._exit(code if isinstance(code, int) else 1)


def first_cause(directory: str | Path) -> tuple[dict, list[int]] | None:
    """The earliest recorded failure in ``directory`` and the ranks that recorded the same message."""
    records = []
    for path in Path(directory).glob("rank*.txt"):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    if not records:
        return None
    records.sort(key=lambda r: (r.get("time_ns", 0), r.get("rank", 0)))
    first = records[0]
    same = sorted(r.get("rank", 0) for r in records if r.get("message") == first.get("message"))
    return first, same


def _print_first_cause(argv: list[str]) -> int:
    """``failures.py DIR [WHAT [CODE [LOG]]]``: print the earliest cause in DIR as the last lines; 0 if one
    was found. LOG: where torchrun's report is when it is not on the terminal (quiet)."""
    directory = argv[0]
    what = argv[1] if len(argv) > 1 else "the run"
    code = argv[2] if len(argv) > 2 else "non-zero"
    report = f"torchrun's report in {argv[3]}" if len(argv) > 3 else "the report above"
    found = first_cause(directory) if Path(directory).is_dir() else None
    if found is None:
        print(f"error: {what} failed (exit code {code}) without recording a cause; see {report} "
              "(a process killed by a signal, e.g. out of memory, records none)")
        return 1
    first, ranks = found
    others = [r for r in ranks if r != first.get("rank")]
    also = f"; rank(s) {' '.join(map(str, others))} failed the same way" if others else ""
    print(f"error: {what} failed (exit code {code}); the first cause, from rank {first.get('rank')}{also}:")
    print(first.get("message", ""))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python code/todi/util/failures.py ERROR_DIR [WHAT [EXIT_CODE [LOG]]]")
    sys.exit(_print_first_cause(sys.argv[1:]))
