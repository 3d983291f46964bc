"""Evaluation throughput: todi.generation.sampling.generate() against the official way of generating.

    python scripts/bench/bench_generate.py --model-config model_hub/gpt2/gpt2-base \\
        --tokenizer model_hub/gpt2/gpt2-base --data data/dolly/valid.jsonl --num-prompts 500 \\
        --batch-size 32 --extra-batch-sizes 128 500 --out bench_generate.json

A model with the config's shapes and random weights answers the first N prompts twice with the same
batch size and sampling settings (top_k 0, top_p 1.0, temperature 1.0, no_repeat_ngram_size 6):

* official: as DSKD/ToDi's evaluate_main.py: prompts in dataset order, each tokenised and left-padded
  to max_prompt_length, HF ``generate(do_sample=True)`` with max_length − max_prompt_length new
  tokens, ``return_dict_in_generate`` and ``output_scores`` on (its loss pass is left out);
* ours: ``todi.generation.sampling.generate`` (batches of similar prompt length, per-example seeded sampling).

Prints examples/s of both and their ratio, and writes everything as JSON. ``--extra-batch-sizes``
also times ours at other batch sizes (our answers do not depend on the batch size, so a larger batch
is a free speed-up) and counts how many answers are identical to those at --batch-size. Random
weights rarely emit EOS, so both generate (nearly) the full answer budget: the comparison is of the
generation machinery, not of early stopping. No timing is asserted anywhere; this only measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "code"))

from todi.data.instructions import read_jsonl  # noqa: E402
from todi.util.ds_config import PRECISIONS  # noqa: E402
from todi.generation.sampling import SamplingConfig, generate  # noqa: E402
from todi.models import load_tokenizer  # noqa: E402


def parse_overrides(text: str | None) -> dict:
    """``n_layer=2,n_embd=64`` → {"n_layer": 2, "n_embd": 64} (ints, floats or strings)."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --config-overrides expects key=value items, got {item!r}")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value
    return out


def build_model(config_dir: Path, overrides: dict, dtype: torch.dtype, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir, **overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def official_generate(model, tokenizer, prompts: list[str], config: SamplingConfig, batch_size: int, seed: int) -> list[str]:
    """The official evaluation loop's generation (DSKD/ToDi evaluate_main.py), without its loss pass."""
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    gen_config = GenerationConfig(
        do_sample=True, top_p=config.top_p, top_k=config.top_k, temperature=config.temperature,
        no_repeat_ngram_size=config.no_repeat_ngram_size,
        # the official code passes max_length=512 and max_new_tokens=512-256, which wins; only the latter here
        max_new_tokens=config.max_length - config.max_prompt_length,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        return_dict_in_generate=True, output_scores=True,
    )
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = config.max_prompt_length
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, prompt in enumerate(batch):
            tokens = tokenizer.encode(prompt, add_special_tokens=False)[:width]  # official keeps the head
            ids[i, width - len(tokens):] = torch.tensor(tokens)
            mask[i, width - len(tokens):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config)
        texts = tokenizer.batch_decode(out.sequences[:, width:], skip_special_tokens=True)
        answers += [t.strip() for t in texts]
    return answers


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", type=Path, required=True, help="a model directory with config.json (weights unused)")
    p.add_argument("--config-overrides", help="config changes, e.g. n_layer=2,n_embd=64,n_head=4 (tiny runs)")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="a JSONL set with prompts (e.g. data/dolly/valid.jsonl)")
    p.add_argument("--num-prompts", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--extra-batch-sizes", type=int, nargs="*", default=[], help="also time ours at these batch sizes")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--dtype", choices=PRECISIONS, default=None, help="default: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = PRECISIONS[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    tokenizer = load_tokenizer(args.tokenizer)
    prompts = [r["prompt"] for r in read_jsonl(args.data)][: args.num_prompts]
    model = build_model(args.model_config, parse_overrides(args.config_overrides), dtype, device)
    config = SamplingConfig(max_length=args.max_length, max_prompt_length=args.max_prompt_length)

    # warm-up (CUDA context, kernels, allocator) on two prompts, both paths
    official_generate(model, tokenizer, prompts[:2], config, args.batch_size, args.seed)
    generate(model, tokenizer, prompts[:2], config, seed=args.seed, batch_size=args.batch_size)

    official, t_official = timed(lambda: official_generate(model, tokenizer, prompts, config, args.batch_size, args.seed), device)
    ours, t_ours = timed(lambda: generate(model, tokenizer, prompts, config, seed=args.seed, batch_size=args.batch_size), device)

    def tokens(answers):
        return sum(len(x) for x in tokenizer(answers, add_special_tokens=False)["input_ids"]) / max(len(answers), 1)

    n = len(prompts)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "model_config": str(args.model_config),
        "config_overrides": parse_overrides(args.config_overrides),
        "num_prompts": n,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "official": {"seconds": round(t_official, 3), "examples_per_second": round(n / t_official, 3),
                     "avg_answer_tokens": round(tokens(official), 1)},
        "ours": {"seconds": round(t_ours, 3), "examples_per_second": round(n / t_ours, 3),
                 "avg_answer_tokens": round(tokens(ours), 1)},
        "speedup": round(t_official / t_ours, 3),
        "extra_batch_sizes": [],
    }
    print(f"{n} prompts, batch size {args.batch_size}, {result['dtype']} on {result['device']}")
    print(f"official: {result['official']['examples_per_second']:.2f} examples/s ({t_official:.1f} s)")
    print(f"ours:     {result['ours']['examples_per_second']:.2f} examples/s ({t_ours:.1f} s)")
    print(f"speed-up: {result['speedup']:.2f}x")
    for bs in args.extra_batch_sizes:
        answers, t = timed(lambda: generate(model, tokenizer, prompts, config, seed=args.seed, batch_size=bs), device)
        same = sum(a == b for a, b in zip(answers, ours))
        result["extra_batch_sizes"].append({
            "batch_size": bs, "seconds": round(t, 3), "examples_per_second": round(n / t, 3),
            "speedup_vs_official": round(t_official / t, 3), "identical_answers": same,
        })
        print(f"ours, batch size {bs}: {n / t:.2f} examples/s ({t_official / t:.2f}x official); "
              f"{same}/{n} answers identical to batch size {args.batch_size}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
