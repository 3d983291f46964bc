"""Data preparation reproduces MiniLLM's processed sets (exactly where the raw data is here)."""

from __future__ import annotations

import json
import random
import sys
import urllib.error
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "code"))

import prepare_data as prepare_cli  # noqa: E402  (code/prepare_data.py)
from todi.data import prepare  # noqa: E402


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared_dir):
    return shared_dir / "model_hub/gpt2/gpt2-base"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_self_inst_and_vicuna_are_reproduced_exactly(shared_dir, gpt2_tokenizer, tmp_path):
    rc = prepare_cli.main(["self-inst", "vicuna", "--output-dir", str(tmp_path), "--raw-dir",
                           str(shared_dir / "data/raw"), "--tokenizer", str(gpt2_tokenizer)])
    assert rc == 0
    # byte for byte: same records, same order, same JSON formatting
    for name in ("self-inst", "vicuna"):
        assert (tmp_path / name / "valid.jsonl").read_bytes() == (shared_dir / "data" / name / "valid.jsonl").read_bytes()


def test_dolly_rules_reproduce_the_processed_files(shared_dir, gpt2_tokenizer, tmp_path):
    """A raw Dolly file holding the processed examples in order, with over-long examples between
    them, gives back MiniLLM's valid (first 500), dev (next 1000) and train files byte for byte."""
    data = shared_dir / "data/dolly"
    valid, dev = _records(data / "valid.jsonl"), _records(data / "dev.jsonl")
    train_lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    train = [json.loads(line) for line in train_lines]
    raw = []
    long_context = "word " * 300
    for i, r in enumerate(valid + dev + train):
        raw.append({"instruction": r["instruction"], "context": r["input"], "response": r["output"],
                    "category": r.get("topic", "open_qa")})
        if i % 97 == 0:  # too long once templated: dropped everywhere
            raw.append({"instruction": f"long {i}", "context": long_context, "response": "x", "category": "closed_qa"})
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/databricks-dolly-15k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    assert prepare_cli.main(["dolly", "--output-dir", str(tmp_path), "--raw-dir", str(tmp_path / "raw"),
                             "--tokenizer", str(gpt2_tokenizer)]) == 0
    for split in ("valid", "dev"):
        assert (tmp_path / "dolly" / f"{split}.jsonl").read_bytes() == (data / f"{split}.jsonl").read_bytes()
    assert (tmp_path / "dolly/train.jsonl").read_text(encoding="utf-8").splitlines() == train_lines


def _tokens(tokenizer_dir, text):
    from todi.models import load_tokenizer

    return len(load_tokenizer(tokenizer_dir).encode(text, add_special_tokens=False))


def test_sinst_rules(gpt2_tokenizer, tmp_path):
    """Test tasks in split order, first 100 instances each, prompt <= 256 and first reference >= 11
    tokens, shuffled with seed 42; the references stay a list."""
    ni = tmp_path / "natural-instructions"
    (ni / "splits/default").mkdir(parents=True)
    (ni / "tasks").mkdir()
    (ni / "splits/default/test_tasks.txt").write_text("task1_long\ntask2_short\n")
    long_answer = "a fairly long reference answer that has clearly more than eleven tokens in it"
    instances = [{"id": str(i), "input": f"input {i}", "output": [long_answer + str(i), "short"]} for i in range(120)]
    instances[3]["input"] = "too long " * 200
    (ni / "tasks/task1_long.json").write_text(json.dumps({"Definition": ["Define it. "], "Instances": instances}))
    (ni / "tasks/task2_short.json").write_text(json.dumps(
        {"Definition": ["Short."], "Instances": [{"input": "q", "output": ["yes", long_answer]}]}))
    assert _tokens(gpt2_tokenizer, "yes") < prepare.MIN_REFERENCE_TOKENS <= _tokens(gpt2_tokenizer, long_answer)

    assert prepare_cli.main(["sinst", "--output-dir", str(tmp_path / "out"), "--raw-dir", str(tmp_path),
                             "--tokenizer", str(gpt2_tokenizer)]) == 0
    got = _records(tmp_path / "out/sinst/11_/valid.jsonl")
    expected = [{"topic": "task1_long", "instruction": "Define it. ", "input": f"input {i}",
                 "output": [long_answer + str(i), "short"],
                 "prompt": prepare.alpaca_prompt("Define it. ", f"input {i}")} for i in range(100) if i != 3]
    random.Random(42).shuffle(expected)
    assert got == expected


def test_uinst_rules_from_the_published_zip(gpt2_tokenizer, tmp_path):
    rows = [{"instruction": f"Task {i}.", "instances": [{"instruction_with_input": "-", "input": f"in {i}",
             "constraints": "None.", "output": ("done " * 12) if i % 2 else "ok"}]} for i in range(6)]
    raw = tmp_path / "raw/unnatural-instructions"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "core_data.zip", "w") as z:
        z.writestr("core_data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert prepare_cli.main(["uinst", "--output-dir", str(tmp_path / "out"), "--raw-dir", str(tmp_path / "raw"),
                             "--tokenizer", str(gpt2_tokenizer)]) == 0
    expected = [{"instruction": f"Task {i}.", "input": f"in {i}", "output": "done " * 12,
                 "prompt": prepare.alpaca_prompt(f"Task {i}.", f"in {i}")} for i in (1, 3, 5)]
    random.Random(42).shuffle(expected)
    assert _records(tmp_path / "out/uinst/11_/valid.jsonl") == expected


def test_missing_raw_files_and_offline_downloads_fail_clearly(gpt2_tokenizer, tmp_path, capsys, monkeypatch):
    assert prepare_cli.main(["vicuna", "--output-dir", str(tmp_path), "--raw-dir", str(tmp_path / "none"),
                             "--tokenizer", str(gpt2_tokenizer)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'none' / 'vicuna' / 'question.jsonl'}" in err and "answer_gpt35.jsonl" in err

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(prepare.urllib.request, "urlopen", offline)
    assert prepare_cli.main(["self-inst", "--output-dir", str(tmp_path / "out"), "--tokenizer", str(gpt2_tokenizer)]) == 2
    err = capsys.readouterr().err
    assert "could not download https://raw.githubusercontent.com/yizhongw/self-instruct/" in err
    assert f"--raw-dir {tmp_path / 'out' / 'raw'}" in err
    assert not (tmp_path / "out/self-inst").exists()

    bad = tmp_path / "badraw/vicuna"
    bad.mkdir(parents=True)
    (bad / "question.jsonl").write_text('{"question_id": 1, "text": "q", "category": "c"}\n')
    (bad / "answer_gpt35.jsonl").write_text('\n{"question_id": 1}\n')  # a blank line first: the error names line 2
    assert prepare_cli.main(["vicuna", "--output-dir", str(tmp_path), "--raw-dir", str(tmp_path / "badraw"),
                             "--tokenizer", str(gpt2_tokenizer)]) == 2
    assert f"{bad / 'answer_gpt35.jsonl'}:2: missing field 'text'" in capsys.readouterr().err
