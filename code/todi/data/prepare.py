"""Data preparation: the upstream raw files → MiniLLM-processed JSONL sets.

MiniLLM (and DSKD / ToDi after it) train on Dolly and evaluate on Dolly, Self-Instruct, Vicuna,
Super-NaturalInstructions and Unnatural Instructions, all turned into Alpaca-style prompts. This
module rebuilds those files from the public raw data:

* every example becomes ``prompt`` = the Alpaca template with the instruction (and the input, when
  there is a non-empty one), ``output`` = the reference (a list of references for S-NI);
* examples whose prompt is longer than 256 tokens of the tokenizer (GPT-2's by default) are dropped;
* S-NI and UnNI keep only examples whose (first) reference has at least 11 tokens (the ``11_`` in their
  folder names);
* Vicuna, S-NI and UnNI are shuffled with Python's ``random.seed(42)``; Dolly's first 500 examples
  (after the length filter, in file order) are the test set, the next 1,000 the dev set, the rest the
  training set.

How far each rule is verified against MiniLLM's released files is stated in data/README.md.
"""

from __future__ import annotations

import json
import random
import shutil
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from todi.util.atomic import atomic_write_text
from todi.util.jsonl import DataError, parse_objects, read_text
from todi.data.instructions import read_numbered

__all__ = [
    "DATASETS", "MAX_PROMPT_TOKENS", "MIN_REFERENCE_TOKENS", "PrepareError", "alpaca_prompt",
    "find_raw_files", "download_raw_files", "prepare",
]

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
MAX_PROMPT_TOKENS = 256
MIN_REFERENCE_TOKENS = 11
SHUFFLE_SEED = 42
DOLLY_TEST, DOLLY_DEV = 500, 1000

# Where each raw file comes from (pinned versions where the host has them), and its path under
# --raw-dir (a file is also found directly in --raw-dir).
_NI = "https://raw.githubusercontent.com/allenai/natural-instructions/v2.8"
SOURCES = {
    "dolly": {"dolly/databricks-dolly-15k.jsonl":
              "https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/databricks-dolly-15k.jsonl"},
    "self-inst": {"self-instruct/user_oriented_instructions.jsonl":
                  "https://raw.githubusercontent.com/yizhongw/self-instruct/main/human_eval/user_oriented_instructions.jsonl"},
    "vicuna": {
        "vicuna/question.jsonl": "https://raw.githubusercontent.com/lm-sys/FastChat/"
                                 "82a4a586be36e6b4c9443e8acd9facdbccecfd34/fastchat/eval/table/question.jsonl",
        "vicuna/answer_gpt35.jsonl": "https://raw.githubusercontent.com/lm-sys/FastChat/"
                                     "82a4a586be36e6b4c9443e8acd9facdbccecfd34/fastchat/eval/table/answer/answer_gpt35.jsonl",
    },
    "sinst": {"natural-instructions/splits/default/test_tasks.txt": f"{_NI}/splits/default/test_tasks.txt"},
    "uinst": {"unnatural-instructions/core_data.zip":
              "https://github.com/orhonovich/unnatural-instructions/raw/main/data/core_data.zip"},
}


class PrepareError(RuntimeError):
    """Raw data that cannot be found, downloaded or understood; the message says what to do."""


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """MiniLLM's prompt: the Alpaca template, with the input section only for a non-empty input."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def _raw_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of an upstream JSONL file: any fields, errors naming file and line."""
    return read_numbered(path, required=())


def _field(row: dict, key: str, where: str, kind=str):
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


@dataclass
class _Context:
    raw: dict[str, Path]  # relative raw path -> local file
    count_tokens: Callable[[str], int]


def _dolly(ctx: _Context) -> dict[str, list[dict]]:
    path = ctx.raw["dolly/databricks-dolly-15k.jsonl"]
    rows = []
    for i, row in _raw_rows(path):
        where = f"{path}:{i}"
        # databricks-dolly-15k: instruction, context, response, category; MiniLLM strips them
        instruction = _field(row, "instruction", where).strip()
        context = _field(row, "context", where).strip()
        response = _field(row, "response", where).strip()
        category = _field(row, "category", where)
        rows.append({"instruction": instruction, "input": context, "output": response, "topic": category})
    kept = [r for r in rows if ctx.count_tokens(alpaca_prompt(r["instruction"], r["input"])) <= MAX_PROMPT_TOKENS]
    if len(kept) <= DOLLY_TEST + DOLLY_DEV:
        raise DataError(f"{path}: only {len(kept)} usable examples; expected databricks-dolly-15k (15,011 lines)")
    valid = [{"topic": r["topic"], "instruction": r["instruction"], "input": r["input"], "output": r["output"],
              "prompt": alpaca_prompt(r["instruction"], r["input"])} for r in kept[:DOLLY_TEST]]
    rest = [{"instruction": r["instruction"], "prompt": alpaca_prompt(r["instruction"], r["input"]),
             "input": r["input"], "output": r["output"]} for r in kept[DOLLY_TEST:]]
    return {"valid": valid, "dev": rest[:DOLLY_DEV], "train": rest[DOLLY_DEV:]}


def _self_inst(ctx: _Context) -> dict[str, list[dict]]:
    path = ctx.raw["self-instruct/user_oriented_instructions.jsonl"]
    records = []
    for i, row in _raw_rows(path):
        where = f"{path}:{i}"
        instruction = _field(row, "instruction", where)
        for instance in _field(row, "instances", where, list):
            if not isinstance(instance, dict):
                raise DataError(f"{where}: every entry of 'instances' must be an object")
            inp, out = _field(instance, "input", where), _field(instance, "output", where)
            records.append({"topic": _field(row, "motivation_app", where), "instruction": instruction,
                            "input": inp, "output": out, "prompt": alpaca_prompt(instruction, inp)})
    return {"valid": [r for r in records if ctx.count_tokens(r["prompt"]) <= MAX_PROMPT_TOKENS]}


def _vicuna(ctx: _Context) -> dict[str, list[dict]]:
    qpath, apath = ctx.raw["vicuna/question.jsonl"], ctx.raw["vicuna/answer_gpt35.jsonl"]
    answers = {}
    for i, row in _raw_rows(apath):
        answers[_field(row, "question_id", f"{apath}:{i}", int)] = _field(row, "text", f"{apath}:{i}")
    records = []
    for i, row in _raw_rows(qpath):
        where = f"{qpath}:{i}"
        qid = _field(row, "question_id", where, int)
        if qid not in answers:
            raise DataError(f"{where}: question {qid} has no answer in {apath}")
        text = _field(row, "text", where)
        records.append({"instruction": text, "category": _field(row, "category", where),
                        "prompt": alpaca_prompt(text), "output": answers[qid]})
    records = [r for r in records if ctx.count_tokens(r["prompt"]) <= MAX_PROMPT_TOKENS]
    random.Random(SHUFFLE_SEED).shuffle(records)
    return {"valid": records}


def _long_enough(reference: str, ctx: _Context) -> bool:
    return ctx.count_tokens(reference) >= MIN_REFERENCE_TOKENS


def _sinst(ctx: _Context) -> dict[str, list[dict]]:
    split = ctx.raw["natural-instructions/splits/default/test_tasks.txt"]
    tasks_dir = split.parents[2] / "tasks"
    records = []
    for task in (t.strip() for t in split.read_text(encoding="utf-8").splitlines()):
        if not task:
            continue
        path = tasks_dir / f"{task}.json"
        if not path.is_file():
            raise PrepareError(f"{path}: task file not found (listed in {split})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
        definition = _field(data, "Definition", str(path), list)
        if not definition or not isinstance(definition[0], str):
            raise DataError(f"{path}: field 'Definition' must be a non-empty list of strings")
        # the evaluation instances of a test task are its first 100 (as Tk-Instruct evaluates them)
        for j, inst in enumerate(_field(data, "Instances", str(path), list)[:100]):
            where = f"{path}: Instances[{j}]"
            outputs = _field(inst, "output", where, list)
            if not outputs or not all(isinstance(o, str) for o in outputs):
                raise DataError(f"{where}: field 'output' must be a non-empty list of strings")
            inp = _field(inst, "input", where)
            records.append({"topic": task, "instruction": definition[0], "input": inp, "output": outputs,
                            "prompt": alpaca_prompt(definition[0], inp)})
    records = [r for r in records
               if ctx.count_tokens(r["prompt"]) <= MAX_PROMPT_TOKENS and _long_enough(r["output"][0], ctx)]
    random.Random(SHUFFLE_SEED).shuffle(records)
    return {"11_/valid": records}


def _uinst(ctx: _Context) -> dict[str, list[dict]]:
    path = ctx.raw["unnatural-instructions/core_data.zip"]
    name = f"{path}: core_data.jsonl"
    records = []
    for i, row in parse_objects(_core_data_text(path), name):
        where = f"{name}:{i}"
        instruction = _field(row, "instruction", where)
        for instance in _field(row, "instances", where, list):
            inp, out = _field(instance, "input", where), _field(instance, "output", where)
            records.append({"instruction": instruction, "input": inp, "output": out,
                            "prompt": alpaca_prompt(instruction, inp)})
    records = [r for r in records
               if ctx.count_tokens(r["prompt"]) <= MAX_PROMPT_TOKENS and _long_enough(r["output"], ctx)]
    random.Random(SHUFFLE_SEED).shuffle(records)
    return {"11_/valid": records}


def _core_data_text(path: Path) -> str:
    """core_data.jsonl's text, from the zip the authors publish or from the unzipped file."""
    if path.suffix == ".jsonl":
        return read_text(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("core_data.jsonl")]
            if not names:
                raise PrepareError(f"{path}: no core_data.jsonl inside")
            return z.read(names[0]).decode("utf-8")
    except zipfile.BadZipFile:
        raise PrepareError(f"{path}: not a zip file (download it again)") from None


DATASETS: dict[str, Callable[[_Context], dict[str, list[dict]]]] = {
    "dolly": _dolly, "self-inst": _self_inst, "vicuna": _vicuna, "sinst": _sinst, "uinst": _uinst,
}


def find_raw_files(dataset: str, raw_dir: str | Path) -> dict[str, Path]:
    """The raw files of ``dataset`` under ``raw_dir``: each at its usual sub-path (e.g.
    ``vicuna/question.jsonl``) or directly in ``raw_dir``. UnNI's core_data.zip may also be given
    unzipped (core_data.jsonl); S-NI needs the natural-instructions checkout (splits/ and tasks/)."""
    raw_dir = Path(raw_dir)
    found, missing = {}, []
    for rel in SOURCES[dataset]:
        if rel.startswith("natural-instructions/"):  # the checkout's layout is needed (splits/, tasks/)
            candidates = [raw_dir / rel, raw_dir / Path(rel).relative_to("natural-instructions")]
        else:
            candidates = [raw_dir / rel, raw_dir / Path(rel).name]
        if rel.endswith("core_data.zip"):
            candidates += [c.with_suffix(".jsonl") for c in candidates]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(str(raw_dir / rel))
        else:
            found[rel] = hit
    if missing:
        extra = " and the tasks/<task>.json files it lists" if dataset == "sinst" else ""
        raise PrepareError(
            f"raw files for {dataset} not found: {', '.join(missing)}{extra}. Download them from "
            + ", ".join(SOURCES[dataset].values()) + f" into {raw_dir}, or leave out --raw-dir to download them."
        )
    return found


def _download(url: str, dest: Path, raw_dir: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as e:  # urllib.error.URLError is an OSError
        tmp.unlink(missing_ok=True)
        raise PrepareError(
            f"could not download {url} ({getattr(e, 'reason', e)}). If this machine is offline, fetch it "
            f"elsewhere, save it as {dest} and run again with --raw-dir {raw_dir}"
        ) from None
    tmp.replace(dest)


def download_raw_files(dataset: str, raw_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Download (once: files already there are kept) the raw files of ``dataset`` into ``raw_dir``."""
    raw_dir = Path(raw_dir)
    for rel, url in SOURCES[dataset].items():
        dest = raw_dir / rel
        if not dest.is_file():
            log(f"downloading {url}")
            _download(url, dest, raw_dir)
    if dataset == "sinst":
        split = raw_dir / "natural-instructions/splits/default/test_tasks.txt"
        for task in (t.strip() for t in split.read_text(encoding="utf-8").splitlines()):
            dest = raw_dir / "natural-instructions/tasks" / f"{task}.json"
            if task and not dest.is_file():
                log(f"downloading {_NI}/tasks/{task}.json")
                _download(f"{_NI}/tasks/{task}.json", dest, raw_dir)
    return find_raw_files(dataset, raw_dir)


def prepare(dataset: str, raw_files: dict[str, Path], output_dir: str | Path, tokenizer) -> dict[str, int]:
    """Build ``dataset`` from its raw files and write ``<output_dir>/<dataset>/<split>.jsonl``
    (atomically, one JSON object per line as MiniLLM writes them); returns records per file."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    splits = DATASETS[dataset](_Context(raw_files, count_tokens))
    counts = {}
    for split, records in splits.items():
        path = Path(output_dir) / dataset / f"{split}.jsonl"
        atomic_write_text(path, _jsonl(records))
        counts[str(path)] = len(records)
    return counts


def _jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)
