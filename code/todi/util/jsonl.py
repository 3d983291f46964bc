"""JSONL reading: one JSON object per line, with errors that name ``file:line`` and the cause.

Every JSONL reader of the package (instruction data, raw datasets, answer files, metrics, the judge's
verdict cache) goes through :func:`parse_objects`; each checks its own fields and raises its own error
type (``error=``). Torch-free: the judge and the report tools import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BadLine", "DataError", "parse_objects", "read_objects", "read_text"]


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class BadLine:
    """A non-blank line that is not a JSON object."""

    line: int
    message: str  # "<where>: <problem>", what is raised when nobody handles it
    unterminated: bool  # the last line, without its newline: a writer may be appending it right now


def read_text(path: str | Path, error: type[Exception] = DataError) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file raises ``error`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e})") from None


def _parse(line: str) -> tuple[dict | None, str | None]:
    """The JSON object on ``line`` and None, or None and what is wrong with the line."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg} at column {e.colno})"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {type(value).__name__}"
    return value, None


def parse_objects(
    text: str,
    name: str,
    error: type[Exception] = DataError,
    *,
    where: str = "{name}:{line}",
    on_bad: Callable[[BadLine], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of ``text``, numbered from 1.

    A line that is malformed JSON or not an object raises ``error`` with the message ``where``
    (formatted with ``name`` and ``line``) + ": " + the problem; with ``on_bad``, it goes there
    instead, which skips it by returning (a reader that tolerates a crash or a live writer) or raises.
    """
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and other separators
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        value, problem = _parse(line)
        if problem is None:
            yield number, value
            continue
        message = f"{where.format(name=name, line=number)}: {problem}"
        if on_bad is None:
            raise error(message)
        on_bad(BadLine(number, message, unterminated=number == len(lines)))


def read_objects(
    path: str | Path,
    error: type[Exception] = DataError,
    *,
    where: str = "{name}:{line}",
    on_bad: Callable[[BadLine], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """:func:`parse_objects` over the file ``path`` (its errors from :func:`read_text`)."""
    yield from parse_objects(read_text(path, error), str(path), error, where=where, on_bad=on_bad)
