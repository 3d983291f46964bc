#!/usr/bin/env python
"""Divergence implementations compared: forward+backward time and peak extra memory.

For each objective and size (tokens × vocabulary), one forward and backward of
``D(student, teacher).sum()`` with the student requiring grad, for:

* ``official``: the official ToDi/DSKD code's way (full-size softmax/log_softmax tensors under
  autograd, its quirks included: JS with 1e-9 inside the logs, TVD's softmax in the input dtype,
  AKL's 0/0), re-implemented here as the baseline;
* ``reference``: ``todi.divergences`` (``impl="reference"``);
* ``chunked`` and ``triton``: ``todi.kernels``;
* ``compile``: ``torch.compile`` of the reference function;
* ``liger``: Liger-Kernel's fused JSD (forward KL, reverse KL and JS only) when it is installed, on
  log-probabilities computed by ``log_softmax`` (included in the time).

Time: median over ``--repeats`` runs after ``--warmup`` (CUDA events on a GPU). Memory: peak bytes
allocated during one forward+backward above what was allocated before it (inputs excluded, the
student gradient included), from the CUDA allocator or, on CPU, the profiler's allocator events.
Prints a table and writes JSON.

    python scripts/bench/bench_loss.py                                   # GPU, all sizes and objectives
    python scripts/bench/bench_loss.py --objectives ToDi,forward_kl --tokens 2048 --vocab 50257
    python scripts/bench/bench_loss.py --tiny --threads 1                # CPU, a minute
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

from todi.divergences import DIVERGENCES, PARAMS, canonical_name, divergence  # noqa: E402
from todi.kernels import triton_available  # noqa: E402
from todi.kernels.profiling import peak_extra_bytes  # noqa: E402

GIB = 1024**3
IMPLS = ("official", "reference", "chunked", "triton", "compile", "liger")
LIGER_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0, "js_divergence": 0.5}  # Liger's generalised JSD


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
        lam = params.get("skew_lambda", 0.1)
        q, p = torch.softmax(z, -1, dtype=f32), torch.softmax(zt, -1, dtype=f32)
        if name == "skewed_forward_kl":
            kl = p * (torch.log_softmax(zt, -1, dtype=f32) - torch.log(lam * p + (1 - lam) * q))
        else:
            kl = q * (torch.log_softmax(z, -1, dtype=f32) - torch.log((1 - lam) * p + lam * q))
        return kl.masked_fill_(inf, 0.0).sum(-1)
    if name == "adaptive_kl":
        alpha = params.get("adaptive_kl_alpha", 0.5)
        q, p = torch.softmax(z, -1, dtype=f32), torch.softmax(zt, -1, dtype=f32)
        p_sorted, order = p.sort(-1)
        gap = (p_sorted - q.gather(-1, order)).abs()
        tail = torch.cumsum(p_sorted, -1).le(alpha).float()
        g_head, g_tail = (gap * (1 - tail)).sum(-1).detach(), (gap * tail).sum(-1).detach()
        fkl, rkl = _official("forward_kl", student, teacher, temperature), _official("reverse_kl", student, teacher, temperature)
        return g_head / (g_head + g_tail) * fkl + g_tail / (g_head + g_tail) * rkl
    if name == "ToDi":  # the official ToDi has β = 1 (sigmoid of the log-ratio)
        q, p = torch.softmax(z, -1, dtype=f32), torch.softmax(zt, -1, dtype=f32)
        lq, lp = torch.log_softmax(z, -1, dtype=f32), torch.log_softmax(zt, -1, dtype=f32)
        wp, wq = torch.sigmoid(lp - lq).detach(), torch.sigmoid(lq - lp).detach()
        return (wp * p * (lp - lq) + wq * q * (lq - lp)).masked_fill_(inf, 0.0).sum(-1)
    raise ValueError(name)


def make_fn(impl: str, name: str):
    """(student, teacher) → per-position values (anything whose .sum() is the loss)."""
    if impl == "official":
        return lambda s, t: _official(name, s, t)
    if impl in ("reference", "chunked", "triton"):
        return lambda s, t: divergence(name, s, t, impl=impl)
    if impl == "compile":
        fn = DIVERGENCES[name]
        return torch.compile(lambda s, t: fn(s, t), dynamic=False)
    if impl == "liger":
        from liger_kernel.transformers import LigerJSD

        jsd = LigerJSD(beta=LIGER_BETA[name])
        return lambda s, t: jsd(torch.log_softmax(s.float(), -1), torch.log_softmax(t.float(), -1))
    raise ValueError(impl)


def available(impl: str, name: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run here (None if it can)."""
    if impl == "triton" and not (device.type == "cuda" and triton_available()):
        return "needs CUDA and triton"
    if impl == "liger":
        if name not in LIGER_BETA:
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


def run_cell(impl, name, tokens, vocab, args, device, inputs) -> dict:
    row = {"objective": name, "tokens": tokens, "vocab": vocab, "impl": impl}
    reason = available(impl, name, device)
    if reason:
        row["error"] = reason
        return row
    try:
        ms, gib = measure(make_fn(impl, name), *inputs, warmup=args.warmup, repeats=args.repeats)
        row.update(ms=round(ms, 4), extra_gib=round(gib, 4))
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as exc:  # a failing baseline (e.g. torch.compile) is reported, not fatal
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def sweep(args, device) -> None:
    """Time Triton launch configurations (warps, vectors per thread and tile, programs per SM,
    pipelining stages) for each size and objective, check each against the chunked path, and print
    the best as TODI_TRITON_CONFIG values: per size and objective, and overall (the least mean of
    each time over the best time of its size and objective). Sweep at 8192 tokens or more: on an
    H100 one call at 2048 tokens is bound by the host's per-call overhead (Python, autograd)."""
    from todi.kernels import triton_rows as kernel
    from todi.kernels.triton_rows import KernelConfig

    shapes = ((4, 2), (4, 4), (8, 1), (8, 2), (8, 4), (16, 1), (16, 2))  # (warps, vectors)
    configs = [(w, v, p, st) for w, v in shapes for st in (1, 2) for p in (1, 2, 4, 16)]
    times = {}  # (config, name, tokens, vocab) -> ms, for configs that match the chunked path
    for tokens in args.tokens:
        for vocab in args.vocab:
            inputs = make_inputs(tokens, vocab, args.dtype, device)
            print(f"sweep at {tokens} x {vocab} {args.dtype}: ms fwd+bwd of {','.join(args.objectives)} "
                  "for warps,vectors,programs_per_sm,stages (! = differs from the chunked path)")
            refs = {name: _value_and_grad("chunked", name, *inputs) for name in args.objectives}
            for cfg in configs:
                warps, vectors, per_sm, stages = cfg
                kernel.CONFIG = KernelConfig(num_warps=warps, vectors=vectors, programs_per_sm=per_sm, stages=stages)
                cells = []
                for name in args.objectives:
                    try:
                        ms, _ = measure(make_fn("triton", name), *inputs, warmup=2, repeats=5)
                        ok = _close(_value_and_grad("triton", name, *inputs), refs[name])
                    except Exception as exc:  # e.g. out of registers: skip the config
                        ms, ok = math.nan, False
                        print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:120]}")
                    if ok:
                        times[cfg, name, tokens, vocab] = ms
                    cells.append(f"{ms:.3f}{'' if ok else '!'}")
                print(f"  {warps},{vectors},{per_sm},{stages}: " + " ".join(cells), flush=True)
            del inputs, refs
    kernel.CONFIG = KernelConfig()
    keys = {k[1:] for k in times}
    best = {key: min((ms, cfg) for (cfg, *k), ms in times.items() if tuple(k) == key) for key in keys}
    for (name, tokens, vocab), (ms, cfg) in sorted(best.items()):
        print(f"best {name} {tokens}x{vocab}: {ms:.3f} ms with TODI_TRITON_CONFIG={','.join(map(str, cfg))}")
    complete = [c for c in configs if all((c, *key) in times for key in keys)]
    if complete:
        score = {c: sum(times[(c, *key)] / best[key][0] for key in keys) / len(keys) for c in complete}
        top = min(complete, key=score.get)
        print(f"best overall (mean time / best time {score[top]:.3f}): TODI_TRITON_CONFIG={','.join(map(str, top))}")


def _value_and_grad(impl: str, name: str, student: torch.Tensor, teacher: torch.Tensor):
    leaf = student.detach().clone().requires_grad_(True)
    value = divergence(name, leaf, teacher, impl=impl)
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
    width = 22
    for tokens, vocab in sizes:
        print(f"\n{tokens} tokens x {vocab} vocab: fwd+bwd ms / extra GiB (speed-up vs official)")
        print(f"{'objective':<18}" + "".join(f"{i:>{width}}" for i in impls))
        for name in dict.fromkeys(r["objective"] for r in rows):
            cells = {r["impl"]: r for r in rows if (r["tokens"], r["vocab"], r["objective"]) == (tokens, vocab, name)}
            base = cells.get("official", {}).get("ms")
            line = f"{name:<18}"
            for impl in impls:
                r = cells.get(impl, {})
                if "ms" in r:
                    speed = f" x{base / r['ms']:.1f}" if base and impl != "official" else ""
                    text = f"{r['ms']:.2f}/{r['extra_gib']:.3f}{speed}"
                else:
                    text = "n/a" if r.get("error", "").startswith(("needs", "no Liger", "liger-kernel")) else "error"
                line += f"{text:>{width}}"
            print(line)
    errors = [r for r in rows if "error" in r and not r["error"].startswith(("needs", "no Liger", "liger-kernel"))]
    for r in errors:
        print(f"  {r['impl']} {r['objective']} {r['tokens']}x{r['vocab']}: {r['error']}")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", default=",".join(DIVERGENCES), help="comma-separated names or aliases")
    parser.add_argument("--tokens", default=None, help="comma-separated token counts (default 2048,8192)")
    parser.add_argument("--vocab", default=None, help="comma-separated vocabulary sizes (default 32000,50257,151936)")
    parser.add_argument("--impls", default=None, help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="logits dtype (default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized run: 512 tokens x 8000 vocab")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="time Triton launch configurations instead")
    parser.add_argument("--out", default="outputs/bench/bench_loss.json", help="JSON results path")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    default_tokens, default_vocab = ("512", "8000") if args.tiny else ("2048,8192", "32000,50257,151936")
    args.tokens = [int(x) for x in (args.tokens or default_tokens).split(",")]
    args.vocab = [int(x) for x in (args.vocab or default_vocab).split(",")]
    args.objectives = [canonical_name(x) for x in args.objectives.split(",")]
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    default_impls = IMPLS if device.type == "cuda" else ("official", "reference", "chunked")
    impls = [x for x in (args.impls.split(",") if args.impls else default_impls)]
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"--impls: unknown {impl!r}; valid: {', '.join(IMPLS)}")
    if args.sweep:
        sweep(args, device)
        return

    rows = []
    for tokens in args.tokens:
        for vocab in args.vocab:
            inputs = make_inputs(tokens, vocab, args.dtype, device)
            for name in args.objectives:
                for impl in impls:
                    row = run_cell(impl, name, tokens, vocab, args, device, inputs)
                    rows.append(row)
                    status = f"{row['ms']:.3f} ms, {row['extra_gib']:.3f} GiB" if "ms" in row else row["error"]
                    print(f"{name} {tokens}x{vocab} {impl}: {status}", flush=True)
            del inputs
    print_table(rows, impls)
    payload = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": dtype_name,
        "params": {name: PARAMS[name] for name in args.objectives},
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
