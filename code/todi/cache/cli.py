"""``code/cache_teacher.py``: one pass of the teacher over a training split into a teacher cache.

``--mode hidden`` (exact): the teacher's final hidden state per response token and its output layer
once; training recomputes the teacher's logits from them, for every objective and temperature.
``--mode topk`` (small): the top-k targets at one temperature (a lower bound of the divergence).

Under torchrun every rank computes its share of the examples not cached yet and writes its own
parts; rank 0 writes meta.json first and complete.json last. Rerunning the same command after an
interruption computes only what is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from todi.util import ds_config
from todi.data.instructions import Collator, DataError, load_split
from todi.util.distributed import DistEnv, all_reduce_sum, barrier, process_group
from todi.util.log import logger, setup_logging
from todi.models import build_teacher, load_tokenizer
from todi.cache.build import build_cache
from todi.cache.head import output_layer, save_output_layer
from todi.cache.store import (
    HIDDEN_DTYPES,
    MODES,
    CacheError,
    CacheSettings,
    data_fingerprint,
    hash_files,
    mark_complete,
    tokenizer_fingerprint,
    write_meta,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cache_teacher.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-model-path", required=True, help="the teacher: a Hugging Face model directory")
    p.add_argument("--teacher-peft-path", default=None, help="LoRA adapter merged into the teacher")
    p.add_argument("--data-dir", required=True, help="directory with the split (train.jsonl)")
    p.add_argument("--split", default="train", help="file stem of the split (default train)")
    p.add_argument("--out", required=True, help="cache directory (also where a previous build resumes)")
    p.add_argument("--mode", choices=MODES, default="topk",
                   help="hidden: the teacher's final hidden states + its output layer (exact KD for every objective and "
                        "temperature, H x 2 bytes per token in bf16); topk: top-k targets at --kd-temperature (default topk)")
    p.add_argument("--top-k", type=int, default=64, help="topk mode: teacher entries kept per token (the rest: one bucket)")
    p.add_argument("--kd-temperature", type=float, default=1.0,
                   help="topk mode: the training temperature (cached at it; a hidden cache serves any)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--train-num", type=int, default=-1, help="the first N examples (-1: all)")
    p.add_argument("--dtype", choices=tuple(HIDDEN_DTYPES), default=None,
                   help="storage: topk mode fp16 (default) or fp32 log-probabilities; hidden mode the states and the "
                        "output layer (default: the teacher's precision, so they equal the live teacher's)")
    p.add_argument("--precision", choices=tuple(ds_config.PRECISIONS), default=None,
                   help="the teacher's weights (default: bf16 on a GPU, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--part-size", type=int, default=256, help="examples per atomically written part")
    p.add_argument("--overwrite", action="store_true", help="discard a cache made with other settings")
    return p


def _run(args: argparse.Namespace, env: DistEnv) -> None:
    setup_logging(env.rank)
    tokenizer = load_tokenizer(args.teacher_model_path)
    data_path = Path(args.data_dir) / f"{args.split}.jsonl"
    split = load_split(data_path, tokenizer, limit=args.train_num, max_length=args.max_length,
                       max_prompt_length=args.max_prompt_length)
    precision = args.precision or ("bf16" if env.device.type == "cuda" else "fp32")
    teacher = build_teacher(args.teacher_model_path, dtype=ds_config.PRECISIONS[precision],
                            adapter_path=args.teacher_peft_path).to(env.device).eval()
    # the entries the tokenizer defines: output rows beyond it (padding) never enter a target
    vocab = min(teacher.get_output_embeddings().weight.shape[0], len(tokenizer))
    layer = output_layer(teacher) if args.mode == "hidden" else None
    dtype = args.dtype or (precision if args.mode == "hidden" else "fp16")
    settings = CacheSettings(k=min(args.top_k, vocab) if args.mode == "topk" else 0,
                             temperature=args.kd_temperature if args.mode == "topk" else None, dtype=dtype,
                             max_length=args.max_length, max_prompt_length=args.max_prompt_length, mode=args.mode,
                             softcap=layer.softcap if layer is not None else None)
    settings.check()
    root = Path(args.out)
    if env.is_main:
        fingerprint = {"teacher": hash_files(args.teacher_model_path), "adapter": hash_files(args.teacher_peft_path),
                       "tokenizer": tokenizer_fingerprint(tokenizer), "data": data_fingerprint(data_path),
                       "precision": precision}
        write_meta(root, settings, fingerprint, args.overwrite)
        if layer is not None:
            save_output_layer(root, layer, HIDDEN_DTYPES[dtype])
    barrier()
    collate = Collator(pad_id=tokenizer.pad_token_id)
    counts = build_cache(teacher, split.examples, collate, root, settings, device=env.device, vocab=vocab,
                         layer=layer, batch_size=args.batch_size, part_size=args.part_size, rank=env.rank,
                         world_size=env.world_size, progress=env.is_main)
    checked = "" if counts["max_difference"] is None else \
        f"; output layer vs teacher logits: max relative difference {counts['max_difference']:.1e}"
    logger.info(f"rank {env.rank}: {counts['examples']} examples, {counts['tokens']} tokens, "
                f"{counts['bytes'] / 2**20:.1f} MiB written{checked}")
    tails = all_reduce_sum(torch.tensor([counts["tail_mass"], counts["tail_entropy"], counts["tokens"]],
                                   dtype=torch.float64, device=env.device))
    barrier()
    if env.is_main:
        if args.mode == "topk" and tails[2] > 0:  # what the bucket hides, over the tokens this run computed
            logger.info(f"top-{settings.k} at temperature {settings.temperature:g}: mean tail mass P_R "
                        f"{tails[0] / tails[2]:.4f}, teacher entropy inside the tail P_R*H(p_R) {tails[1] / tails[2]:.4f} "
                        "nats per token (invisible to every objective; --mode hidden keeps it)")
        totals = mark_complete(root, split.examples)
        if totals is None:
            raise CacheError(f"{root}: some examples are still missing; rerun the same command")
        what = f"k = {settings.k}" if args.mode == "topk" else f"hidden states, {dtype}"
        logger.info(f"teacher cache {root} complete: {totals['examples']} examples, {totals['tokens']} tokens, "
                    f"{totals['bytes'] / 2**20:.1f} MiB ({totals['bytes_per_token']} bytes per token, {what})")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name in ("top_k", "batch_size", "part_size", "max_length"):
        if getattr(args, name) < 1:
            raise SystemExit(f"cache_teacher.py: error: --{name.replace('_', '-')} must be >= 1")
    try:
        with process_group() as env:
            _run(args, env)
    except (CacheError, DataError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"cache_teacher.py: error: {e}") from None
