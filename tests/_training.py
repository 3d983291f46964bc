"""Helpers shared by the training tests: tiny models without dropout, real Dolly lines, run commands,
and an independent computation of a run's first-step loss."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Tiny, and without dropout: a run's losses are then a pure function of data and weights.
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
SMALL_GPT2 = dict(n_layer=2, n_embd=32, n_head=2, n_positions=512, **NO_DROPOUT)


DIST_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def subprocess_env(**extra: str) -> dict:
    """os.environ without the process-group variables of the in-process runs (their port is taken)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env.update(extra)
    return env


def make_gpt2_pair(shared_dir: Path, out: Path) -> tuple[Path, Path]:
    from todi.models import save_random_model

    gpt2 = shared_dir / "model_hub/gpt2/gpt2-base"
    student = save_random_model(gpt2, out / "student", seed=0, **SMALL_GPT2)
    teacher = save_random_model(gpt2, out / "teacher", seed=1, **{**SMALL_GPT2, "n_embd": 48})
    return student, teacher


def make_dolly(shared_dir: Path, out: Path, n_train: int = 16, n_dev: int = 4) -> Path:
    """The first lines of the real Dolly train/dev files."""
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        with open(shared_dir / f"data/dolly/{name}.jsonl", encoding="utf-8") as f:
            lines = [next(f) for _ in range(n)]
        (out / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    return out


CUT_SHORT = '{"prompt": "a line cut short", "output": \n'  # malformed JSON


def make_bad_dolly(shared_dir: Path, out: Path) -> Path:
    """A 4-example Dolly copy whose train.jsonl line 3 is malformed JSON (``CUT_SHORT``)."""
    make_dolly(shared_dir, out, n_train=4, n_dev=2)
    lines = (out / "train.jsonl").read_text().splitlines(keepends=True)
    lines[2] = CUT_SHORT
    (out / "train.jsonl").write_text("".join(lines))
    return out


def cli(student, data_dir, save_dir, *, teacher=None, objective=None, config="ds_config_zero1_fp32.json", **flags):
    """The command line of a short run; ``flags`` override (None drops a flag, True is a switch)."""
    opts = {
        "model-path": student, "data-dir": data_dir, "save-dir": save_dir, "do-train": True,
        "lr": 1e-3, "batch-size": 2, "gradient-accumulation-steps": 2, "num-epochs": 1, "log-interval": 1,
        "max-length": 64, "max-prompt-length": 48, "num-workers": 0, "seed": 10, "lr-decay-style": "cosine",
        "deepspeed_config": REPO / "configs/deepspeed" / config,
    }
    if teacher is not None:
        opts.update({"teacher-model-path": teacher, "criterion": "various_divergence", "kd-objective": objective,
                     "kd-temperature": 2.0})
    opts.update({k.replace("_", "-") if k != "deepspeed_config" else k: v for k, v in flags.items()})
    argv = []
    for key, value in opts.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key}")
        if value is not True:
            argv.append(str(value))
    return argv


def read_metrics(run_dir: Path, split: str = "train") -> list[dict]:
    """Records of ``split``; a step logged twice (a resumed run redoes steps) keeps its last record."""
    by_step = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.pop("split") == split:
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


@torch.no_grad()
def first_step_loss(student, data_dir, *, teacher=None, objective=None, kd_rate=0.5, temperature=2.0, params=None,
                    batch_size=2, grad_accum=2, world_size=1, seed=10, max_length=64, max_prompt_length=48,
                    train_num=-1, teacher_adapter=None, group_by_length=False) -> float:
    """The loss of the first optimizer step, per response token, computed outside the trainer."""
    from todi.data.batching import epoch_plan
    from todi.loss.criterion import DistillationLoss
    from todi.data.instructions import Collator, load_split
    from todi.models import load_model, load_tokenizer

    tok = load_tokenizer(student)
    split = load_split(Path(data_dir) / "train.jsonl", tok, max_length=max_length,
                       max_prompt_length=max_prompt_length, limit=train_num)
    plan = epoch_plan([e.length for e in split.examples], seed=seed, epoch=0, batch_size=batch_size,
                      world_size=world_size, grad_accum=grad_accum, group_by_length=group_by_length)
    collate = Collator(pad_id=tok.pad_token_id)
    s_model = load_model(student).eval()
    t_model = None
    if teacher is not None:
        t_model = load_model(teacher, adapter_path=teacher_adapter, merge_adapter=True).eval()
        criterion = DistillationLoss(objective, kd_rate=kd_rate, temperature=temperature, **(params or {}))
    else:
        criterion = DistillationLoss(None, kd_rate=0.0)
    total, tokens = 0.0, 0
    for micro in plan.steps[0]:
        batch = collate([split.examples[i] for i in micro])
        logits = s_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        t_logits = None
        if t_model is not None:
            t_logits = t_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        out = criterion(logits, batch.labels, t_logits)
        total += out.loss.item()
        tokens += int(out.num_tokens)
    return total / tokens
