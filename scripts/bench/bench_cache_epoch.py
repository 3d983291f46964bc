"""Epoch time of SFT, live KD and KD from a teacher cache (top-k and hidden-state), as ratios
measured in one run.

A tiny pair with the real GPT-2 vocabulary whose teacher/student FLOP ratio is GPT-2 XL/base's
(~12×: the teacher's forward is most of a KD step), real Dolly lines, one process. Each run goes
through ``code/distillation.py`` (the cache through ``code/cache_teacher.py``); the step time is the
median of the logged ``step_time`` (evaluation and saving excluded), the epoch time its sum.

    python scripts/bench/bench_cache_epoch.py --data ../shared/data/dolly --num 256 --out outputs/bench/cache_epoch.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "code"))

from todi.util.atomic import atomic_write_text  # noqa: E402

STUDENT = dict(n_layer=2, n_embd=64, n_head=2)  # GPT-2 base, scaled down
TEACHER = dict(n_layer=4, n_embd=512, n_head=8)  # ~12× the student's FLOPs per token (lm_head included)


def params_per_token(cfg: dict, vocab: int) -> int:
    """Weights a token multiplies through (≈ FLOPs / 2): the blocks and the output layer."""
    return cfg["n_layer"] * 12 * cfg["n_embd"] ** 2 + vocab * cfg["n_embd"]


def run(cmd: list[str], log: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    start = time.perf_counter()
    with log.open("w") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - start


def _records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("split") == "train" and "step_time" in r]


def step_times(run_dir: Path) -> list[float]:
    return [r["step_time"] for r in _records(run_dir)][1:]  # no warm-up


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/dolly", help="directory with train.jsonl")
    p.add_argument("--num", type=int, default=256, help="training examples (one epoch)")
    p.add_argument("--model-hub", type=Path, default=REPO.parent / "shared/model_hub/gpt2/gpt2-base")
    p.add_argument("--work", type=Path, default=REPO / "outputs/bench/cache_epoch")
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--objective", default="ToDi")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from todi.models import save_random_model

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    student = save_random_model(args.model_hub, work / "student", seed=0, **STUDENT)
    teacher = save_random_model(args.model_hub, work / "teacher", seed=1, **TEACHER)
    data = work / "data"
    data.mkdir(exist_ok=True)
    lines = (args.data / "train.jsonl").read_text(encoding="utf-8").splitlines()[: args.num]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = 50257
    ratio = params_per_token(TEACHER, vocab) / params_per_token(STUDENT, vocab)
    common = ["--model-path", str(student), "--data-dir", str(data), "--do-train", "--lr", "1e-3",
              "--batch-size", str(args.batch_size), "--num-epochs", "1", "--log-interval", "1",
              "--max-length", str(args.max_length), "--max-prompt-length", str(args.max_length // 2),
              "--num-workers", "0", "--deepspeed_config", str(REPO / "configs/deepspeed/ds_config_zero1_fp32.json"),
              "--save-interval", "1000", "--no-resume"]
    kd = ["--criterion", "various_divergence", "--kd-objective", args.objective, "--kd-temperature", "2.0"]
    py = [sys.executable]
    cache = work / "cache"
    walls = {}
    walls["sft"] = run(py + [str(REPO / "code/distillation.py"), *common, "--save-dir", str(work / "sft")], work / "sft.log")
    walls["live_kd"] = run(py + [str(REPO / "code/distillation.py"), *common, *kd, "--teacher-model-path", str(teacher),
                                 "--save-dir", str(work / "live")], work / "live.log")
    build = [str(REPO / "code/cache_teacher.py"), "--teacher-model-path", str(teacher), "--data-dir", str(data),
             "--max-length", str(args.max_length), "--max-prompt-length", str(args.max_length // 2), "--overwrite",
             "--batch-size", str(args.batch_size)]
    walls["cache_build"] = run(py + build + ["--out", str(cache), "--top-k", str(args.top_k), "--kd-temperature", "2.0"],
                               work / "cache.log")
    walls["hidden_build"] = run(py + build + ["--out", str(work / "hidden"), "--mode", "hidden"], work / "hidden.log")
    walls["cached_kd"] = run(py + [str(REPO / "code/distillation.py"), *common, *kd, "--teacher-cache", str(cache),
                                   "--save-dir", str(work / "cached")], work / "cached.log")
    walls["hidden_kd"] = run(py + [str(REPO / "code/distillation.py"), *common, *kd, "--teacher-cache",
                                   str(work / "hidden"), "--save-dir", str(work / "hidden_run")], work / "hidden_run.log")
    runs = (("sft", "sft"), ("live_kd", "live"), ("cached_kd", "cached"), ("hidden_kd", "hidden_run"))
    steps = {name: step_times(work / d) for name, d in runs}
    median = {k: statistics.median(v) for k, v in steps.items()}
    epoch = {k: sum(v) for k, v in steps.items()}
    losses = {name: [r["loss"] for r in _records(work / d)] for name, d in (("live_kd", "live"), ("hidden_kd", "hidden_run"))}
    gap = max(abs(a - b) / abs(a) for a, b in zip(losses["live_kd"], losses["hidden_kd"]))
    result = {"flop_ratio": round(ratio, 1), "steps": len(steps["sft"]), "median_step_s": median, "epoch_s": epoch,
              "wall_s": walls, "cached_over_sft": epoch["cached_kd"] / epoch["sft"],
              "hidden_over_sft": epoch["hidden_kd"] / epoch["sft"], "live_over_sft": epoch["live_kd"] / epoch["sft"],
              "live_over_cached": epoch["live_kd"] / epoch["cached_kd"],
              "hidden_vs_live_max_rel_loss_difference": gap,
              "cache_build_over_live_teacher_part": walls["cache_build"] / max(epoch["live_kd"] - epoch["sft"], 1e-9)}
    print(json.dumps(result, indent=1))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
