"""How close distilling from a top-k teacher cache is to distilling from the live teacher.

For every registered objective (at its defaults) and every k, on the response tokens of real
examples: the relative error of the cached loss against the live one, |L_k − L| / L, and the cosine
between the gradients (with respect to the student's logits) of the two. The teacher's targets are
built exactly as ``code/cache_teacher.py`` builds them (fp16 storage included).

    python scripts/bench/bench_cache_fidelity.py --teacher T --student S --data data/dolly/train.jsonl \\
        --num 64 --temperature 2.0 --ks 8 32 128 512 --out outputs/bench/cache_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "code"))

from todi.util.atomic import atomic_write_text  # noqa: E402
from todi.loss.criterion import DistillationLoss  # noqa: E402
from todi.data.instructions import Collator, load_split  # noqa: E402
from todi.kernels import SparseTargets  # noqa: E402
from todi.models import load_model, load_tokenizer  # noqa: E402
from todi.objectives import all_objectives  # noqa: E402
from todi.util.plugins import load_plugins  # noqa: E402
from todi.cache.build import teacher_targets  # noqa: E402
from todi.cache.store import DTYPES  # noqa: E402


@torch.no_grad()
def logits_of(teacher, student, data: Path, num: int, max_length: int, max_prompt_length: int, batch_size: int):
    """(student logits [N, V], teacher logits [N, V]) over the response tokens of ``num`` examples."""
    tok = load_tokenizer(student.name_or_path)
    split = load_split(data, tok, limit=num, max_length=max_length, max_prompt_length=max_prompt_length)
    collate = Collator(pad_id=tok.pad_token_id)
    rows_s, rows_t = [], []
    for start in range(0, len(split.examples), batch_size):
        batch = collate(split.examples[start : start + batch_size])
        mask = batch.labels.ne(-100)
        for model, rows in ((student, rows_s), (teacher, rows_t)):
            rows.append(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[mask].float())
    vocab = min(rows_s[0].shape[-1], rows_t[0].shape[-1])
    return torch.cat(rows_s)[:, :vocab], torch.cat(rows_t)[:, :vocab]


def fidelity(name: str, student: torch.Tensor, teacher: torch.Tensor, k: int, temperature: float, dtype: str):
    """(relative loss error, gradient cosine) of the top-k cache against the live teacher."""
    labels = torch.zeros(student.shape[0], dtype=torch.long)  # unused: kd_rate 1
    crit = DistillationLoss(name, kd_rate=1.0, temperature=temperature)

    def run(**teacher_kw):
        leaf = student.clone().requires_grad_(True)
        loss = crit(leaf, labels, **teacher_kw).loss
        loss.backward()
        return float(loss), leaf.grad.flatten().double()

    live, g_live = run(teacher_logits=teacher)
    ids, log_probs = teacher_targets(teacher, k, temperature)
    stored = torch.from_numpy(log_probs.numpy().astype(DTYPES[dtype]).astype(np.float32))  # the cache's rounding
    cached, g_cached = run(teacher_sparse=SparseTargets(ids, stored, temperature))
    cosine = float(torch.nn.functional.cosine_similarity(g_live, g_cached, dim=0))
    return abs(cached - live) / max(abs(live), 1e-12), cosine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--data", required=True, type=Path, help="a JSONL split (prompt, output)")
    p.add_argument("--num", type=int, default=64, help="examples")
    p.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128, 512])
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--plugin", action="append", default=[])
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    args = p.parse_args(argv)
    load_plugins(args.plugin)
    torch.manual_seed(0)
    student_logits, teacher_logits = logits_of(load_model(args.teacher).eval(), load_model(args.student).eval(),
                                               args.data, args.num, args.max_length, args.max_prompt_length,
                                               args.batch_size)
    ks = [k for k in args.ks if k <= teacher_logits.shape[-1]]
    print(f"{student_logits.shape[0]} response tokens, vocabulary {teacher_logits.shape[-1]}, T = {args.temperature}")
    header = "| objective | " + " | ".join(f"k={k}: rel. loss error / grad cosine" for k in ks) + " |"
    print(header + "\n|---|" + "---:|" * len(ks))
    results = {}
    for objective in all_objectives():
        cells = [fidelity(objective.name, student_logits, teacher_logits, k, args.temperature, args.dtype) for k in ks]
        results[objective.name] = {str(k): {"rel_loss_error": e, "grad_cosine": c} for k, (e, c) in zip(ks, cells)}
        print(f"| {objective.name} | " + " | ".join(f"{e:.2e} / {c:.4f}" for e, c in cells) + " |")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps({"tokens": int(student_logits.shape[0]), "vocab": int(teacher_logits.shape[-1]),
                                                "temperature": args.temperature, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
