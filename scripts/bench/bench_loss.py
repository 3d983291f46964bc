#!/usr/bin/env python
"""Divergence implementations compared: forward+backward time and peak extra memory.

The objectives and their parameter cases come from the objective registry
(:func:`todi.objectives.all_objectives`): every registered objective (plug-ins included, with
``--plugin``) at its defaults and, with ``--cases all``, at each parameter case its entry lists
(the cases the test suite runs: limits such as λ = 0 / 1, strong / weak ToDi β, the α-β
divergence's KL limits). For each case and size (tokens × vocabulary), one forward and backward of
``D(student, teacher).sum()`` with the student requiring grad, for:

* ``official``: the official ToDi/DSKD code's way (full-size softmax/log_softmax tensors under
  autograd, its quirks included: JS with 1e-9 inside the logs, TVD's softmax in the input dtype,
  AKL's 0/0), re-implemented here as the baseline, for the official eight objectives only;
* ``reference``: the registry's plain terms under autograd (:func:`todi.objectives.evaluate`);
* ``chunked`` and ``triton``: :func:`todi.kernels.autograd` (``--chunk-size`` fixes the
  chunked kernel's rows per chunk; default: :func:`todi.kernels.rows.rows_per_chunk`);
  ``triton`` for the cases whose registry entry names a Triton branch;
* ``compile``: ``torch.compile`` of the reference;
* ``liger``: Liger-Kernel's fused (generalized) JSD (forward KL, reverse KL, JS and the generalized
  JSD) when it is installed, on log-probabilities computed by ``log_softmax`` (included in the time).

Time: median over ``--repeats`` runs after ``--warmup`` (CUDA events on a GPU). Memory: peak bytes
allocated during one forward+backward above what was allocated before it (inputs excluded, the
student gradient included), from the CUDA allocator or, on CPU, the profiler's allocator events.
Prints a table (speed-up against ``official``, or ``reference`` for objectives without an
official baseline) and writes JSON.

    python scripts/bench/bench_loss.py                                   # GPU, all sizes and objectives
    python scripts/bench/bench_loss.py --objectives ToDi,gjsd --tokens 2048 --vocab 50257 --cases all
    python scripts/bench/bench_loss.py --tiny --threads 1                # CPU, a minute
    python scripts/bench/bench_loss.py --plugin my_objective.py --objectives my_kl --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "code"))

import torch  # noqa: E402

from todi import kernels  # noqa: E402
from todi.kernels import LossInputs, LossSpec, triton_available  # noqa: E402
from todi.kernels.profiling import peak_extra_bytes  # noqa: E402
from todi.objectives import all_objectives, canonical_name, evaluate, get  # noqa: E402
from todi.util.plugins import load_plugins  # noqa: E402

GIB = 1024**3
IMPLS = ("official", "reference", "chunked", "triton", "compile", "liger")
OFFICIAL = ("forward_kl", "reverse_kl", "js_divergence", "tvd", "skewed_forward_kl", "skewed_reverse_kl",
            "adaptive_kl", "ToDi")  # the objectives of the official code (the baseline below)
NOT_HERE = ("needs", "no ", "liger-kernel")  # reasons a cell does not apply (n/a, not an error)


# ---------------------------------------------------------------------------------------------
# Cases: (objective, parameters) from the registry
# ---------------------------------------------------------------------------------------------

class Case:
    """One objective at some parameters: ``spec`` is what runs (after ``reduces_to``)."""

    def __init__(self, name: str, params: dict[str, float]):
        self.name = name
        self.params = dict(params)
        self.spec = LossSpec.make(name, self.params)  # validates; fills the defaults
        self.full = get(name).resolve(self.params)

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({','.join(f'{k}={v:g}' for k, v in self.params.items())})"

    def record(self) -> dict:
        out = {"objective": self.name, "params": self.full}
        if self.spec.objective != self.name or self.spec.kwargs != self.full:
            out["runs_as"] = {"objective": self.spec.objective, "params": self.spec.kwargs}
        return out


def registry_cases(names: list[str] | None, which: str) -> list[Case]:
    """The cases of ``names`` (default: every registered objective): defaults, plus the entries'
    ``cases`` with ``which == "all"`` (as ``tests/_cases.py`` builds the test suite's list)."""
    records = [get(n) for n in names] if names else list(all_objectives())
    records = list({r.name: r for r in records}.values())
    return [Case(r.name, params) for r in records for params in ({}, *(r.cases if which == "all" else ()))]


# ---------------------------------------------------------------------------------------------
# The official-style baseline (benchmark only): one full-size tensor per step, autograd keeps them.
# ---------------------------------------------------------------------------------------------

def _official(name: str, student, teacher, temperature: float = 1.0, **params):
    z, zt = student / temperature, teacher / temperature
    f32 = torch.float32
    inf = z.isinf() | zt.isinf()
    if name == "forward_kl":  # the official FKL masks the student's inf entries only
        kl = torch.softmax(zt, -1, dtype=f32) * (torch.log_softmax(zt, -1, dtype=f32) - torch.log_softmax(z, -1, dtype=f32))
        return kl.masked_fill_(z.isinf(), 0.0).sum(-1)
    if name == "reverse_kl":
        kl = torch.softmax(z, -1, dtype=f32) * (torch.log_softmax(z, -1, dtype=f32) - torch.log_softmax(zt, -1, dtype=f32))
        return kl.masked_fill_(inf, 0.0).sum(-1)
    if name == "js_divergence":
        q, p = torch.softmax(z, -1, dtype=f32), torch.softmax(zt, -1, dtype=f32)
        lm = torch.log((q + p) / 2 + 1e-9)
        kl = (p * (torch.log(p + 1e-9) - lm) + q * (torch.log(q + 1e-9) - lm)) / 2
        return kl.masked_fill_(inf, 0.0).sum(-1)
    if name == "tvd":  # the official TVD takes the softmax in the input dtype
        return (0.5 * (torch.softmax(z, -1) - torch.softmax(zt, -1)).abs()).masked_fill_(inf, 0.0).sum(-1)
    if name in ("skewed_forward_kl", "skewed_reverse_kl"):
        lam = params["skew_lambda"]
        q, p = torch.softmax(z, -1, dtype=f32), torch.softmax(zt, -1, dtype=f32)
        if name == "skewed_forward_kl":
            kl = p * (torch.log_softmax(zt, -1, dtype=f32) - torch.log(lam * p + (1 - lam) * q))
        else:
            kl = q * (torch.log_softmax(z, -1, dtype=f32) - torch.log((1 - lam) * p + lam * q))
        return kl.masked_fill_(inf, 0.0).sum(-1)
    if name == "adaptive_kl":
        alpha = params["adaptive_kl_alpha"]
        q, p = torch.softmax(z, -1, dtype=f32), torch.softmax(zt, -1, dtype=f32)
        p_sorted, order = p.sort(-1)
        gap = (p_sorted - q.gather(-1, order)).abs()
        tail = torch.cumsum(p_sorted, -1).le(alpha).float()
        g_head, g_tail = (gap * (1 - tail)).sum(-1).detach(), (gap * tail).sum(-1).detach()
        fkl, rkl = _official("forward_kl", student, teacher, temperature), _official("reverse_kl", student, teacher, temperature)
        return g_head / (g_head + g_tail) * fkl + g_tail / (g_head + g_tail) * rkl
    if name == "ToDi":  # the official ToDi has β = 1 (sigmoid of the log-ratio); other β scale it
        beta = params["beta"]
        q, p = torch.softmax(z, -1, dtype=f32), torch.softmax(zt, -1, dtype=f32)
        lq, lp = torch.log_softmax(z, -1, dtype=f32), torch.log_softmax(zt, -1, dtype=f32)
        wp, wq = torch.sigmoid(beta * (lp - lq)).detach(), torch.sigmoid(beta * (lq - lp)).detach()
        return (wp * p * (lp - lq) + wq * q * (lq - lp)).masked_fill_(inf, 0.0).sum(-1)
    raise ValueError(name)


def liger_beta(case: Case) -> float | None:
    """Liger's generalized-JSD β for what ``case`` computes (0: forward KL, 1: reverse KL), or None."""
    name, params = case.spec.objective, case.spec.kwargs
    fixed = {"forward_kl": 0.0, "reverse_kl": 1.0, "js_divergence": 0.5}
    if name in fixed:
        return fixed[name]
    if name == "generalized_jsd":  # the same convention as GKD/TRL: β·KL(p || m) + (1−β)·KL(q || m)
        return params["beta"]
    return None


def kernel_loss(impl: str, spec: LossSpec, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-row divergence through :func:`todi.kernels.autograd` (KD only: no labels, CE weight 0)."""
    s, t = kernels.flatten_rows(student), kernels.flatten_rows(teacher)
    n = s.shape[0]
    inputs = LossInputs(student=s, teacher=t, vocab=s.shape[1], labels=None,
                        kd_mask=torch.ones(n, dtype=torch.bool, device=s.device),
                        temperature=kernels.broadcast_rows(1.0, student.shape[:-1], s.device), kd_weight=1.0,
                        ce_weight=0.0)
    return kernels.per_row_loss(impl, spec, inputs).loss


class _ChunkedAtSize(torch.autograd.Function):
    """The chunked backend at a fixed chunk size (``chunked.forward(..., chunk_size=...)``): the
    gradient is computed in the forward, the backward scales it (as :func:`per_row_loss` does)."""

    @staticmethod
    def forward(ctx, student, teacher, spec, chunk_size):
        from todi.kernels import chunked

        inputs = LossInputs(student=student, teacher=teacher, vocab=student.shape[1], labels=None,
                            kd_mask=torch.ones(student.shape[0], dtype=torch.bool, device=student.device),
                            temperature=1.0, kd_weight=1.0, ce_weight=0.0)
        out = chunked.forward(spec, inputs, want_grad=student.requires_grad, want_diagnostics=False,
                              chunk_size=chunk_size)
        ctx.grad = out.grad
        return inputs.combine(spec, out.kd, out.ce)

    @staticmethod
    def backward(ctx, grad_loss):
        grad, ctx.grad = ctx.grad, None
        return grad.mul_(grad_loss.to(grad.dtype).unsqueeze(1)), None, None, None


def make_fn(impl: str, case: Case, chunk_size: int | None = None):
    """(student, teacher) → per-position values (anything whose .sum() is the loss)."""
    spec = case.spec
    if impl == "official":
        return lambda s, t: _official(case.name, s, t, **case.full)
    if impl == "reference":
        return lambda s, t: evaluate(spec.objective, s, t, **spec.kwargs)
    if impl == "chunked" and chunk_size:
        return lambda s, t: _ChunkedAtSize.apply(kernels.flatten_rows(s), kernels.flatten_rows(t), spec, chunk_size)
    if impl in ("chunked", "triton"):
        return lambda s, t: kernel_loss(impl, spec, s, t)
    if impl == "compile":
        return torch.compile(lambda s, t: evaluate(spec.objective, s, t, **spec.kwargs), dynamic=False)
    if impl == "liger":
        from liger_kernel.transformers import LigerJSD

        jsd = LigerJSD(beta=liger_beta(case))
        return lambda s, t: jsd(torch.log_softmax(s.float(), -1), torch.log_softmax(t.float(), -1))
    raise ValueError(impl)


def available(impl: str, case: Case, device: torch.device) -> str | None:
    """Why ``impl`` cannot run ``case`` here (None if it can)."""
    if impl == "official" and case.name not in OFFICIAL:
        return "no official implementation of this objective"
    if impl == "triton":
        if not (device.type == "cuda" and triton_available()):
            return "needs CUDA and triton"
        if case.spec.triton_branch is None:
            return "no Triton branch for this case (impl auto runs the chunked kernel)"
    if impl == "liger":
        if liger_beta(case) is None:
            return "no Liger kernel for this objective"
        if device.type != "cuda":
            return "needs CUDA"
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return "liger-kernel not installed"
    return None


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, student: torch.Tensor, teacher: torch.Tensor, warmup: int, repeats: int) -> tuple[float, float]:
    """(median milliseconds, peak extra GiB) of fn(student, teacher).sum().backward()."""
    device = student.device
    leaf = student.detach().clone().requires_grad_(True)

    def step():
        leaf.grad = None
        fn(leaf, teacher).sum().backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        leaf.grad = None
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(leaf, teacher).sum().backward()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(leaf, teacher).sum().backward()
            times.append((time.perf_counter() - t0) * 1e3)
    leaf.grad = None
    _sync(device)
    peak = peak_extra_bytes(step, device)
    leaf.grad = None
    return statistics.median(times), peak / GIB


def make_inputs(tokens: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Logits shaped like a language model's: a few large values over a broad base (scale ≈ 3)."""
    g = torch.Generator(device=device).manual_seed(seed)
    student = (torch.randn(tokens, vocab, generator=g, device=device) * 3).to(dtype)
    teacher = (torch.randn(tokens, vocab, generator=g, device=device) * 3).to(dtype)
    return student, teacher


def run_cell(impl: str, case: Case, tokens: int, vocab: int, args, device, inputs) -> dict:
    row = {"case": case.label, **case.record(), "tokens": tokens, "vocab": vocab, "impl": impl}
    if impl == "chunked" and args.chunk_size:
        row["chunk_size"] = args.chunk_size
    reason = available(impl, case, device)
    if reason:
        row["error"] = reason
        return row
    try:
        ms, gib = measure(make_fn(impl, case, args.chunk_size), *inputs, warmup=args.warmup, repeats=args.repeats)
        row.update(ms=round(ms, 4), extra_gib=round(gib, 4))
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as exc:  # a failing baseline (e.g. torch.compile) is reported, not fatal
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def sweep(args, cases: list[Case], device) -> None:
    """Time Triton launch configurations (warps, vectors per thread and tile, programs per SM,
    pipelining stages) for each size and case with a Triton branch, check each against the chunked
    path, and print the best as TODI_TRITON_CONFIG values: per size and case, and overall (the
    least mean of each time over the best time of its size and case). Sweep at 8192 tokens or
    more: on an H100 one call at 2048 tokens is bound by the host's per-call overhead (Python,
    autograd)."""
    from todi.kernels.triton import config as kernel  # the launcher reads kernel.CONFIG at each call
    from todi.kernels.triton import KernelConfig

    if not (device.type == "cuda" and triton_available()):
        raise SystemExit("--sweep needs CUDA and triton")
    skipped = [c.label for c in cases if c.spec.triton_branch is None]
    if skipped:
        print(f"no Triton branch (skipped): {', '.join(skipped)}")
    cases = [c for c in cases if c.spec.triton_branch is not None]
    shapes = ((4, 2), (4, 4), (8, 1), (8, 2), (8, 4), (16, 1), (16, 2))  # (warps, vectors)
    configs = [(w, v, p, st) for w, v in shapes for st in (1, 2) for p in (1, 2, 4, 16)]
    times = {}  # (config, label, tokens, vocab) -> ms, for configs that match the chunked path
    saved = kernel.CONFIG
    for tokens in args.tokens:
        for vocab in args.vocab:
            inputs = make_inputs(tokens, vocab, args.dtype, device)
            print(f"sweep at {tokens} x {vocab} {args.dtype}: ms fwd+bwd of {','.join(c.label for c in cases)} "
                  "for warps,vectors,programs_per_sm,stages (! = differs from the chunked path)")
            refs = {c.label: _value_and_grad("chunked", c, *inputs) for c in cases}
            for cfg in configs:
                warps, vectors, per_sm, stages = cfg
                kernel.CONFIG = KernelConfig(num_warps=warps, vectors=vectors, programs_per_sm=per_sm, stages=stages)
                cells = []
                for case in cases:
                    try:
                        ms, _ = measure(make_fn("triton", case), *inputs, warmup=2, repeats=5)
                        ok = _close(_value_and_grad("triton", case, *inputs), refs[case.label])
                    except Exception as exc:  # e.g. out of registers: skip the config
                        ms, ok = math.nan, False
                        print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:120]}")
                    if ok:
                        times[cfg, case.label, tokens, vocab] = ms
                    cells.append(f"{ms:.3f}{'' if ok else '!'}")
                print(f"  {warps},{vectors},{per_sm},{stages}: " + " ".join(cells), flush=True)
            del inputs, refs
    kernel.CONFIG = saved
    keys = {k[1:] for k in times}
    best = {key: min((ms, cfg) for (cfg, *k), ms in times.items() if tuple(k) == key) for key in keys}
    for (label, tokens, vocab), (ms, cfg) in sorted(best.items()):
        print(f"best {label} {tokens}x{vocab}: {ms:.3f} ms with TODI_TRITON_CONFIG={','.join(map(str, cfg))}")
    complete = [c for c in configs if all((c, *key) in times for key in keys)]
    if complete:
        score = {c: sum(times[(c, *key)] / best[key][0] for key in keys) / len(keys) for c in complete}
        top = min(complete, key=score.get)
        print(f"best overall (mean time / best time {score[top]:.3f}): TODI_TRITON_CONFIG={','.join(map(str, top))}")


def _value_and_grad(impl: str, case: Case, student: torch.Tensor, teacher: torch.Tensor):
    leaf = student.detach().clone().requires_grad_(True)
    value = make_fn(impl, case)(leaf, teacher)
    value.sum().backward()
    return value.detach(), leaf.grad


def _close(got, ref) -> bool:
    """Values to 1e-4 relative, gradients to bf16 rounding (both round a float32 gradient)."""
    (val, grad), (ref_val, ref_grad) = got, ref
    return bool(torch.allclose(val, ref_val, rtol=1e-4, atol=1e-5)) and bool(
        torch.allclose(grad.float(), ref_grad.float(), rtol=2e-2, atol=2e-4)
    )


def print_table(rows: list[dict], impls: list[str]) -> None:
    sizes = sorted({(r["tokens"], r["vocab"]) for r in rows})
    labels = list(dict.fromkeys(r["case"] for r in rows))
    first = max([18, *(len(x) + 2 for x in labels)])
    width = 22
    for tokens, vocab in sizes:
        print(f"\n{tokens} tokens x {vocab} vocab: fwd+bwd ms / extra GiB (speed-up vs official, else reference)")
        print(f"{'objective':<{first}}" + "".join(f"{i:>{width}}" for i in impls))
        for label in labels:
            cells = {r["impl"]: r for r in rows if (r["tokens"], r["vocab"], r["case"]) == (tokens, vocab, label)}
            base_impl = "official" if "ms" in cells.get("official", {}) else "reference"
            base = cells.get(base_impl, {}).get("ms")
            line = f"{label:<{first}}"
            for impl in impls:
                r = cells.get(impl, {})
                if "ms" in r:
                    speed = f" x{base / r['ms']:.1f}" if base and impl != base_impl else ""
                    text = f"{r['ms']:.2f}/{r['extra_gib']:.3f}{speed}"
                else:
                    text = "n/a" if r.get("error", "").startswith(NOT_HERE) else "error"
                line += f"{text:>{width}}"
            print(line)
    errors = [r for r in rows if "error" in r and not r["error"].startswith(NOT_HERE)]
    for r in errors:
        print(f"  {r['impl']} {r['case']} {r['tokens']}x{r['vocab']}: {r['error']}")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", default=None,
                        help="comma-separated names or aliases (default: every registered objective)")
    parser.add_argument("--cases", choices=("defaults", "all"), default="defaults",
                        help="defaults: each objective at its registry defaults; all: also at each parameter case "
                             "its registry entry lists")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="a Python file or module imported first (e.g. one that registers an objective); "
                             "repeatable")
    parser.add_argument("--tokens", default=None, help="comma-separated token counts (default 2048,8192)")
    parser.add_argument("--vocab", default=None, help="comma-separated vocabulary sizes (default 32000,50257,151936)")
    parser.add_argument("--impls", default=None, help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per chunk of the chunked kernel (default: sized by todi.kernels.rows)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="logits dtype (default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized run: 512 tokens x 8000 vocab")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="time Triton launch configurations instead")
    parser.add_argument("--out", default="outputs/bench/bench_loss.json", help="JSON results path")
    args = parser.parse_args(argv)

    try:
        load_plugins(args.plugin)
    except (ImportError, OSError, ValueError) as exc:
        parser.error(f"--plugin: {exc}")
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error("--chunk-size must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    default_tokens, default_vocab = ("512", "8000") if args.tiny else ("2048,8192", "32000,50257,151936")
    args.tokens = [int(x) for x in (args.tokens or default_tokens).split(",")]
    args.vocab = [int(x) for x in (args.vocab or default_vocab).split(",")]
    try:
        names = [canonical_name(x.strip()) for x in args.objectives.split(",")] if args.objectives else None
        cases = registry_cases(names, args.cases)
    except (ValueError, TypeError) as exc:
        parser.error(f"--objectives: {exc}")
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    default_impls = IMPLS if device.type == "cuda" else ("official", "reference", "chunked")
    impls = [x for x in (args.impls.split(",") if args.impls else default_impls)]
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"--impls: unknown {impl!r}; valid: {', '.join(IMPLS)}")
    if args.sweep:
        sweep(args, cases, device)
        return

    rows = []
    for tokens in args.tokens:
        for vocab in args.vocab:
            inputs = make_inputs(tokens, vocab, args.dtype, device)
            for case in cases:
                for impl in impls:
                    row = run_cell(impl, case, tokens, vocab, args, device, inputs)
                    rows.append(row)
                    status = f"{row['ms']:.3f} ms, {row['extra_gib']:.3f} GiB" if "ms" in row else row["error"]
                    print(f"{case.label} {tokens}x{vocab} {impl}: {status}", flush=True)
            del inputs
    print_table(rows, impls)
    payload = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": dtype_name,
        "cases": {c.label: c.record() for c in cases},
        "plugins": args.plugin,
        "chunk_size": args.chunk_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "results": rows,
    }
    if triton_available():
        import triton

        payload["triton"] = triton.__version__
    write_json(Path(args.out), payload)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
