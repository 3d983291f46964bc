"""The one JSONL reader: (line, object) per non-blank line, errors naming file:line and the cause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from todi.util.jsonl import DataError, parse_objects, read_objects, read_text

CODE = Path(__file__).resolve().parents[3] / "code"


class OwnError(RuntimeError):
    """A caller's error type (the judge's, the curves')."""


def test_blank_lines_are_skipped_and_lines_keep_their_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"b": "x\u2028y"}\n', encoding="utf-8")
    assert list(read_objects(path)) == [(1, {"a": 1}), (4, {"b": "x\u2028y"})]


@pytest.mark.parametrize("line,problem", [
    ('{"a": 1', "malformed JSON (Expecting ',' delimiter at column 8)"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"text"', "expected a JSON object, got str"),
])
def test_bad_lines_name_file_line_and_cause(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ok": true}\n\n' + line + "\n")
    with pytest.raises(DataError) as caught:
        list(read_objects(path))
    assert str(caught.value) == f"{path}:3: {problem}"


def test_the_caller_chooses_the_error_type_and_the_place_format(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("{}\n{nope\n")
    with pytest.raises(OwnError, match=r"metrics.jsonl line 2: malformed JSON"):
        list(read_objects(path, OwnError, where="{name} line {line}"))


def test_missing_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'none.jsonl'}: no such file$"):
        list(read_objects(tmp_path / "none.jsonl"))
    with pytest.raises(OwnError, match="no such file"):
        read_text(tmp_path, OwnError)  # a directory is not a file
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl: not UTF-8 text \(invalid continuation byte at byte 10\)"):
        list(read_objects(latin))


def test_on_bad_sees_every_bad_line_and_whether_it_is_an_unterminated_last_line():
    seen = []
    text = '{"a": 1}\n[]\n{"b": 2}\n{"half'
    assert list(parse_objects(text, "live.jsonl", on_bad=seen.append)) == [(1, {"a": 1}), (3, {"b": 2})]
    assert [(bad.line, bad.unterminated) for bad in seen] == [(2, False), (4, True)]
    assert seen[0].message == "live.jsonl:2: expected a JSON object, got list"
    assert seen[1].message.startswith("live.jsonl:4: malformed JSON")


def test_the_reader_does_not_import_torch():
    probe = "import sys; import todi.util.jsonl; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(CODE), "PATH": ""})
    assert result.stdout.strip() == "False"
