"""Throughput of the training loop: this project's (several modes) and, optionally, the official one.

Builds random-weight student and teacher models from configs given by path (plus overrides), takes
real training lines from a JSONL file, and runs each loop for WARMUP + STEPS optimizer steps (or
one epoch with STEPS=0) through its real entry point under torchrun. The timed window starts after
the WARMUP steps. Modes of this project's loop:

* ``official-style``: the official collation and loss (``--pad-to-max-length --kd-impl reference``);
* ``default``: dynamic padding and the default (memory-efficient) loss;
* ``grouped``: ``default`` with ``--group-by-length`` (batches of similar length: the same
  per-example losses, other batch compositions);
* ``sft``: cross-entropy only (no teacher), the floor a KD step cannot beat.

This project's numbers come from its metrics.jsonl (counted examples and non-padding tokens,
wall time between two log points, peak GPU memory). The official loop logs the mean step time
over each log interval; its tokens/s is examples/s × the data's mean non-padding tokens per
example (the same examples make up an epoch for every loop). Run by scripts/bench/bench_epoch.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "code"))

MODES = {
    "official-style": ["--pad-to-max-length", "--kd-impl", "reference"],
    "default": [],
    "grouped": ["--group-by-length"],
    "sft": ["--criterion", "cross_entropy"],
}


def parse_overrides(text: str) -> dict:
    """``"n_layer=48,n_embd=1600"`` → ``{"n_layer": 48, "n_embd": 1600}`` (numbers parsed as JSON); "none" → {}."""
    out = {}
    if text.strip() == "none":
        return out
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_models(args, out: Path) -> tuple[Path, Path]:
    from todi.models import save_random_model

    student = save_random_model(args.student_config, out / "student", seed=0, **parse_overrides(args.student_overrides))
    teacher = save_random_model(args.teacher_config, out / "teacher", seed=1, **parse_overrides(args.teacher_overrides))
    return student, teacher


def prepare_data(args, out: Path, global_batch: int) -> tuple[Path, int]:
    """train.jsonl with exactly the lines the run needs (all of them for an epoch), dev.jsonl for the official code."""
    lines = [line for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.steps > 0:
        need = (args.warmup + args.steps) * global_batch
        if len(lines) < need:
            raise SystemExit(f"{args.data}: {len(lines)} lines, {need} needed for {args.warmup}+{args.steps} steps")
        lines = lines[:need]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "dev.jsonl").write_text("\n".join(lines[:8]) + "\n", encoding="utf-8")
    return out, len(lines)


def mean_tokens_per_example(student: Path, data: Path, max_length: int, max_prompt_length: int) -> float:
    from todi.data.instructions import load_split
    from todi.models import load_tokenizer

    split = load_split(data / "train.jsonl", load_tokenizer(student), max_length=max_length,
                       max_prompt_length=max_prompt_length)
    return sum(e.length for e in split.examples) / len(split.examples)


def torchrun(args, script: Path, argv: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
           "--master_port", str(args.master_port), str(script), *argv]
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=script.parent)
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{script.name} failed (exit {result.returncode}); see {log}:\n{tail}")


def run_ours(args, mode: str, student: Path, teacher: Path, data: Path, out: Path) -> dict:
    run_dir = out / f"run-{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [
        "--model-path", student, "--data-dir", data, "--save-dir", run_dir, "--do-train",
        "--lr", "5e-4", "--batch-size", args.batch_size, "--gradient-accumulation-steps", args.grad_acc,
        "--num-epochs", "1", "--max-length", args.max_length, "--max-prompt-length", args.max_prompt_length,
        "--lr-decay-style", "cosine", "--weight-decay", "1e-2", "--clip-grad", "1.0", "--seed", "10",
        "--num-workers", "0", "--log-interval", args.warmup, "--state-interval", "0",
        "--deepspeed_config", args.ds_config, *MODES[mode], *args.extra,
    ]
    if mode != "sft":
        argv += ["--teacher-model-path", teacher, "--criterion", "various_divergence", "--kd-objective", args.kd_obj,
                 "--kd-rate", "0.5", "--kd-temperature", "2.0"]
    torchrun(args, REPO / "code/distillation.py", [str(a) for a in argv], out / f"{mode}.log")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["split"] == "train"]
    timed = [r for r in records if r["step"] > args.warmup]
    if not timed:
        raise SystemExit(f"{mode}: no log point after the {args.warmup} warm-up steps (too few steps)")
    seconds = timed[-1]["elapsed"] - records[0]["elapsed"]
    steps = timed[-1]["step"] - records[0]["step"]
    examples, tokens = sum(r["examples"] for r in timed), sum(r["input_tokens"] for r in timed)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"loop": f"todi {mode}", "steps": steps, "seconds": seconds, "examples_per_s": examples / seconds,
            "tokens_per_s": tokens / seconds, "step_ms": 1000 * seconds / steps,
            "peak_gib": max((r.get("max_memory_gib", 0.0) for r in records), default=0.0) or None}


def run_official(args, student: Path, teacher: Path, data: Path, out: Path, tokens_per_example: float) -> dict:
    entry = Path(args.official_dir) / "code" / "distillation.py"
    if not entry.is_file():
        raise SystemExit(f"OFFICIAL_DIR: {entry} not found (a checkout of the official ToDi/DSKD code)")
    save = out / "run-official"
    shutil.rmtree(save, ignore_errors=True)
    save.mkdir(parents=True)
    argv = [
        "--model-path", student, "--model-type", "gpt2", "--teacher-model-path", teacher,
        "--teacher-model-type", "gpt2", "--data-dir", data, "--num-workers", "0", "--task", "vanilla_kd",
        "--lr", "5e-4", "--batch-size", args.batch_size, "--eval-batch-size", "8",
        "--gradient-accumulation-steps", args.grad_acc, "--warmup-iters", "0", "--lr-decay-style", "cosine",
        "--weight-decay", "1e-2", "--clip-grad", "1.0", "--num-epochs", "1", "--kd-rate", "0.5",
        "--kd-temperature", "2.0", "--kd-objective", args.kd_obj, "--max-length", args.max_length,
        "--max-prompt-length", args.max_prompt_length, "--do-train", "--save-interval", "1000000",
        "--eval-interval", "1000000", "--log-interval", args.warmup, "--save-dir", save,
        "--keep-best-n-checkpoints", "1", "--criterion", "various_divergence", "--seed", "10",
        # the official bf16 config is rejected by current DeepSpeed: the equivalent valid one
        "--deepspeed", "--deepspeed_config", args.ds_config,
    ]
    log = out / "official.log"
    torchrun(args, entry, [str(a) for a in argv], log)
    step_times = [float(t) for t in re.findall(r"step_time=([0-9.]+)", log.read_text())]
    if len(step_times) < 2:
        raise SystemExit(f"official loop: fewer than two log intervals in {log}")
    step = sum(step_times[1:]) / len(step_times[1:])  # the first interval holds the warm-up
    global_batch = int(args.batch_size) * int(args.grad_acc) * args.nproc
    if not args.keep:
        shutil.rmtree(save, ignore_errors=True)
    steps = len(step_times[1:]) * int(args.warmup)
    return {"loop": "official", "steps": steps, "seconds": step * steps, "examples_per_s": global_batch / step,
            "tokens_per_s": global_batch / step * tokens_per_example, "step_ms": 1000 * step, "peak_gib": None}


def table(rows: list[dict], baseline: str) -> str:
    base = next((r for r in rows if r["loop"] == baseline), rows[0])
    lines = ["| loop | timed steps | step (ms) | examples/s | tokens/s | peak GPU memory (GiB) | speed-up vs " + base["loop"] + " |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] else "–"
        lines.append(f"| {r['loop']} | {r['steps']} | {r['step_ms']:.1f} | {r['examples_per_s']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {peak} | {r['examples_per_s'] / base['examples_per_s']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student-config", required=True)
    p.add_argument("--teacher-config", required=True)
    p.add_argument("--student-overrides", default="")
    p.add_argument("--teacher-overrides", default="")
    p.add_argument("--data", required=True, help="training JSONL (prompt, output)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps; 0: one epoch")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first; also the log interval")
    p.add_argument("--batch-size", default="8")
    p.add_argument("--grad-acc", default="1")
    p.add_argument("--max-length", default="512")
    p.add_argument("--max-prompt-length", default="256")
    p.add_argument("--kd-obj", default="ToDi")
    p.add_argument("--ds-config", required=True)
    p.add_argument("--modes", default="official-style default")
    p.add_argument("--official-dir", default="")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--master-port", type=int, default=29600)
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("extra", nargs="*", help="more flags for this project's runs (after --)")
    args = p.parse_args(argv)
    if args.steps and args.steps % args.warmup:
        args.steps += args.warmup - args.steps % args.warmup  # whole log intervals
        print(f"timing {args.steps} steps (a multiple of the {args.warmup}-step log interval)")
    modes = args.modes.split()
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    student, teacher = build_models(args, out / "models")
    global_batch = int(args.batch_size) * int(args.grad_acc) * args.nproc
    data, n_lines = prepare_data(args, out / "data", global_batch)
    rows = []
    for mode in modes:
        print(f"running this project's loop, {mode} ...", flush=True)
        rows.append(run_ours(args, mode, student, teacher, data, out))
    if args.official_dir:
        print("running the official loop ...", flush=True)
        tpe = mean_tokens_per_example(student, data, int(args.max_length), int(args.max_prompt_length))
        rows.append(run_official(args, student, teacher, data, out, tpe))
    baseline = "official" if args.official_dir else "todi official-style"
    print(f"\n{n_lines} training examples, global batch {global_batch}, max length {args.max_length}, "
          f"KD objective {args.kd_obj} (sft: CE only), DeepSpeed config {Path(args.ds_config).name}\n")
    report = table(rows, baseline)
    print(report)
    (out / "bench.md").write_text(report + "\n")
    (out / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
