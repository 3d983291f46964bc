"""The judge's inputs: two checkpoints' answer files, paired set by set and example by example.

``<ckpt>/eval/<set>/seed<seed>/answers.jsonl`` holds one ``{"prompt", "references", "prediction"}``
per line (written by :func:`todi.evaluation.results.write_result`). :func:`load_pairs` finds the sets both
checkpoints answered with a common seed and pairs example *i* of one with example *i* of the other,
checking that their prompts match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from todi.util.jsonl import read_objects
from todi.evaluation.results import PAPER_SETS, check_set_name

__all__ = ["Answer", "Example", "JudgeError", "SetPair", "find_answer_files", "load_pairs", "question_of", "read_answers"]

# the Alpaca-style prompts of todi.data.prepare; the judge sees the instruction (and input), not the template
_ALPACA = re.compile(
    r"^Below is an instruction that describes a task.*?\n\n### Instruction:\n(?P<instruction>.*?)"
    r"(?:\n\n### Input:\n(?P<input>.*?))?\n\n### Response:\n?$",
    re.DOTALL,
)


class JudgeError(RuntimeError):
    """An input or endpoint problem; the message says which file, line or call, and what to do."""


@dataclass(frozen=True)
class Answer:
    line: int
    prompt: str
    prediction: str


def read_answers(path: Path) -> list[Answer]:
    """The records of one answers.jsonl, with their line numbers (blank lines skipped)."""
    answers = []
    for lineno, record in read_objects(path, JudgeError):
        for key in ("prompt", "prediction"):
            if not isinstance(record.get(key), str):
                raise JudgeError(f"{path}:{lineno}: field {key!r} missing or not a string")
        answers.append(Answer(lineno, record["prompt"], record["prediction"]))
    return answers


def find_answer_files(ckpt: Path) -> dict[str, dict[int, Path]]:
    """``{set: {seed: answers.jsonl}}`` under ``<ckpt>/eval`` (or ``ckpt`` itself if it is an eval folder)."""
    if not ckpt.is_dir():
        raise JudgeError(f"{ckpt}: no such directory")
    eval_dir = ckpt / "eval" if (ckpt / "eval").is_dir() else ckpt
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(eval_dir.rglob("answers.jsonl")):
        match = re.fullmatch(r"seed(\d+)", path.parent.name)
        if not match or path.parent.parent == eval_dir:
            continue
        set_name = path.parent.parent.relative_to(eval_dir).as_posix()
        check_set_name(set_name)
        found.setdefault(set_name, {})[int(match.group(1))] = path
    if not found:
        raise JudgeError(f"{ckpt}: no answers (<set>/seed<N>/answers.jsonl) under {eval_dir}; run scripts/eval/run_eval.sh first")
    return found


def question_of(prompt: str) -> str:
    """The instruction (and its input) of an Alpaca-style prompt; any other prompt as it is."""
    match = _ALPACA.match(prompt)
    if not match:
        return prompt.strip()
    question = match.group("instruction").strip()
    if match.group("input"):
        question += "\n\n" + match.group("input").strip()
    return question


@dataclass(frozen=True)
class Example:
    index: int  # position in both answer files (0-based)
    question: str
    answer_a: str
    answer_b: str


@dataclass(frozen=True)
class SetPair:
    """One set judged: its seed, the two answer files and the aligned examples."""

    name: str
    seed: int
    path_a: Path
    path_b: Path
    examples: list[Example]


def _ordered(names) -> list[str]:
    """The paper's sets in their table order, then any other alphabetically."""
    return [s for s in PAPER_SETS if s in names] + sorted(set(names) - set(PAPER_SETS))


def load_pairs(ckpt_a: Path, ckpt_b: Path, *, sets: Sequence[str] | None = None, seed: int | None = None,
               max_examples: int | None = None, log: Callable[[str], None] = print) -> list[SetPair]:
    """Every set both checkpoints answered with a common seed (``seed``, or the smallest shared one),
    aligned by index; raises :class:`JudgeError` when nothing is shared or prompts differ."""
    files_a, files_b = find_answer_files(ckpt_a), find_answer_files(ckpt_b)
    shared = _ordered(set(files_a) & set(files_b))
    if sets:
        missing = [s for s in sets if s not in shared]
        if missing:
            raise JudgeError(f"set(s) {', '.join(missing)} not answered by both checkpoints (shared: {', '.join(shared) or 'none'})")
        shared = [s for s in shared if s in sets]
    pairs = []
    for name in shared:
        common = sorted(set(files_a[name]) & set(files_b[name]))
        chosen = seed if seed is not None else (common[0] if common else None)
        if chosen not in common:
            log(f"skipping {name}: no common seed{'' if seed is None else f' {seed}'} (A: {sorted(files_a[name])}, B: {sorted(files_b[name])})")
            continue
        pairs.append(_align(name, chosen, files_a[name][chosen], files_b[name][chosen], max_examples))
    if not pairs:
        raise JudgeError(f"no set with answers of both {ckpt_a} and {ckpt_b}"
                         f"{'' if seed is None else f' for seed {seed}'} (A has: {', '.join(_ordered(files_a))}; "
                         f"B has: {', '.join(_ordered(files_b))})")
    return pairs


def _align(name: str, seed: int, path_a: Path, path_b: Path, max_examples: int | None) -> SetPair:
    answers_a, answers_b = read_answers(path_a), read_answers(path_b)
    if len(answers_a) != len(answers_b):
        raise JudgeError(f"{name}: {path_a} has {len(answers_a)} answers but {path_b} has {len(answers_b)}")
    if max_examples is not None:
        answers_a, answers_b = answers_a[:max_examples], answers_b[:max_examples]
    examples = []
    for i, (a, b) in enumerate(zip(answers_a, answers_b)):
        if a.prompt != b.prompt:
            raise JudgeError(f"{path_b}:{b.line}: prompt differs from {path_a}:{a.line} "
                             f"({a.prompt[:40]!r}... vs {b.prompt[:40]!r}...); were both evaluated on the same data?")
        examples.append(Example(i, question_of(a.prompt), a.prediction, b.prediction))
    return SetPair(name, seed, path_a, path_b, examples)
