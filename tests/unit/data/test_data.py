"""Tokenisation (official semantics, teacher view, errors), collation, and the epoch plan."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from todi.data.batching import epoch_plan
from todi.data.instructions import IGNORE_INDEX, Collator, DataError, load_split, padded_width
from todi.models import load_tokenizer


@pytest.fixture(scope="module")
def gpt2_tok(shared_dir):
    return load_tokenizer(shared_dir / "model_hub/gpt2/gpt2-base")


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_official_tokenisation_and_labels(tmp_path, gpt2_tok):
    path = write(tmp_path / "train.jsonl", [{"prompt": "Say hi to Bob.\n", "output": "Hi Bob, nice to meet you."}])
    split = load_split(path, gpt2_tok, max_length=64, max_prompt_length=32)
    prompt = gpt2_tok.encode("Say hi to Bob.\n", add_special_tokens=False)
    response = gpt2_tok.encode("Hi Bob, nice to meet you.", add_special_tokens=False)
    ex = split.examples[0]
    assert ex.input_ids == prompt + response + [gpt2_tok.eos_token_id]
    assert ex.prompt_len == len(prompt) and ex.num_targets == len(response) + 1

    batch = Collator(pad_id=gpt2_tok.pad_token_id)([ex])
    n = len(ex.input_ids) - 1
    assert batch.input_ids[0, :n].tolist() == ex.input_ids[:-1]
    assert batch.attention_mask[0].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
    labels = batch.labels[0].tolist()
    # labels[i] is the target of position i: the response and EOS only, aligned with the logits
    assert labels[: len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)
    assert labels[len(prompt) - 1: n] == response + [gpt2_tok.eos_token_id]
    assert set(labels[n:]) <= {IGNORE_INDEX}
    assert batch.num_tokens == len(response) + 1 == sum(x != IGNORE_INDEX for x in labels)


def test_truncation_is_counted_and_examples_without_response_are_dropped(tmp_path, gpt2_tok):
    long_prompt = "word " * 40
    path = write(tmp_path / "train.jsonl", [
        {"prompt": "short\n", "output": "answer " * 30},  # response cut: EOS lost
        "",
        {"prompt": long_prompt, "output": "ok"},  # prompt cut to 16, fits
        {"prompt": "x " * 10, "output": "y"},
    ])
    split = load_split(path, gpt2_tok, max_length=20, max_prompt_length=16)
    assert split.stats.responses_truncated == 1 and split.stats.prompts_truncated == 1
    assert [len(e.input_ids) for e in split.examples][0] == 20
    # the prompt keeps its end (where the answer cue is), as generation does
    assert split.examples[1].input_ids[:16] == gpt2_tok.encode(long_prompt, add_special_tokens=False)[-16:]
    assert split.examples[1].input_ids[:16] != gpt2_tok.encode(long_prompt, add_special_tokens=False)[:16]
    # max_length == max_prompt_length + ...: a prompt filling max_length has no response token left
    split = load_split(path, gpt2_tok, max_length=16, max_prompt_length=16)
    assert split.stats.dropped_no_response == [f"{path}:3"]
    assert "1 dropped" in split.stats.summary("train") and f"{path}:3" in split.stats.summary("train")


@pytest.mark.parametrize("bad,message", [
    ('{"prompt": "p", "output": ["a", "b"]}', "train.jsonl:3: field 'output' must be a string in training data"),
    ('{"prompt": "p"}', "train.jsonl:3: missing field 'output'"),
    ('{"prompt": "p", "output": "o"', "train.jsonl:3: malformed JSON"),
])
def test_bad_lines_name_file_and_line(tmp_path, gpt2_tok, bad, message):
    path = write(tmp_path / "train.jsonl", [{"prompt": "p", "output": "o"}, "", bad])
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        load_split(path, gpt2_tok, max_length=32, max_prompt_length=16)


def test_empty_file_and_no_usable_example(tmp_path, gpt2_tok):
    with pytest.raises(DataError, match="empty file"):
        load_split(write(tmp_path / "train.jsonl", [""]), gpt2_tok, max_length=32, max_prompt_length=16)
    path = write(tmp_path / "dev.jsonl", [{"prompt": "a b c d e f g h", "output": "x"}])
    with pytest.raises(DataError, match="no usable example"):
        load_split(path, gpt2_tok, max_length=4, max_prompt_length=4)


def test_dev_split_keeps_all_references(tmp_path, gpt2_tok):
    path = write(tmp_path / "dev.jsonl", [{"prompt": "p\n", "output": ["first answer", "second"]}])
    split = load_split(path, gpt2_tok, max_length=32, max_prompt_length=16, training=False)
    assert split.references == [["first answer", "second"]] and split.prompts == ["p\n"]
    assert split.examples[0].input_ids[-1] == gpt2_tok.eos_token_id
    assert gpt2_tok.decode(split.examples[0].input_ids[split.examples[0].prompt_len:-1]) == "first answer"


def test_teacher_view_with_an_aligned_tokenizer(tmp_path, shared_dir, gpt2_tok):
    """A teacher tokenizer that differs (an added special token) but gives the same ids is accepted."""
    teacher_tok = load_tokenizer(shared_dir / "model_hub/gpt2/gpt2-base")
    teacher_tok.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    path = write(tmp_path / "train.jsonl", [{"prompt": "Hello there.\n", "output": "General Kenobi."}])
    split = load_split(path, gpt2_tok, max_length=32, max_prompt_length=16, teacher_tokenizer=teacher_tok)
    ex = split.examples[0]
    assert ex.teacher_input_ids == ex.input_ids
    batch = Collator(pad_id=gpt2_tok.pad_token_id, teacher_pad_id=teacher_tok.pad_token_id)([ex, ex])
    assert torch.equal(batch.teacher_input_ids, batch.input_ids)


def test_misaligned_teacher_tokenizer_names_the_example(tmp_path, shared_dir, gpt2_tok):
    llama_tok = load_tokenizer(shared_dir / "model_hub/tinyllama/tinyllama-1.1b-3T")
    path = write(tmp_path / "train.jsonl", ["", {"prompt": "Hello there.\n", "output": "General Kenobi."}])
    with pytest.raises(DataError, match=r"train.jsonl:2: the teacher's .*cross-tokenizer KD is not supported"):
        load_split(path, gpt2_tok, max_length=32, max_prompt_length=16, teacher_tokenizer=llama_tok)


def test_padding_width():
    assert padded_width([3, 9, 5]) == 16 and padded_width([8]) == 8 and padded_width([1]) == 8
    assert padded_width([3, 9], pad_to=511) == 511
    with pytest.raises(ValueError, match="does not fit"):
        padded_width([600], pad_to=511)


# ------------------------------------------------------------------------------ epoch plan

LENGTHS = [((i * 37) % 101) + 1 for i in range(203)]


def plan(**kw):
    args = dict(seed=10, epoch=0, batch_size=4, world_size=2, grad_accum=3)
    args.update(kw)
    return epoch_plan(LENGTHS, **args)


@pytest.mark.parametrize("group", [False, True])
def test_plan_is_a_deterministic_partition(group):
    p = plan(group_by_length=group)
    per_step = 4 * 2 * 3
    assert len(p) == len(LENGTHS) // per_step and p.skipped == len(LENGTHS) % per_step
    flat = [i for step in p.steps for micro in step for i in micro]
    assert len(flat) == len(set(flat)) == len(p) * per_step
    assert p.steps == plan(group_by_length=group).steps
    assert p.steps != plan(group_by_length=group, epoch=1).steps != plan(group_by_length=group, seed=11).steps
    # each rank gets grad_accum micro-batches per step; together they are the step
    r0, r1 = p.rank_batches(0), p.rank_batches(1)
    assert len(r0) == len(r1) == len(p) * 3
    assert sorted(i for b in r0[:3] + r1[:3] for i in b) == sorted(i for m in p.steps[0] for i in m)
    assert p.rank_batches(1, start_step=2) == r1[6:]


def test_step_contents_depend_only_on_the_global_batch():
    a = plan(batch_size=4, world_size=2, grad_accum=3)
    b = plan(batch_size=2, world_size=1, grad_accum=12)
    c = plan(batch_size=6, world_size=4, grad_accum=1)
    sets = lambda p: [sorted(i for m in s for i in m) for s in p.steps]  # noqa: E731
    assert sets(a) == sets(b) == sets(c)


def test_group_by_length_reduces_padding_and_balances_ranks():
    def padding(p):
        return sum(max(LENGTHS[i] for i in m) * len(m) - sum(LENGTHS[i] for i in m) for s in p.steps for m in s)

    grouped, shuffled = plan(group_by_length=True, batch_size=4), plan(batch_size=4)
    assert padding(grouped) < padding(shuffled) / 3
    # the same examples over the epoch, in a different grouping
    members = lambda p: Counter(i for s in p.steps for m in s for i in m)  # noqa: E731
    assert members(grouped) == members(shuffled)
    # steps come in a random length order, not sorted
    longest = [max(LENGTHS[i] for m in s for i in m) for s in grouped.steps]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_too_few_examples_for_one_step():
    with pytest.raises(ValueError, match="do not fill one optimizer step"):
        epoch_plan([5] * 7, seed=0, epoch=0, batch_size=4, world_size=2, grad_accum=1)
