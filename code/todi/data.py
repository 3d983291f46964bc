"""Instruction data: JSONL loading with precise errors (tokenisation and collation build on it)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DataError", "read_jsonl"]


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the problem."""


def _check_output(value, where: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return
    raise DataError(f"{where}: field 'output' must be a string or a non-empty list of strings, got {value!r:.80}")


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("prompt", "output")) -> list[dict]:
    """Read one JSON object per line; blank lines are skipped.

    Raises :class:`DataError` naming ``path:line`` for unreadable JSON, a non-object line, a
    missing or mistyped field (``prompt`` must be a string, ``output`` a string or a list of
    strings), and for a file without any record.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for key in required:
                if key not in record:
                    raise DataError(f"{where}: missing field {key!r} (has: {', '.join(record) or 'nothing'})")
            if "prompt" in required and not isinstance(record["prompt"], str):
                raise DataError(f"{where}: field 'prompt' must be a string, got {type(record['prompt']).__name__}")
            if "output" in required:
                _check_output(record["output"], where)
            records.append(record)
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records
