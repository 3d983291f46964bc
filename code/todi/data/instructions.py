"""Instruction data: JSONL loading with precise errors, tokenisation (student and teacher views) and collation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from todi.util.jsonl import DataError, read_objects
from todi.util.labels import IGNORE_INDEX
from todi.models import prompt_prefix_ids

__all__ = [
    "Batch",
    "Collator",
    "DataError",
    "DataStats",
    "IGNORE_INDEX",
    "Split",
    "TokenizedExample",
    "load_split",
    "padded_width",
    "read_jsonl",
    "read_numbered",
]


def _check_output(value, where: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return
    raise DataError(f"{where}: field 'output' must be a string or a non-empty list of strings, got {value!r:.80}")


def _check_fields(record: dict, required: tuple[str, ...], where: str) -> None:
    for key in required:
        if key not in record:
            raise DataError(f"{where}: missing field {key!r} (has: {', '.join(record) or 'nothing'})")
    if "prompt" in required and not isinstance(record["prompt"], str):
        raise DataError(f"{where}: field 'prompt' must be a string, got {type(record['prompt']).__name__}")
    if "output" in required:
        _check_output(record["output"], where)


def read_numbered(path: str | Path, required: tuple[str, ...] = ("prompt", "output")) -> list[tuple[int, dict]]:
    """(line number, record) for each JSON object of a JSONL file; blank lines are skipped.

    Raises :class:`DataError` naming ``path:line`` for unreadable JSON, a non-object line, a
    missing or mistyped field (``prompt`` must be a string, ``output`` a string or a list of
    strings), and for a file without any record.
    """
    records = []
    for lineno, record in read_objects(path):
        _check_fields(record, required, f"{path}:{lineno}")
        records.append((lineno, record))
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("prompt", "output")) -> list[dict]:
    """The records of :func:`read_numbered`, without their line numbers."""
    return [record for _, record in read_numbered(path, required)]


# --------------------------------------------------------------------------------------------
# Tokenisation: prompt + response (+ EOS), only the response supervised.
# --------------------------------------------------------------------------------------------

@dataclass
class TokenizedExample:
    """One training example as token ids.

    input_ids: prompt (its last ``max_prompt_length`` tokens) + response + EOS, cut to ``max_length``.
    prompt_len: number of prompt tokens in ``input_ids``.
    teacher_input_ids: the teacher's ids when its tokenizer differs (same length and response ids).
    index: the position of its record among the data file's records (the key of a teacher cache).
    """

    input_ids: list[int]
    prompt_len: int
    teacher_input_ids: list[int] | None = None
    index: int = -1

    @property
    def length(self) -> int:
        """Positions the model sees: the last id is only a target."""
        return len(self.input_ids) - 1

    @property
    def num_targets(self) -> int:
        """Supervised positions: every response token that has a preceding position."""
        return len(self.input_ids) - max(self.prompt_len, 1)


@dataclass
class DataStats:
    """What tokenisation changed, for the log: nothing is dropped or cut silently."""

    examples: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0
    dropped_no_response: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        text = (f"{name}: {self.examples} examples; {self.prompts_truncated} prompts cut to --max-prompt-length, "
                f"{self.responses_truncated} responses cut by --max-length (their EOS is lost)")
        if self.dropped_no_response:
            shown = ", ".join(self.dropped_no_response[:5]) + (" ..." if len(self.dropped_no_response) > 5 else "")
            text += f"; {len(self.dropped_no_response)} dropped (no response token left: {shown})"
        return text


@dataclass
class Split:
    """A tokenised JSONL split, with what evaluation needs besides the ids."""

    path: Path
    examples: list[TokenizedExample]
    prompts: list[str]
    references: list[list[str]]
    stats: DataStats


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def load_split(
    path: str | Path,
    tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    teacher_tokenizer=None,
    limit: int = -1,
    training: bool = True,
) -> Split:
    """Read and tokenise ``path`` as the official DSKD/ToDi code does.

    Prompt and response are tokenised separately without special tokens; the prompt keeps its
    last ``max_prompt_length`` tokens (the official code keeps the first ones, which cuts off the
    "### Response:" cue; generation keeps the last ones too, so training and evaluation see the same
    prompts); EOS is appended to the response; the concatenation is cut to ``max_length``. For training splits ``output`` must be a string; for dev splits a list is
    accepted (its first entry is the loss target, all entries are ROUGE-L references).

    With a ``teacher_tokenizer`` (one that differs from the student's), each example is tokenised
    again for the teacher and must be position-aligned with the student's: same prompt length and
    the same response ids; otherwise :class:`DataError` names the example.
    """
    path = Path(path)
    numbered = read_numbered(path)
    if limit is not None and limit >= 0:
        numbered = numbered[:limit]
    records = [record for _, record in numbered]
    where = [f"{path}:{n}" for n, _ in numbered]
    references = []
    for record, loc in zip(records, where):
        output = record["output"]
        if isinstance(output, list):
            if training:
                raise DataError(f"{loc}: field 'output' must be a string in training data, got a list")
            references.append(list(output))
        else:
            references.append([output])
    prompts = [r["prompt"] for r in records]
    responses = [refs[0] for refs in references]

    student = _tokenize(tokenizer, prompts, responses, max_length, max_prompt_length)
    teacher = None
    if teacher_tokenizer is not None:
        teacher = _tokenize(teacher_tokenizer, prompts, responses, max_length, max_prompt_length)

    stats = DataStats()
    examples, kept_prompts, kept_refs = [], [], []
    for i, (ids, prompt_len, cut_prompt, cut_response) in enumerate(student):
        example = TokenizedExample(ids, prompt_len, index=i)
        if example.num_targets <= 0:
            stats.dropped_no_response.append(where[i])
            continue
        if teacher is not None:
            t_ids, t_prompt_len, _, _ = teacher[i]
            _check_aligned(ids, prompt_len, t_ids, t_prompt_len, where[i])
            example.teacher_input_ids = t_ids
        stats.prompts_truncated += cut_prompt
        stats.responses_truncated += cut_response
        examples.append(example)
        kept_prompts.append(prompts[i])
        kept_refs.append(references[i])
    stats.examples = len(examples)
    if not examples:
        raise DataError(f"{path}: no usable example (every prompt fills --max-length {max_length})")
    return Split(path, examples, kept_prompts, kept_refs, stats)


def _tokenize(tokenizer, prompts, responses, max_length, max_prompt_length):
    """[(ids, prompt_len, prompt_was_cut, response_was_cut)] for each example."""
    eos = tokenizer.eos_token_id
    prefix = prompt_prefix_ids(tokenizer)  # Gemma's <bos>, as in generation; [] for the other families
    out = []
    for p, r in zip(_encode(tokenizer, prompts), _encode(tokenizer, responses)):
        cut_prompt = len(p) + len(prefix) > max_prompt_length
        p = prefix + p[len(p) - (max_prompt_length - len(prefix)):] if cut_prompt else prefix + p  # keep the end: the cue
        full = p + r + [eos]
        out.append((full[:max_length], len(p), cut_prompt, len(full) > max_length))
    return out


def _check_aligned(ids, prompt_len, t_ids, t_prompt_len, where: str) -> None:
    if t_prompt_len != prompt_len:
        raise DataError(
            f"{where}: the teacher's tokenizer gives the prompt {t_prompt_len} tokens and the student's "
            f"{prompt_len}; KD here needs position-aligned tokenisations (same vocabulary); "
            "cross-tokenizer KD is not supported"
        )
    if t_ids[prompt_len:] != ids[prompt_len:]:
        s_resp, t_resp = ids[prompt_len:], t_ids[prompt_len:]
        k = next((j for j, (a, b) in enumerate(zip(s_resp, t_resp)) if a != b), min(len(s_resp), len(t_resp)))
        raise DataError(
            f"{where}: the teacher's and the student's response tokens differ (lengths {len(t_resp)} and "
            f"{len(s_resp)}, first difference at response token {k}); KD here needs the same vocabulary "
            "(cross-tokenizer KD is not supported)"
        )


# --------------------------------------------------------------------------------------------
# Collation: right padding to the batch's longest sequence (multiple of 8) or to a fixed length.
# --------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """A micro-batch. Tensors are ``[B, L]``; ``labels[:, i]`` is the target of position ``i``.

    ``teacher_input_ids`` is None when the teacher reads ``input_ids`` (same tokenizer).
    ``num_tokens`` (supervised positions) and ``num_input_tokens`` (non-padding positions) are
    host-side counts, known without touching the device.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    teacher_input_ids: Tensor | None
    num_tokens: int
    num_input_tokens: int
    teacher_targets: tuple[Tensor, ...] | None = None  # a teacher cache's arrays (TeacherCache.batch_targets)
    examples: list | None = None  # the TokenizedExamples it was made of (host side: on-policy rollouts read prompts)

    @property
    def num_examples(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        targets = None if self.teacher_targets is None else tuple(move(t) for t in self.teacher_targets)
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.labels),
                     move(self.teacher_input_ids), self.num_tokens, self.num_input_tokens, targets, self.examples)

    def pin_memory(self) -> "Batch":
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        targets = None if self.teacher_targets is None else tuple(pin(t) for t in self.teacher_targets)
        return Batch(pin(self.input_ids), pin(self.attention_mask), pin(self.labels),
                     pin(self.teacher_input_ids), self.num_tokens, self.num_input_tokens, targets, self.examples)


def padded_width(lengths: list[int], *, multiple_of: int = 8, pad_to: int | None = None) -> int:
    """Width of a batch: ``pad_to`` if given, else the longest length rounded up to ``multiple_of``."""
    longest = max(lengths)
    if pad_to is not None:
        if longest > pad_to:
            raise ValueError(f"a sequence of {longest} positions does not fit the fixed width {pad_to}")
        return pad_to
    return -(-longest // multiple_of) * multiple_of


@dataclass
class Collator:
    """Turns :class:`TokenizedExample` lists into a :class:`Batch` (a DataLoader ``collate_fn``).

    pad_id / teacher_pad_id: the tokenizers' pad ids (EOS for GPT-2/Llama, as the official code).
    pad_to: a fixed width (the official code pads to ``max_length``); None pads to the longest
        sequence of the batch rounded up to ``multiple_of`` (same losses, far fewer positions).
    """

    pad_id: int
    teacher_pad_id: int | None = None
    pad_to: int | None = None
    multiple_of: int = 8
    teacher_cache: object | None = None  # a todi.cache.store.TeacherCache: batches carry its targets

    def __call__(self, examples: list[TokenizedExample]) -> Batch:
        width = padded_width([e.length for e in examples], multiple_of=self.multiple_of, pad_to=self.pad_to)
        n = len(examples)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        with_teacher = examples[0].teacher_input_ids is not None
        teacher_ids = torch.full((n, width), self.teacher_pad_id, dtype=torch.long) if with_teacher else None
        num_tokens = 0
        for i, e in enumerate(examples):
            ids = torch.tensor(e.input_ids, dtype=torch.long)
            length = e.length
            input_ids[i, :length] = ids[:-1]
            attention_mask[i, :length] = 1
            first = max(e.prompt_len, 1) - 1  # position whose target is the first response token
            labels[i, first:length] = ids[first + 1:]
            num_tokens += length - first
            if with_teacher:
                teacher_ids[i, :length] = torch.tensor(e.teacher_input_ids[:-1], dtype=torch.long)
        targets = self.teacher_cache.batch_targets(examples, labels) if self.teacher_cache is not None else None
        return Batch(input_ids, attention_mask, labels, teacher_ids, num_tokens, sum(e.length for e in examples),
                     targets, list(examples))
