"""A toy study of the distillation objectives: a limited-capacity student fitted to fixed teacher
distributions, once per objective and with AdaKD on FKL, RKL and ToDi.

It tests, in a setting small enough for a CPU, the ToDi paper's claim that token-wise mixing of FKL
and RKL aligns distributions more precisely: the student cannot represent the teacher exactly, so
each objective has to choose *which* errors to keep.

Setup (all runs share it, with the same initialisation, optimizer, step count and seed):

* Teacher: ``contexts`` next-token distributions over ``vocab`` entries from a bigger random model,
  logits = s·γ_i·(h_i·E)/√d_T + Zipf prior (d_T = 128, γ_i log-normal per context), with the scale s
  set by bisection so that the mean entropy is ``teacher_entropy`` nats (top-1 mass and entropy
  then look like those of a real LM's next-token distributions; both are reported).
* Student: a low-rank softmax model, logits = U_i·W + b with rank ``rank`` (U per context, W shared,
  b initialised to the Zipf prior), trained full-batch by Adam (cosine decay to 0) on the objective
  alone (kd_rate = 1) through the real :class:`todi.loss.criterion.DistillationLoss` (and
  :class:`todi.loss.adakd.AdaKD`).
* Metrics, in float64 on the final student: FKL(p‖q), RKL, TVD and top-1 agreement, averaged over
  contexts; and for the entries the initial student under-estimated (q₀ < p) and over-estimated
  (q₀ > p), the teacher-mass-weighted mean of log(q/p) before and after training (0 = matched).

Usage: ``python -m todi.tools.study [--out DIR]`` (or scripts/study/run.sh) writes DIR/study.md and
DIR/study.png and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from todi.loss.adakd import AdaKD
from todi.util.atomic import atomic_write_text, atomic_write_with
from todi.loss.criterion import DistillationLoss
from todi.loss.divergence import DIVERGENCES

__all__ = ["RUNS", "StudyConfig", "main", "run_study"]

# (label, objective, with AdaKD): the eight objectives, then AdaKD over FKL, RKL and ToDi.
RUNS: list[tuple[str, str, bool]] = [(name, name, False) for name in DIVERGENCES] + [
    (f"{name} + AdaKD", name, True) for name in ("forward_kl", "reverse_kl", "ToDi")
]
TEACHER_HIDDEN = 128
ZIPF_EXPONENT = 1.1


@dataclass(frozen=True)
class StudyConfig:
    vocab: int = 3000
    contexts: int = 128
    rank: int = 12
    steps: int = 300
    lr: float = 0.05
    teacher_entropy: float = 2.0
    seed: int = 0
    curve_every: int = 5


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------

def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), -1)
    return -(logp.exp() * logp).sum(-1)


def teacher_logits(cfg: StudyConfig) -> torch.Tensor:
    """Fixed teacher logits ``[contexts, vocab]`` (float32) with mean entropy ``cfg.teacher_entropy``."""
    g = torch.Generator().manual_seed(cfg.seed)
    hidden = torch.randn(cfg.contexts, TEACHER_HIDDEN, generator=g, dtype=torch.float64)
    embed = torch.randn(TEACHER_HIDDEN, cfg.vocab, generator=g, dtype=torch.float64) / math.sqrt(TEACHER_HIDDEN)
    sharpness = torch.exp(0.5 * torch.randn(cfg.contexts, 1, generator=g, dtype=torch.float64))
    prior = -ZIPF_EXPONENT * torch.arange(1, cfg.vocab + 1, dtype=torch.float64).log()
    context = sharpness * (hidden @ embed)
    lo, hi = 0.0, 64.0  # entropy falls monotonically as the scale grows
    for _ in range(60):
        mid = (lo + hi) / 2
        if _entropy(mid * context + prior).mean() > cfg.teacher_entropy:
            lo = mid
        else:
            hi = mid
    return ((lo + hi) / 2 * context + prior).float()


class LowRankStudent(torch.nn.Module):
    """logits[i] = U[i]·W + b: a rank-``rank`` softmax model over ``contexts`` fixed contexts."""

    def __init__(self, cfg: StudyConfig):
        super().__init__()
        g = torch.Generator().manual_seed(cfg.seed + 1)
        self.u = torch.nn.Parameter(torch.randn(cfg.contexts, cfg.rank, generator=g))
        self.w = torch.nn.Parameter(torch.randn(cfg.rank, cfg.vocab, generator=g) * (1.5 / math.sqrt(cfg.rank)))
        prior = -ZIPF_EXPONENT * torch.arange(1, cfg.vocab + 1, dtype=torch.float64).log()
        self.b = torch.nn.Parameter(prior.float())

    def forward(self) -> torch.Tensor:
        return self.u @ self.w + self.b


# --------------------------------------------------------------------------------------------
# Metrics (float64)
# --------------------------------------------------------------------------------------------

def metrics(student: torch.Tensor, teacher: torch.Tensor, initial: torch.Tensor) -> dict[str, float]:
    """FKL, RKL, TVD, top-1 agreement, and log(q/p) on the initially under/over-estimated entries."""
    logq = torch.log_softmax(student.double(), -1)
    logp = torch.log_softmax(teacher.double(), -1)
    logq0 = torch.log_softmax(initial.double(), -1)
    p, q = logp.exp(), logq.exp()
    under, over = logq0 < logp, logq0 > logp

    def weighted_log_ratio(entries: torch.Tensor) -> float:
        weight = torch.where(entries, p, 0.0)
        return float((weight * (logq - logp)).sum() / weight.sum())

    return {
        "fkl": float((p * (logp - logq)).sum(-1).mean()),
        "rkl": float((q * (logq - logp)).sum(-1).mean()),
        "tvd": float(0.5 * (p - q).abs().sum(-1).mean()),
        "top1": float((logq.argmax(-1) == logp.argmax(-1)).double().mean()),
        "under": weighted_log_ratio(under),
        "over": weighted_log_ratio(over),
    }


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _flush_denormals():
    # The student's tail probabilities fall below float32's normal range (log q < −87); denormal
    # arithmetic is ~10× slower on x86 CPUs and would dominate the run time. Values that small
    # contribute nothing measurable to the losses (the metrics are float64 from the logits).
    enabled = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def fit(objective: str, use_adakd: bool, teacher: torch.Tensor, cfg: StudyConfig):
    """Train a fresh student; returns (final logits, TVD curve [(step, tvd)], final AdaKD r or None)."""
    student = LowRankStudent(cfg)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    # cosine decay to 0, so that every run ends settled rather than mid-oscillation
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    adakd = AdaKD(cfg.steps) if use_adakd else None
    criterion = DistillationLoss(objective, kd_rate=1.0, planner=adakd)
    target = teacher.unsqueeze(0)  # one micro-batch [1, contexts, vocab]
    labels = teacher.argmax(-1).unsqueeze(0)  # unused by the loss at kd_rate = 1 (CE is only logged)
    p = torch.softmax(teacher, -1)
    curve = []
    for step in range(cfg.steps + 1):
        logits = student()
        if step % cfg.curve_every == 0 or step == cfg.steps:
            with torch.no_grad():
                curve.append((step, float(0.5 * (torch.softmax(logits, -1) - p).abs().sum(-1).mean())))
        if step == cfg.steps:
            break
        out = criterion(logits.unsqueeze(0), labels, target)
        loss = out.loss / out.num_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if adakd is not None:
            adakd.update(out.stats.kd, out.stats.kd_tokens)
    return logits.detach(), curve, (adakd.ratio if adakd is not None else None)


def _run(label: str, objective: str, use_adakd: bool, cfg: StudyConfig) -> tuple[dict, list]:
    """One run, single-threaded (runs go in parallel processes instead: small tensors gain little
    from intra-op threads, and spinning OpenMP threads collapse on a busy machine)."""
    torch.set_num_threads(1)
    teacher = teacher_logits(cfg)
    initial = LowRankStudent(cfg)().detach()
    started = time.perf_counter()
    with _flush_denormals():
        final, curve, ratio = fit(objective, use_adakd, teacher, cfg)
    row = {"label": label, **metrics(final, teacher, initial), "ratio": ratio, "seconds": time.perf_counter() - started}
    return row, curve


def run_study(cfg: StudyConfig, workers: int = 1, progress: bool = True) -> dict:
    """Every run of :data:`RUNS` (in ``workers`` processes); returns the teacher's statistics, the
    initial student's metrics, the rows (in :data:`RUNS` order) and the TVD curves."""
    teacher = teacher_logits(cfg)
    initial = LowRankStudent(cfg)().detach()
    p = torch.softmax(teacher.double(), -1)
    bar = tqdm(total=len(RUNS), desc="study", disable=not progress, file=sys.stderr)
    done: dict[str, tuple[dict, list]] = {}
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(max_workers=min(workers, len(RUNS)), mp_context=context) as pool:
            futures = {pool.submit(_run, label, objective, adakd, cfg): label for label, objective, adakd in RUNS}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.update()
    else:
        threads = torch.get_num_threads()
        try:
            for label, objective, adakd in RUNS:
                done[label] = _run(label, objective, adakd, cfg)
                bar.update()
        finally:
            torch.set_num_threads(threads)
    bar.close()
    return {
        "teacher": {
            "entropy": float(_entropy(teacher).mean()),
            "top1_mass": float(p.max(-1).values.mean()),
            "top1_mass_median": float(p.max(-1).values.median()),
        },
        "initial": metrics(initial, teacher, initial),
        "rows": [done[label][0] for label, _, _ in RUNS],
        "curves": {label: done[label][1] for label, _, _ in RUNS},
    }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

def markdown(result: dict, cfg: StudyConfig) -> str:
    t, init = result["teacher"], result["initial"]
    lines = [
        "# Toy study: a low-rank student fitted to fixed teacher distributions",
        "",
        f"Teacher: {cfg.contexts} contexts × {cfg.vocab} entries, mean entropy {t['entropy']:.2f} nats, "
        f"top-1 mass mean {t['top1_mass']:.2f} (median {t['top1_mass_median']:.2f}). "
        f"Student: rank {cfg.rank} + bias; Adam lr {cfg.lr} with cosine decay, {cfg.steps} full-batch steps, "
        f"seed {cfg.seed}, "
        "KD temperature 1, objective alone (kd_rate 1), default objective parameters; "
        "AdaKD with its defaults (c 0.5, warm-up 5%, ε = δ = 0.05, floor 0.1).",
        "",
        f"Initial student: FKL {init['fkl']:.3f}, RKL {init['rkl']:.3f}, TVD {init['tvd']:.3f}, "
        f"top-1 {init['top1']:.3f}; teacher-weighted mean log(q/p) on the entries it under-estimated "
        f"{init['under']:+.3f}, on those it over-estimated {init['over']:+.3f}. "
        "The last two columns give these after training (0 = matched). Lower FKL/RKL/TVD is better.",
        "",
        "| objective | FKL | RKL | TVD | top-1 | log(q/p) under | log(q/p) over | final r |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.3f}"
        lines.append(
            f"| {row['label']} | {row['fkl']:.4f} | {row['rkl']:.4f} | {row['tvd']:.4f} | {row['top1']:.3f} "
            f"| {row['under']:+.4f} | {row['over']:+.4f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [r["label"].replace(" + AdaKD", "\n+AdaKD") for r in rows]
    x = torch.arange(len(rows)).numpy()
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))

    ax = axes[0, 0]
    ax.bar(x - 0.2, [r["fkl"] for r in rows], 0.4, label="FKL(p‖q)")
    ax.bar(x + 0.2, [r["rkl"] for r in rows], 0.4, label="RKL(q‖p)")
    ax.set_yscale("log")
    ax.set_title("Final divergences (lower is better)")
    ax.legend()

    ax = axes[0, 1]
    ax.bar(x - 0.2, [r["tvd"] for r in rows], 0.4, label="TVD")
    ax.bar(x + 0.2, [1 - r["top1"] for r in rows], 0.4, label="1 − top-1 agreement")
    ax.set_title("Final TVD and top-1 disagreement (lower is better)")
    ax.legend()

    ax = axes[1, 0]
    ax.bar(x - 0.2, [r["under"] for r in rows], 0.4, label="initially under-estimated (q₀<p)")
    ax.bar(x + 0.2, [r["over"] for r in rows], 0.4, label="initially over-estimated (q₀>p)")
    ax.axhline(result["initial"]["under"], color="C0", ls="--", lw=1, label="under, before")
    ax.axhline(result["initial"]["over"], color="C1", ls="--", lw=1, label="over, before")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title("Teacher-weighted mean log(q/p) after training (0 = matched)")
    ax.legend(fontsize=8)

    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)

    ax = axes[1, 1]
    colors = {name: f"C{i}" for i, name in enumerate(DIVERGENCES)}  # AdaKD runs: their objective's, dashed
    for label, objective, adakd in RUNS:
        steps, tvd = zip(*result["curves"][label])
        ax.plot(steps, tvd, label=label, ls="--" if adakd else "-", color=colors[objective])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("TVD during training")
    ax.legend(fontsize=7, ncol=2)

    fig.tight_layout()
    try:
        atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process may run on
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> tuple[Path, StudyConfig, int]:
    d = StudyConfig()
    parser = argparse.ArgumentParser(prog="python -m todi.tools.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/study"), help="output folder (study.md, study.png)")
    parser.add_argument("--vocab", type=int, default=d.vocab, help="vocabulary size")
    parser.add_argument("--contexts", type=int, default=d.contexts, help="number of teacher distributions")
    parser.add_argument("--rank", type=int, default=d.rank, help="rank of the student's logit matrix")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per run")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    parser.add_argument("--teacher-entropy", type=float, default=d.teacher_entropy, help="mean teacher entropy (nats)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the teacher and the student's initialisation")
    parser.add_argument("--workers", type=int, default=_usable_cores(),
                        help="parallel processes, one single-threaded run each (default: the usable CPU cores)")
    args = parser.parse_args(argv)
    for name, low in (("vocab", 2), ("contexts", 1), ("rank", 1), ("steps", 1), ("workers", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not 0 < args.teacher_entropy < math.log(args.vocab):
        parser.error(f"--teacher-entropy must be in (0, log(vocab) = {math.log(args.vocab):.2f}), got {args.teacher_entropy}")
    cfg = StudyConfig(vocab=args.vocab, contexts=args.contexts, rank=args.rank, steps=args.steps, lr=args.lr,
                      teacher_entropy=args.teacher_entropy, seed=args.seed)
    return args.out, cfg, args.workers


def main(argv: list[str] | None = None) -> dict:
    out, cfg, workers = parse_args(argv)
    started = time.perf_counter()
    result = run_study(cfg, workers=workers)
    table = markdown(result, cfg)
    table += (f"\nRun time: {time.perf_counter() - started:.0f} s on CPU "
              f"({min(workers, len(RUNS))} single-threaded worker process(es)).\n")
    atomic_write_text(out / "study.md", table)
    plot(result, out / "study.png")
    print(table)
    print(f"wrote {out / 'study.md'} and {out / 'study.png'}")
    return result


if __name__ == "__main__":
    main()
