#!/usr/bin/env python
"""A whole KD training step: CE-only vs each objective, eager reference vs memory-efficient kernels.

Student and teacher are built from configs with random weights (GPT-2 base ← GPT-2 XL and
TinyLLaMA-1.1B ← Llama-2-7B shapes, or ``--student-config``/``--teacher-config`` directories), in
bf16 on a GPU. One step = teacher forward (no grad) + student forward + loss + backward + AdamW
step, on a batch whose first quarter of every sequence is prompt (no loss). The CE-only step runs
the teacher forward too, so the difference to it is the cost of the KD loss alone.

Variants: ``ce`` (cross-entropy only) and each objective, with ``--impls`` (``reference``: the
plain autograd loss; ``auto``: todi.kernels, Triton on CUDA) and, with ``--fused``, the fused
lm_head path. Reports median step time, tokens/s and peak memory (CUDA: the allocator's peak during
a step, models and optimizer state included; CPU: peak allocated during a step above what was
allocated before it), prints a table and writes JSON.

    python scripts/bench/bench_step.py --models gpt2 --objectives ToDi --fused      # GPU
    python scripts/bench/bench_step.py --tiny --threads 1                           # CPU, tiny models
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "code"))

import torch  # noqa: E402

from todi.loss.criterion import DistillationLoss  # noqa: E402
from todi.loss.divergence import DIVERGENCES, canonical_name  # noqa: E402
from todi.models.fused_head import fused_student_loss  # noqa: E402
from todi.kernels.profiling import peak_extra_bytes  # noqa: E402

GIB = 1024**3

# Published architectures (vocabulary, depth, width); weights are random.
CONFIGS = {
    "gpt2": (
        {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
        {"model_type": "gpt2", "n_layer": 48, "n_embd": 1600, "n_head": 25, "n_positions": 1024, "vocab_size": 50257},
    ),
    "llama": (
        {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
         "rms_norm_eps": 1e-5},
        {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
         "rms_norm_eps": 1e-5},
    ),
}
TINY = {
    "gpt2": (
        {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 256, "vocab_size": 50257},
        {"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256, "vocab_size": 50257},
    ),
    "llama": (
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32000, "max_position_embeddings": 256},
        {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 256},
    ),
}


def build(config: dict | str, dtype: torch.dtype, device: torch.device):
    """A randomly initialised causal LM from a config dict or a directory holding config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config, str):
        cfg = AutoConfig.from_pretrained(config)
    else:
        cfg = AutoConfig.for_model(**config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model


def make_batch(batch: int, seq: int, vocab: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, : seq // 4] = -100  # prompt
    labels[:, -1] = -100
    return ids.to(device), torch.ones_like(ids).to(device), labels.to(device)


def run_variant(student, teacher, optimizer, criterion, batch, fused: bool, args, device) -> dict:
    ids, attention, labels = batch

    def step():
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=attention, use_cache=False).logits
        if fused:
            out = fused_student_loss(student, ids, attention, labels, teacher_logits, criterion)
        else:
            logits = student(input_ids=ids, attention_mask=attention, use_cache=False).logits
            out = criterion(logits, labels, teacher_logits)
            del logits
        del teacher_logits
        (out.loss / out.num_tokens.clamp_min(1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_extra_bytes(step, device)
    seconds = statistics.median(times)
    return {"step_ms": round(seconds * 1e3, 2), "tokens_per_s": round(ids.numel() / seconds), "peak_gib": round(peak / GIB, 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2, llama")
    parser.add_argument("--student-config", default=None, help="a model directory's config instead (one model pair)")
    parser.add_argument("--teacher-config", default=None)
    parser.add_argument("--objectives", default="ce," + ",".join(DIVERGENCES), help="ce and/or objective names")
    parser.add_argument("--impls", default="reference,auto", help="comma-separated: reference, auto, chunked, triton")
    parser.add_argument("--fused", action="store_true", help="also run the fused lm_head path (impl auto)")
    parser.add_argument("--kd-rate", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 8; tiny: 4)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512; tiny: 128)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (2 layers, real vocabularies)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="outputs/bench/bench_step.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.batch = args.batch or (4 if args.tiny else 8)
    args.seq = args.seq or (128 if args.tiny else 512)
    objectives = [None if x == "ce" else canonical_name(x) for x in args.objectives.split(",")]
    impls = args.impls.split(",")
    if args.student_config or args.teacher_config:
        if not (args.student_config and args.teacher_config):
            parser.error("--student-config and --teacher-config go together")
        pairs = {"custom": (args.student_config, args.teacher_config)}
    else:
        table = TINY if args.tiny else CONFIGS
        pairs = {}
        for name in args.models.split(","):
            if name not in table:
                parser.error(f"--models: unknown {name!r}; valid: {', '.join(table)}")
            pairs[name] = table[name]

    rows = []
    for pair, (student_cfg, teacher_cfg) in pairs.items():
        torch.manual_seed(0)
        student = build(student_cfg, dtype, device).train()
        teacher = build(teacher_cfg, dtype, device).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
        vocab = min(student.config.vocab_size, teacher.config.vocab_size)
        batch = make_batch(args.batch, args.seq, vocab, device)
        variants = [(obj, impl, False) for obj in objectives for impl in impls]
        if args.fused:
            variants += [(obj, "auto", True) for obj in objectives]
        for objective, impl, fused in variants:
            kd_rate = args.kd_rate if objective else 0.0
            criterion = DistillationLoss(objective, kd_rate=kd_rate, temperature=args.temperature, impl=impl)
            row = {"models": pair, "objective": objective or "ce", "impl": impl, "fused": fused}
            try:
                row.update(run_variant(student, teacher, optimizer, criterion, batch, fused, args, device))
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            result = f"{row['step_ms']} ms, {row['tokens_per_s']} tok/s, {row['peak_gib']} GiB" if "step_ms" in row else row["error"]
            print(f"{pair} {row['objective']} {impl}{' fused' if fused else ''}: {result}", flush=True)
        del student, teacher, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()

    memory = "peak GiB" if device.type == "cuda" else "step extra GiB"
    print(f"\n{'models':<8}{'objective':<19}{'impl':<14}{'step ms':>10}{'tokens/s':>11}{memory:>16}{'vs ce':>8}")
    for row in rows:
        if "step_ms" not in row:
            print(f"{row['models']:<8}{row['objective']:<19}{row['impl']:<14}{row['error']:>10}")
            continue
        base = next((r for r in rows if r["models"] == row["models"] and r["objective"] == "ce"
                     and r["impl"] == row["impl"] and r["fused"] == row["fused"] and "step_ms" in r), None)
        ratio = f"{row['step_ms'] / base['step_ms']:.3f}" if base else ""
        impl = row["impl"] + (" fused" if row["fused"] else "")
        print(f"{row['models']:<8}{row['objective']:<19}{impl:<14}{row['step_ms']:>10.2f}{row['tokens_per_s']:>11}"
              f"{row['peak_gib']:>16.3f}{ratio:>8}")
    payload = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "batch": args.batch,
        "seq": args.seq,
        "kd_rate": args.kd_rate,
        "temperature": args.temperature,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
