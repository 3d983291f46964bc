"""Evaluate a checkpoint (full, or base model + LoRA adapter) by sampled generation and ROUGE-L.

    torchrun --nproc_per_node N code/evaluate.py --model-path CKPT \\
        --data-dir data/dolly data/sinst/11_ --data-names dolly sinst/11_ \\
        --seed 10 20 30 40 50 --save-dir CKPT/eval

writes ``<save-dir>/<name>/seed<seed>/answers.jsonl`` and ``metrics.json`` for every set and seed.
``scripts/eval/run_eval.sh`` and ``run_eval_lora.sh`` run the papers' protocol. ``--backend vllm``
gives the same answers (token-identical in fp32) at vLLM's speed: every (set, seed) in one engine call.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from todi.data.instructions import DataError
from todi.util.distributed import DistEnv, process_group
from todi.util.failures import fail
from todi.util.ds_config import PRECISIONS
from todi.evaluation.results import PAPER_SETS
from todi.evaluation.sets import EvalSet, base_model_of_adapter, check_model_dir, evaluate_sets
from todi.generation.backends import BACKENDS, check_backend
from todi.generation.engine import engine_class
from todi.generation.sampling import SamplingConfig
from todi.generation.vllm_engine import DEFAULT_MEMORY_SHARE
from todi.models import load_tokenizer

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``code/evaluate.py``."""
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model-path", type=Path, help="checkpoint directory; with --peft-path, the base model "
                   "(default: the adapter's adapter_config.json base_model_name_or_path)")
    g.add_argument("--peft", choices=["lora"], help="the adapter type of --peft-path (official flag; LoRA is the only one)")
    g.add_argument("--peft-path", type=Path, help="LoRA adapter directory, merged into the base model for generation")
    g.add_argument("--dtype", choices=list(PRECISIONS), default="fp32",
                   help="weights dtype (default fp32: answers then do not depend on batch size or GPU count; "
                        "the official evaluation ran bf16, which is faster for large models)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", type=Path, nargs="+",
                   help="one or more set directories, each holding valid.jsonl (prompt, output); required")
    g.add_argument("--data-names", nargs="+",
                   help="the sets' names, used as output sub-folders (default: each directory's name)")
    g.add_argument("--data-num", "--dev-num", type=int, nargs="+", default=[-1], dest="data_num",
                   help="evaluate only the first N examples of each set (-1: all; UnNI uses 10000): one value "
                        "for every set, or one per --data-dir")
    g = p.add_argument_group("generation")
    g.add_argument("--seed", "--seeds", type=int, nargs="+", default=[10, 20, 30, 40, 50], dest="seeds",
                   help="sampling seeds, one result per seed")
    g.add_argument("--backend", choices=BACKENDS, default="hf",
                   help="generation engine: hf (the seeded Hugging Face sampler, the reference; default) or "
                        "vllm (the same answers, token-identical in fp32; every set and seed in one engine call; "
                        "needs pip install -e '.[vllm]')")
    g.add_argument("--gpu-memory-utilization", type=float, default=DEFAULT_MEMORY_SHARE,
                   help="vllm: the share of the device memory the engine may take for weights and KV cache "
                        "(default %(default)s; on CPU builds VLLM_CPU_KVCACHE_SPACE=GiB sizes the cache instead)")
    g.add_argument("--eval-batch-size", type=int, default=32,
                   help="hf: prompts per generate() call and rank (vllm batches on its own)")
    g.add_argument("--max-length", type=int, default=512, help="prompt budget + answer budget, in tokens")
    g.add_argument("--max-prompt-length", type=int, default=256,
                   help="longer prompts keep their last tokens; answers get max-length - max-prompt-length tokens")
    g.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=True,
                   help="sample (default, the official protocol) or decode greedily")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--no-repeat-ngram-size", type=int, default=6,
                   help="ban repeating any n-gram of this size (prompt included); 0 disables. The official test "
                        "evaluation uses 6 (and its dev evaluation silently 0); here one value serves both")
    p.add_argument("--save-dir", type=Path, help="results go to <save-dir>/<set>/seed<seed>/; required")
    p.add_argument("--check-model", action="store_true",
                   help="only check that --model-path is a checkpoint (and --peft-path an adapter), then stop: "
                        "a training run folder is an error naming its checkpoints (the eval scripts' first step)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, checked together (an inconsistent combination is an argparse error, exit code 2)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.peft and not args.peft_path:
        p.error("--peft lora needs --peft-path ADAPTER")
    if not args.peft_path and not args.model_path:
        p.error("give --model-path (a checkpoint), or --peft-path (a LoRA adapter)")
    if args.check_model:
        return args
    missing = [flag for flag, value in (("--data-dir", args.data_dir), ("--save-dir", args.save_dir)) if value is None]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)}")
    if args.data_names is None:
        args.data_names = [d.name for d in args.data_dir]
    if len(args.data_names) != len(args.data_dir):
        p.error(f"{len(args.data_dir)} --data-dir but {len(args.data_names)} --data-names")
    if any(n == 0 or n < -1 for n in args.data_num):
        p.error("--data-num must be a positive number of examples, or -1 for all")
    if len(args.data_num) not in (1, len(args.data_dir)):
        p.error(f"{len(args.data_dir)} --data-dir but {len(args.data_num)} --data-num (give one, or one per set)")
    if not 0 < args.gpu_memory_utilization <= 1:
        p.error(f"--gpu-memory-utilization {args.gpu_memory_utilization}: expected a share in (0, 1]")
    if args.eval_batch_size < 1:
        p.error("--eval-batch-size must be at least 1")
    return args


def check_model(args: argparse.Namespace) -> Path:
    """The model directory to load, after checking it (and the adapter) before anything is loaded."""
    if args.peft_path:
        check_model_dir(args.peft_path, "adapter", "--peft-path")
    model_path = args.model_path or base_model_of_adapter(args.peft_path)
    check_model_dir(model_path, "model", "--model-path" if args.model_path else "the adapter's base model")
    return model_path


def evaluate(args: argparse.Namespace) -> None:
    """Load the model once, then answer and score every set with every seed (all ranks take part)."""
    config = SamplingConfig(
        do_sample=args.do_sample, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        no_repeat_ngram_size=args.no_repeat_ngram_size, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
    )
    check_backend(args.backend, "--backend")  # before any loading: a missing vLLM is one error line
    model_path = check_model(args)
    sets = [EvalSet(name, d / "valid.jsonl") for name, d in zip(args.data_names, args.data_dir)]
    for s in sets:
        if not s.path.is_file():
            hint = ("prepare it with code/prepare_data.py" if s.name in PAPER_SETS else
                    f"not one of the papers' sets {', '.join(PAPER_SETS)}: a folder of your own needs valid.jsonl")
            raise FileNotFoundError(f"{s.path}: no such file (set {s.name!r}; {hint})")
    # a group of one without torchrun; NCCL on GPUs (one per local rank), gloo on CPU
    with process_group() as env:
        _evaluate_loaded(args, model_path, sets, config, env)


def _evaluate_loaded(args: argparse.Namespace, model_path: Path, sets: list[EvalSet], config: SamplingConfig,
                     env: DistEnv) -> None:
    """Load the model on this rank's device and run every set with every seed."""
    rank, world_size, device = env.rank, env.world_size, env.device
    dtype = PRECISIONS[args.dtype]
    # the adapter directory's tokenizer if it saved one (it may add tokens), else the model's
    tokenizer_dir = args.peft_path if args.peft_path and (args.peft_path / "tokenizer_config.json").is_file() else model_path
    tokenizer = load_tokenizer(tokenizer_dir)
    info = {
        "model_path": str(model_path),
        "adapter_path": str(args.peft_path) if args.peft_path else None,
        "dtype": str(dtype).removeprefix("torch."),
        "backend": args.backend,
    }
    log = print if rank == 0 else (lambda *a, **k: None)
    log(f"evaluating {model_path}{' + ' + str(args.peft_path) if args.peft_path else ''} ({info['dtype']}, "
        f"{world_size} rank(s) on {device.type}, {args.backend}) on {', '.join(s.name for s in sets)} "
        f"with seeds {args.seeds}")
    engine = engine_class(args.backend).from_checkpoint(
        model_path, tokenizer, config, dtype=dtype, device=device, adapter_path=args.peft_path,
        batch_size=args.eval_batch_size, memory_share=args.gpu_memory_utilization,
    )
    evaluate_sets(
        engine, sets, args.seeds, args.save_dir, config, batch_size=args.eval_batch_size,
        data_num=args.data_num if len(args.data_num) > 1 else args.data_num[0], rank=rank,
        world_size=world_size, info=info, log=log,
    )


def main(argv=None) -> int:
    """``code/evaluate.py``: 0, or 2 after one ``error:`` line on bad input (recorded for the launchers)."""
    args = parse_args(argv)
    try:
        if args.check_model:
            check_model(args)
            return 0
        evaluate(args)
    except (DataError, OSError, ValueError) as e:
        code = fail(f"error: {e}")
    else:
        code = 0
    return code
