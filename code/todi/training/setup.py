"""What a training run is built from: the DeepSpeed settings, the data, the models and engine,
and the criterion, each from the command-line arguments (``code/distillation.py``'s flags).

:class:`todi.training.trainer.Trainer` calls these in order; each fits on a screen and can be used alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from todi.util import ds_config
from todi.training.args import objective_kwargs
from todi.loss.criterion import DistillationLoss
from todi.data.instructions import Collator, Split, load_split
from todi.util.distributed import DistEnv
from todi.generation.backends import check_backend
from todi.util.log import logger
from todi.models import (
    build_student,
    build_teacher,
    shared_vocab_size,
    load_tokenizer,
    optimizer_param_groups,
    same_tokenizer,
)
from todi.training.monitor import TrainingMonitor, monitor_sections
from todi.training.schedule import build_scheduler

__all__ = ["DeepSpeedSettings", "Models", "TrainingData", "build_criterion", "build_data", "build_models", "check_model_paths",
           "build_monitor", "deepspeed_settings", "schedule_length", "uses_teacher"]


def uses_teacher(args: argparse.Namespace) -> bool:
    return args.criterion == "various_divergence" and args.kd_rate > 0


# flag -> what it names: a missing directory is reported with its flag before anything is written
MODEL_PATH_FLAGS = {"model_path": "the student's model directory", "teacher_model_path": "the teacher's model directory",
                    "teacher_peft_path": "the teacher's LoRA adapter", "teacher_cache": "the teacher cache"}


def check_model_paths(args: argparse.Namespace) -> None:
    """Every model, adapter and cache directory the flags name exists (else FileNotFoundError naming the flag)."""
    for dest, what in MODEL_PATH_FLAGS.items():
        path = getattr(args, dest)
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"--{dest.replace('_', '-')} {path}: no such directory ({what})")


def live_teacher(args: argparse.Namespace) -> bool:
    """Whether a teacher model runs: KD without a teacher cache, or on-policy KD (the teacher scores the
    sampled responses; a cache serves the dataset's share)."""
    return uses_teacher(args) and (args.teacher_cache is None or args.data_mode != "fixed")


def open_teacher_cache(args: argparse.Namespace, tokenizer):
    """The run's teacher cache, checked against its data, tokenizer, lengths and temperature (and the
    teacher's weights when --teacher-model-path is given too), or None."""
    if not uses_teacher(args) or args.teacher_cache is None:
        return None
    from todi.cache.store import TeacherCache

    cache = TeacherCache(args.teacher_cache)
    cache.check(data_path=Path(args.data_dir) / "train.jsonl", tokenizer=tokenizer, max_length=args.max_length,
                max_prompt_length=args.max_prompt_length, temperature=args.kd_temperature,
                teacher_path=args.teacher_model_path,
                teacher_adapter=args.teacher_peft_path if args.teacher_model_path is not None else None)
    if cache.mode == "hidden":
        what = f"the teacher's final hidden states ({cache.settings.dtype}) and output layer: exact teacher logits"
    else:
        what = f"top-{cache.settings.k} targets at temperature {cache.settings.temperature:g}"
        if args.fused_lm_head:
            raise ValueError("--fused-lm-head reads teacher logits: a top-k --teacher-cache has none; build a hidden-state "
                             "cache (code/cache_teacher.py --mode hidden) or drop --fused-lm-head")
    logger.info(f"teacher cache {args.teacher_cache}: {what} ({cache.bytes_per_token:.0f} bytes per token); "
                "no teacher is loaded")
    return cache


@dataclass
class DeepSpeedSettings:
    """Precision and ZeRO stage from the DeepSpeed file; batch settings from the command line."""

    precision: str
    zero_stage: int
    dtype: torch.dtype
    config: dict


def deepspeed_settings(args: argparse.Namespace, env: DistEnv) -> DeepSpeedSettings:
    raw = ds_config.load_config(args.deepspeed_config)
    precision, zero_stage = ds_config.precision(raw), ds_config.zero_stage(raw)
    if args.model_dtype is not None and args.model_dtype != precision:
        raise SystemExit(f"--model-dtype {args.model_dtype} contradicts the DeepSpeed config ({precision}); "
                         "drop it: the config sets the precision of both models")
    if args.teacher_model_fp16 and precision != "fp16":
        raise SystemExit(f"--teacher-model-fp16 contradicts the DeepSpeed config ({precision}); drop it: "
                         "the teacher runs in the training precision")
    if args.n_gpu is not None and args.n_gpu != env.local_world_size:
        raise SystemExit(f"--n-gpu {args.n_gpu} but {env.local_world_size} processes per node were started")
    config, changes = ds_config.fill_config(
        raw, micro_batch_size=args.batch_size, grad_accum=args.gradient_accumulation_steps,
        clip_grad=args.clip_grad, world_size=env.world_size,
    )
    overriding = f" (overriding {'; '.join(changes)})" if changes else ""
    logger.info(f"DeepSpeed config {args.deepspeed_config}: {precision}, ZeRO stage {zero_stage}; from the command "
                f"line: micro-batch {args.batch_size}, gradient accumulation {args.gradient_accumulation_steps}, "
                f"clipping {args.clip_grad:g}{overriding}")
    return DeepSpeedSettings(precision, zero_stage, ds_config.PRECISIONS[precision], config)


@dataclass
class TrainingData:
    tokenizer: object
    teacher_tokenizer: object | None  # None without a teacher
    train: Split
    dev: Split | None
    collate: Collator  # training batches (with the teacher cache's targets, if any)
    eval_collate: Collator  # dev batches: no teacher targets (the cache holds the training split only)


def build_data(args: argparse.Namespace) -> TrainingData:
    """Tokenizers, the train (and dev) split and the collator; a teacher tokenizer that differs
    from the student's tokenises separately (alignment is checked)."""
    tokenizer = load_tokenizer(args.model_path)
    teacher_tokenizer = load_tokenizer(args.teacher_model_path) if live_teacher(args) else None
    separate = teacher_tokenizer is not None and not same_tokenizer(tokenizer, teacher_tokenizer)
    if separate:
        logger.info("teacher tokenizer differs from the student's: tokenising separately (alignment is checked)")
    data_dir = Path(args.data_dir)
    lengths = dict(max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                   teacher_tokenizer=teacher_tokenizer if separate else None)
    train = load_split(data_dir / "train.jsonl", tokenizer, limit=args.train_num, **lengths)
    logger.info(train.stats.summary("train"))
    dev = None
    if args.do_valid:
        dev = load_split(data_dir / "dev.jsonl", tokenizer, limit=args.dev_num, training=False, **lengths)
        logger.info(dev.stats.summary("dev"))
    collate = Collator(pad_id=tokenizer.pad_token_id, teacher_pad_id=teacher_tokenizer.pad_token_id if separate else None,
                       pad_to=args.max_length if args.pad_to_max_length else None)
    train_collate = dataclasses.replace(collate, teacher_cache=open_teacher_cache(args, tokenizer))
    return TrainingData(tokenizer, teacher_tokenizer, train, dev, train_collate, collate)


def schedule_length(args: argparse.Namespace, n_examples: int, world_size: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, epochs): training stops at whichever of
    --total-iters and --num-epochs comes first."""
    per_step = args.batch_size * args.gradient_accumulation_steps * world_size
    steps_per_epoch = n_examples // per_step
    if steps_per_epoch == 0:
        raise SystemExit(f"{n_examples} training examples do not fill one optimizer step of {per_step} "
                         "(batch size × gradient accumulation × processes)")
    total = args.total_iters or steps_per_epoch * args.num_epochs
    epochs = args.num_epochs or math.ceil(total / steps_per_epoch)
    logger.info(f"{steps_per_epoch} optimizer steps per epoch of {per_step} examples; "
                f"{total} steps over at most {epochs} epochs")
    return steps_per_epoch, total, epochs


@dataclass
class Models:
    engine: object  # the student's DeepSpeed engine
    scheduler: object
    teacher: object | None  # frozen, on the device (sharded like the student under ZeRO-3)
    kd_vocab: int | None = None  # the leading vocabulary entries KD compares (both tokenizers and output layers)
    cache_head: object | None = None  # a hidden-state teacher cache's output layer, on the device


def _log_parameters(model, name: str, precision: str) -> None:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"{name}: {type(model).__name__} from {getattr(model.config, '_name_or_path', '?')}, "
                f"{total:,} parameters ({trainable:,} trainable), {precision}")


def _partition_teacher(deepspeed, teacher, config: dict):
    """ZeRO-3: shard the frozen teacher like the student (an engine without optimizer)."""
    zero = {k: v for k, v in config["zero_optimization"].items() if not k.startswith("offload_optimizer")}
    teacher_config = {key: config[key] for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                                   "train_batch_size", "bf16", "fp16") if key in config}
    teacher_config.update(zero_optimization=zero, steps_per_print=config["steps_per_print"])
    engine, *_ = deepspeed.initialize(model=teacher, config=teacher_config, dist_init_required=False)
    engine.module.eval()
    return engine


def build_models(args: argparse.Namespace, env: DistEnv, ds: DeepSpeedSettings, data: TrainingData,
                 total_iters: int) -> Models:
    """Student (full or LoRA) in its DeepSpeed engine with AdamW and the LR schedule; the teacher
    (with its adapter merged) on the device; vocabularies checked; optionally compiled."""
    import deepspeed

    student = build_student(args.model_path, dtype=ds.dtype, peft=args.peft, lora_r=args.peft_lora_r,
                            lora_alpha=args.peft_lora_alpha, lora_dropout=args.peft_lora_dropout,
                            gradient_checkpointing=args.gradient_checkpointing)
    _log_parameters(student, "student", ds.precision)
    teacher, kd_vocab = None, None
    if live_teacher(args):
        teacher = build_teacher(args.teacher_model_path, dtype=ds.dtype, adapter_path=args.teacher_peft_path)
        kd_vocab = shared_vocab_size(student, teacher, data.tokenizer, data.teacher_tokenizer)
        _log_parameters(teacher, "teacher", ds.precision)
    cache, cache_head = data.collate.teacher_cache, None
    if cache is not None and cache.mode == "hidden":  # the teacher's output layer stands for the teacher
        cache_head = cache.output_layer(env.device)
        kd_vocab = shared_vocab_size(student, cache_head.weight.shape[0], data.tokenizer, data.tokenizer)
    optimizer = torch.optim.AdamW(optimizer_param_groups(student, args.weight_decay), lr=args.lr,
                                  fused=env.device.type == "cuda")
    scheduler = build_scheduler(optimizer, args.lr_decay_style, warmup=args.warmup_iters, total=total_iters,
                                lr_min=args.lr_min)
    engine, _, _, scheduler = deepspeed.initialize(model=student, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds.config, dist_init_required=False)
    teacher_engine = None
    if teacher is not None and ds.zero_stage == 3:
        teacher_engine = _partition_teacher(deepspeed, teacher, ds.config)
        teacher = teacher_engine.module
    elif teacher is not None:
        teacher.to(env.device)
    if args.compile:
        engine.compile(compile_kwargs={"dynamic": True})
        if teacher_engine is not None:
            teacher_engine.compile(compile_kwargs={"dynamic": True})
        elif teacher is not None:
            teacher = torch.compile(teacher, dynamic=True)
    return Models(engine, scheduler, teacher, kd_vocab, cache_head)


def build_criterion(args: argparse.Namespace, total_iters: int, vocab_size: int | None = None):
    """The criterion (with its AdaKD planner when asked): the objective and its parameters from the registry's flags;
    ``vocab_size``: the compared vocabulary (:func:`todi.models.shared_vocab_size`; None: min of the two)."""
    adakd = None
    if args.adakd:
        from todi.loss.adakd import AdaKD  # only AdaKD runs need it

        adakd = AdaKD(total_iters, c=args.adakd_c, ema_decay=args.adakd_ema, eps=args.adakd_eps,
                      delta=args.adakd_delta, warmup=args.adakd_warmup, min_ratio=args.adakd_min_ratio,
                      difficulty=args.adakd_difficulty)
    if args.criterion != "various_divergence":
        return DistillationLoss(None, kd_rate=0.0)
    if not uses_teacher(args):
        logger.info("--kd-rate 0: the teacher is not used (plain SFT through the same loss)")
    criterion = DistillationLoss(args.kd_objective, kd_rate=args.kd_rate, temperature=args.kd_temperature,
                                 impl=args.kd_impl, planner=adakd, vocab_size=vocab_size, **objective_kwargs(args))
    return criterion


def build_colocated(args: argparse.Namespace, tokenizer):
    """The process's vLLM engine beside training when dev generation or rollouts use vLLM (started at
    its first use; :mod:`todi.generation.colocated`), or None."""
    dev = args.eval_gen and args.dev_gen_backend == "vllm"
    rollouts = args.data_mode != "fixed" and args.rollout_backend == "vllm"
    if not (dev or rollouts):
        return None
    check_backend("vllm", "--dev-gen-backend" if dev else "--rollout-backend")  # one error line, before training
    from todi.generation.colocated import ColocatedEngine

    return ColocatedEngine(tokenizer, args.max_length, memory_share=args.vllm_memory_share)


def build_mixer(args: argparse.Namespace, env: DistEnv, data: TrainingData, total_iters: int, zero_stage: int,
                colocated=None):
    """The on-policy data mixer of ``--data-mode gkd|distillm`` (:mod:`todi.training.onpolicy`), or None;
    ``colocated``: the process's vLLM engine (``--rollout-backend vllm``)."""
    if args.data_mode == "fixed":
        return None
    from todi.training.onpolicy import DataMixer, MixerSettings
    from todi.training.rollout_engines import RolloutEngines

    if data.collate.teacher_pad_id is not None:
        raise ValueError(f"--data-mode {args.data_mode}: the teacher must share the student's tokenizer (it scores "
                         "the student's sampled token ids)")
    global_batch = args.batch_size * args.gradient_accumulation_steps * env.world_size
    if args.data_mode == "distillm" and args.replay_capacity < global_batch:
        raise ValueError(f"--replay-capacity {args.replay_capacity} is less than a global batch ({global_batch} = "
                         "batch size × gradient accumulation × processes): a replayed step draws a whole global batch")
    settings = MixerSettings.from_args(args)
    what = {"gkd": f"student responses with probability {args.student_gen_ratio:g}" +
                   (", else the teacher's (--seq-kd)" if args.seq_kd else ""),
            "distillm": f"DistiLLM's adaptive schedule (threshold from {args.init_threshold:g}, loss eps "
                        f"{args.loss_eps:g}, replay buffer of {args.replay_capacity} samples)"}[args.data_mode]
    logger.info(f"data mode {args.data_mode}: {what}; rollouts of up to {args.rollout_max_new_tokens} tokens "
                f"(temperature {args.rollout_temperature:g}, top-k {args.rollout_top_k}, top-p {args.rollout_top_p:g}); "
                f"KD only on sampled responses (weight {args.kd_rate:g}, no CE); rollouts by {args.rollout_backend}" +
                (f", weights synced every {args.rollout_sync_interval} steps" if args.rollout_backend == "vllm" else ""))
    engines = RolloutEngines(args.rollout_backend, data.tokenizer, sync_interval=args.rollout_sync_interval,
                             zero_stage=zero_stage, batch_size=args.batch_size,
                             synced_gpus=zero_stage == 3 and env.world_size > 1, colocated=colocated)
    return DataMixer(settings, seed=args.seed, total_steps=total_iters, env=env, collate=data.eval_collate,
                     engines=engines, max_length=args.max_length, micro_batch=args.batch_size,
                     grad_accum=args.gradient_accumulation_steps)


def build_monitor(args: argparse.Namespace, env: DistEnv, save_dir: Path, *, fresh: bool) -> TrainingMonitor:
    """DeepSpeed's monitor for ``--report-to`` (a no-op without it); ``fresh``: not a resumed run.

    Built after the engine: DeepSpeed's monitor asks ``deepspeed.comm`` for the rank."""
    report_dir = Path(args.report_dir) if args.report_dir is not None else Path(save_dir) / "monitor"
    job_name = Path(save_dir).resolve().name  # runs sharing a --report-dir appear side by side
    sections = monitor_sections(args.report_to, report_dir, job_name, args.wandb_project)
    monitor = TrainingMonitor(sections, report_dir=report_dir, job_name=job_name, is_main=env.is_main, fresh=fresh)
    if monitor.enabled:
        logger.info(f"live metrics: {', '.join(args.report_to)} in {report_dir}")
    return monitor
