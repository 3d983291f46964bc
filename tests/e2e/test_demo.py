"""The built-in demo: its data, tokenizer and models, and the training half of `make demo`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from _training import subprocess_env
from todi.tools import demo

REPO = Path(__file__).resolve().parents[2]


def test_examples_are_deterministic_and_correct():
    a, b = demo.make_examples(50, seed=3), demo.make_examples(50, seed=3)
    assert a == b and a != demo.make_examples(50, seed=4)
    assert len({r["prompt"] for r in a}) > 30
    for record in a:
        assert record["prompt"].startswith("### Instruction:\n") and record["prompt"].endswith("### Response:\n")
        instruction = record["prompt"].split("\n")[1]
        if instruction.startswith("Sort these numbers"):
            numbers = [int(x) for x in instruction.split(": ")[1].rstrip(".").split(", ")]
            assert record["output"] == ", ".join(map(str, sorted(numbers))) + "."
        if instruction.startswith("What is the capital of"):
            country = instruction[len("What is the capital of "):-1]
            assert record["output"] == f"The capital of {country} is {demo.CAPITALS[country]}."
        if " plus " in instruction:
            x, y = (int(t) for t in instruction[len("What is "):-1].split(" plus "))
            assert record["output"].endswith(f"is {x + y}.")


def test_prepare_writes_data_tokenizer_and_models(tmp_path):
    from todi.data.instructions import load_split
    from todi.models import load_model, load_tokenizer

    paths = demo.prepare(tmp_path, n_train=60, n_dev=10, n_valid=12)
    for name, n in (("train", 60), ("dev", 10), ("valid", 12)):
        lines = (paths["data"] / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == n and all({"prompt", "output"} <= json.loads(x).keys() for x in lines)
    tok = load_tokenizer(paths["student"])
    assert len(tok) <= 1000 and tok.pad_token_id == tok.eos_token_id
    text = "### Instruction:\nWhat sound does a cow make?\n\n### Response:\nA cow says moo."
    assert tok.decode(tok.encode(text)) == text
    teacher, student = load_model(paths["teacher"]), load_model(paths["student"])
    assert teacher.num_parameters() > 3 * student.num_parameters()
    assert teacher.get_output_embeddings().weight.shape[0] == len(tok) == load_tokenizer(paths["teacher"]).vocab_size
    split = load_split(paths["data"] / "train.jsonl", tok, max_length=512, max_prompt_length=256)
    assert split.stats.dropped_no_response == [] and max(e.length for e in split.examples) < 64


@pytest.mark.slow
def test_demo_trains_teacher_and_distils_the_student(tmp_path):
    """`make demo` minus the evaluation (the eval scripts are tested with the evaluation code)."""
    env = {**subprocess_env(), "DEMO_DIR": str(tmp_path / "demo"), "RUN_EVAL": "0", "STUDENT_SFT": "0", "NUM_TRAIN": "64",
           "NUM_DEV": "8", "NUM_VALID": "8", "TEACHER_EPOCHS": "1", "STUDENT_EPOCHS": "1"}
    result = subprocess.run(["bash", str(REPO / "scripts/demo/run_demo.sh")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = tmp_path / "demo" / "runs"
    teacher = [p for p in (runs / "teacher_sft").iterdir() if p.name.startswith("epoch1_step2_")]
    student = [p for p in (runs / "student_kd_ToDi").iterdir() if p.name.startswith("epoch1_step2_")]
    assert len(teacher) == len(student) == 1
    args = json.loads((runs / "student_kd_ToDi" / "args.json").read_text())
    assert args["teacher_model_path"] == str(teacher[0]) and args["kd_objective"] == "ToDi"
    assert args["world_size"] == 2 and args["precision"] == "fp32"
    assert "demo finished" in result.stdout


def test_demo_never_deletes_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run(["bash", str(REPO / "scripts/demo/run_demo.sh")],
                            env=subprocess_env(DEMO_DIR=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not made by the demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_an_invalid_setting_fails_in_seconds_before_anything_is_built(tmp_path):
    """KD_OBJ through the objective registry, its parameters and the other variables: one clear last line."""
    for extra, last in (
        ({"KD_OBJ": "todii"}, "error: KD_OBJ=todii (PLUGINS=): unknown divergence 'todii'; valid names: forward_kl"),
        ({"GJSD_BETA": "0.3"}, "error: KD_OBJ=ToDi with its parameter variables and OBJ_ARGS: --gjsd-beta is a "
                               "parameter of generalized_jsd, not of ToDi"),
        ({"STUDENT_EPOCHS": "five"}, "error: STUDENT_EPOCHS=five: expected a whole number >= 1"),
    ):
        result = subprocess.run(["bash", str(REPO / "scripts/demo/run_demo.sh")],
                                env=subprocess_env(DEMO_DIR=str(tmp_path / "demo"), **extra),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(last), result.stderr
        assert not (tmp_path / "demo").exists()


def test_a_rerun_keeps_the_earlier_demo_unless_forced(tmp_path):
    settings = {"num_train": 20, "num_dev": 4, "num_valid": 4, "seed": 0}
    assert demo.prepare_dir(tmp_path / "d", settings) is False
    (tmp_path / "d" / "runs" / "student_kd_ToDi").mkdir(parents=True)  # an earlier objective's results
    demo.main([str(tmp_path / "d"), "--num-train", "20", "--num-dev", "4", "--num-valid", "4"])
    assert demo.prepare_dir(tmp_path / "d", settings) is True  # built: reused, its runs kept
    assert (tmp_path / "d" / "runs" / "student_kd_ToDi").is_dir()
    with pytest.raises(demo.DemoError, match="other data settings .* FORCE=1 deletes it"):
        demo.prepare_dir(tmp_path / "d", {**settings, "num_train": 40})
    assert demo.prepare_dir(tmp_path / "d", {**settings, "num_train": 40}, force=True) is False
    assert not (tmp_path / "d" / "runs").exists()
