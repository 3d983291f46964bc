"""The training loop: SFT or KD on a DeepSpeed engine, dev evaluation, checkpoints, exact resume.

One optimizer step = ``gradient_accumulation_steps`` micro-batches on every process. The loss of a
micro-batch is summed over its response tokens and scaled by :func:`todi.criterion.loss_scale` with
the response-token count of the whole step (all micro-batches, all processes), so every response
token of a step weighs the same, as in the official code.

The step path never waits for the device: metrics are summed on the device and reduced across
processes once per log interval; the only per-step collective is the token count above (issued
asynchronously on GPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from todi import checkpoint as ckpt
from todi import ds_config
from todi.batching import epoch_plan
from todi.criterion import DistillationLoss, LossOutput, cross_entropy_sum, loss_scale
from todi.data import Batch, Collator, DataError, Split, load_split
from todi.distributed import DistEnv, all_reduce_sum, barrier, init_distributed
from todi.fused_head import fused_student_loss
from todi.labels import IGNORE_INDEX
from todi.log import MetricsLog, format_record, logger, setup_logging
from todi.models import (
    build_student,
    build_teacher,
    check_vocabularies,
    load_tokenizer,
    optimizer_param_groups,
    same_tokenizer,
)
from todi.schedule import build_scheduler
from todi.args import objective_kwargs, run_identity

__all__ = ["Trainer", "main", "sampling_config", "student_loss", "teacher_forward"]

def student_loss(model, batch: Batch, criterion: DistillationLoss, teacher_logits: Tensor | None,
                 *, diagnostics: bool = False, fused: bool = False) -> LossOutput:
    """Student forward and loss of one micro-batch.

    ``fused``: the output layer, CE and KD run chunk by chunk on the final hidden states
    (:func:`todi.kernels.fused_student_loss`), so the student's ``[B, L, V]`` logits never exist.
    """
    if fused:
        return fused_student_loss(model, batch.input_ids, batch.attention_mask, batch.labels, teacher_logits,
                                  criterion, diagnostics=diagnostics)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return criterion(logits, batch.labels, teacher_logits, diagnostics=diagnostics)


def teacher_forward(teacher, batch: Batch) -> Tensor:
    """Teacher logits ``[B, L, V_t]`` without autograd.

    ``torch.no_grad`` rather than ``inference_mode``: inference tensors cannot be saved for
    backward, and the memory-efficient loss kernels keep the teacher logits to recompute from.
    """
    ids = batch.input_ids if batch.teacher_input_ids is None else batch.teacher_input_ids
    with torch.no_grad():
        return teacher(input_ids=ids, attention_mask=batch.attention_mask, use_cache=False).logits


class _Metrics:
    """Device-side sums over a log interval, reduced across processes in one collective."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.device_sums: dict[str, Tensor] = {}
        self.host_sums: dict[str, float] = {"examples": 0.0, "input_tokens": 0.0, "steps": 0.0}

    def add(self, name: str, value: Tensor) -> None:
        value = value.detach().float()
        if name in self.device_sums:
            self.device_sums[name] += value
        else:
            self.device_sums[name] = value.clone()

    def add_host(self, name: str, value: float) -> None:
        self.host_sums[name] = self.host_sums.get(name, 0.0) + value

    def reduce(self) -> dict[str, float]:
        """Global sums (one all-reduce, one host transfer); then resets."""
        names = sorted(self.device_sums)
        host_names = sorted(self.host_sums)
        values = [self.device_sums[n].to(self.device) for n in names]
        values += [torch.tensor(self.host_sums[n], device=self.device) for n in host_names]
        summed = all_reduce_sum(torch.stack(values)).tolist() if values else []
        self.reset()
        return dict(zip(names + host_names, summed))


class Trainer:
    """Builds data, models, the DeepSpeed engine and the criterion from the arguments, then trains."""

    def __init__(self, args: argparse.Namespace, env: DistEnv):
        import deepspeed
        from transformers import set_seed

        self.args, self.env = args, env
        self.save_dir = Path(args.save_dir)
        self.resume_root = self.save_dir / "resume"
        if env.is_main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            for stale in ckpt.remove_stale_temporaries(self.save_dir) + ckpt.remove_stale_temporaries(self.resume_root):
                logger.info(f"removed the leftover of an interrupted save: {stale}")
        barrier()

        # DeepSpeed config: precision and ZeRO stage from the file, batch settings from the CLI
        raw_config = ds_config.load_config(args.deepspeed_config)
        self.precision = ds_config.precision(raw_config)
        self.zero_stage = ds_config.zero_stage(raw_config)
        self.dtype = ds_config.PRECISIONS[self.precision]
        self._check_precision_flags()
        self.ds_config, changes = ds_config.fill_config(
            raw_config, micro_batch_size=args.batch_size, grad_accum=args.gradient_accumulation_steps,
            clip_grad=args.clip_grad, world_size=env.world_size,
        )
        overriding = f" (overriding {'; '.join(changes)})" if changes else ""
        logger.info(f"DeepSpeed config {args.deepspeed_config}: {self.precision}, ZeRO stage {self.zero_stage}; "
                    f"from the command line: micro-batch {args.batch_size}, gradient accumulation "
                    f"{args.gradient_accumulation_steps}, clipping {args.clip_grad:g}{overriding}")
        run_info = {"world_size": env.world_size, "precision": self.precision, "zero_stage": self.zero_stage}
        self.resume_tag = self._resume_decision(run_info)
        self._write_args(run_info)

        set_seed(args.seed)  # the same on every process; the data order has its own generator

        # tokenizers and data
        self.tokenizer = load_tokenizer(args.model_path)
        self.uses_teacher = args.criterion == "various_divergence" and args.kd_rate > 0
        teacher_tokenizer = load_tokenizer(args.teacher_model_path) if self.uses_teacher else None
        separate = teacher_tokenizer is not None and not same_tokenizer(self.tokenizer, teacher_tokenizer)
        if separate:
            logger.info("teacher tokenizer differs from the student's: tokenising separately (alignment is checked)")
        data_dir = Path(args.data_dir)
        lengths = dict(max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                       teacher_tokenizer=teacher_tokenizer if separate else None)
        self.train_data = load_split(data_dir / "train.jsonl", self.tokenizer, limit=args.train_num, **lengths)
        logger.info(self.train_data.stats.summary("train"))
        self.dev_data: Split | None = None
        if args.do_valid:
            self.dev_data = load_split(data_dir / "dev.jsonl", self.tokenizer, limit=args.dev_num, training=False, **lengths)
            logger.info(self.dev_data.stats.summary("dev"))
        self.collate = Collator(
            pad_id=self.tokenizer.pad_token_id,
            teacher_pad_id=teacher_tokenizer.pad_token_id if separate else None,
            pad_to=args.max_length if args.pad_to_max_length else None,
        )

        # schedule length
        per_step = args.batch_size * args.gradient_accumulation_steps * env.world_size
        self.steps_per_epoch = len(self.train_data.examples) // per_step
        if self.steps_per_epoch == 0:
            raise SystemExit(f"{len(self.train_data.examples)} training examples do not fill one optimizer step of "
                             f"{per_step} (batch size × gradient accumulation × processes)")
        self.total_iters = args.total_iters or self.steps_per_epoch * args.num_epochs
        self.num_epochs = args.num_epochs or math.ceil(self.total_iters / self.steps_per_epoch)
        logger.info(f"{self.steps_per_epoch} optimizer steps per epoch of {per_step} examples; "
                    f"{self.total_iters} steps over at most {self.num_epochs} epochs")

        # models
        self.student = build_student(
            args.model_path, dtype=self.dtype, peft=args.peft, lora_r=args.peft_lora_r,
            lora_alpha=args.peft_lora_alpha, lora_dropout=args.peft_lora_dropout,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        self._log_parameters(self.student, "student")
        self.teacher = None
        if self.uses_teacher:
            self.teacher = build_teacher(args.teacher_model_path, dtype=self.dtype, adapter_path=args.teacher_peft_path)
            check_vocabularies(self.student, self.teacher, self.tokenizer, teacher_tokenizer)
            self._log_parameters(self.teacher, "teacher")

        optimizer = torch.optim.AdamW(
            optimizer_param_groups(self.student, args.weight_decay), lr=args.lr,
            fused=env.device.type == "cuda",
        )
        scheduler = build_scheduler(optimizer, args.lr_decay_style, warmup=args.warmup_iters,
                                    total=self.total_iters, lr_min=args.lr_min)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.student, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False,
        )
        self._teacher_engine = None
        if self.teacher is not None:
            if self.zero_stage == 3:
                self._teacher_engine = self._partition_teacher(deepspeed)
                self.teacher = self._teacher_engine.module
            else:
                self.teacher.to(env.device)
        if args.compile:
            self.engine.compile(compile_kwargs={"dynamic": True})
            if self._teacher_engine is not None:
                self._teacher_engine.compile(compile_kwargs={"dynamic": True})
            elif self.teacher is not None:
                self.teacher = torch.compile(self.teacher, dynamic=True)

        # loss
        self.adakd = None
        if args.adakd:
            from todi.adakd import AdaKD  # only AdaKD runs need it

            self.adakd = AdaKD(
                self.total_iters, c=args.adakd_c, ema_decay=args.adakd_ema, eps=args.adakd_eps,
                delta=args.adakd_delta, warmup=args.adakd_warmup, min_ratio=args.adakd_min_ratio,
                difficulty=args.adakd_difficulty,
            )
        if args.criterion == "various_divergence":
            params = objective_kwargs(args)
            self.criterion = DistillationLoss(args.kd_objective, kd_rate=args.kd_rate, temperature=args.kd_temperature,
                                              impl=args.kd_impl, planner=self.adakd, **params)
        else:
            self.criterion = DistillationLoss(None, kd_rate=0.0)
        if args.criterion == "various_divergence" and not self.uses_teacher:
            logger.info("--kd-rate 0: the teacher is not used (plain SFT through the same loss)")

        self.state = ckpt.TrainerState()
        self.best = ckpt.BestCheckpoints(args.keep_best_n_checkpoints)
        self.metrics = _Metrics(env.device)
        self.epoch_metrics = _Metrics(env.device)
        self.log_file = MetricsLog(self.save_dir / "metrics.jsonl", env.is_main)
        if self.resume_tag is None:
            self.log_file.clear()  # a new run: the records of an earlier one would mix in
        self._rng_to_restore = None
        self.state_epoch_sums: dict[str, float] = {}  # epoch sums of steps before the last saved state
        if self.resume_tag is not None:
            self._load_state()

    # ------------------------------------------------------------------ setup helpers

    def _check_precision_flags(self) -> None:
        args = self.args
        if args.model_dtype is not None and args.model_dtype != self.precision:
            raise SystemExit(f"--model-dtype {args.model_dtype} contradicts the DeepSpeed config "
                             f"({self.precision}); drop it: the config sets the precision of both models")
        if args.teacher_model_fp16 and self.precision != "fp16":
            raise SystemExit(f"--teacher-model-fp16 contradicts the DeepSpeed config ({self.precision}); drop it: "
                             "the teacher runs in the training precision")
        if args.n_gpu is not None and args.n_gpu != self.env.local_world_size:
            raise SystemExit(f"--n-gpu {args.n_gpu} but {self.env.local_world_size} processes per node were started")

    def _resume_decision(self, run_info: dict) -> str | None:
        args = self.args
        tag = ckpt.resume_tag(self.resume_root)
        if args.no_resume and tag is not None:
            barrier()  # every process has read the pointer before it goes
            if self.env.is_main:
                shutil.rmtree(self.resume_root)
                logger.info(f"--no-resume: removed the resumable state in {self.resume_root}")
            tag = None
        if args.resume and tag is None:
            raise SystemExit(f"--resume: no resumable state in {self.resume_root}")
        if tag is None:
            return None
        saved_path = self.save_dir / "args.json"
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
        current = {**run_identity(args), **run_info}
        differ = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
        if differ:
            raise SystemExit(f"{self.save_dir} holds the state of a different run ({'; '.join(differ)}); "
                             "use another --save-dir, or --no-resume to start over")
        logger.info(f"resuming from {self.resume_root / tag}")
        return tag

    def _write_args(self, run_info: dict) -> None:
        if self.env.is_main:
            record = {**vars(self.args), **run_info, "deepspeed": self.ds_config}
            ckpt.atomic_write_text(self.save_dir / "args.json", json.dumps(record, indent=1, default=str))

    def _log_parameters(self, model, name: str) -> None:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"{name}: {type(model).__name__} from {getattr(model.config, '_name_or_path', '?')}, "
                    f"{total:,} parameters ({trainable:,} trainable), {self.precision}")

    def _partition_teacher(self, deepspeed):
        """ZeRO-3: shard the frozen teacher like the student (an engine without optimizer)."""
        zero = {k: v for k, v in self.ds_config["zero_optimization"].items() if not k.startswith("offload_optimizer")}
        config = {key: self.ds_config[key] for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                                       "train_batch_size", "bf16", "fp16") if key in self.ds_config}
        config.update(zero_optimization=zero, steps_per_print=self.ds_config["steps_per_print"])
        engine, *_ = deepspeed.initialize(model=self.teacher, config=config, dist_init_required=False)
        engine.module.eval()
        return engine

    # ------------------------------------------------------------------ resume

    def _save_state(self) -> None:
        epoch_sums = self.epoch_metrics.reduce()
        for key, value in epoch_sums.items():
            self.state_epoch_sums[key] = self.state_epoch_sums.get(key, 0.0) + value
        self.state.best = self.best.entries
        extra = {"epoch_sums": dict(self.state_epoch_sums)}
        if self.adakd is not None:
            extra["adakd"] = self.adakd.state_dict()
        tag = ckpt.save_resume_state(self.engine, self.resume_root, self.state, rank=self.env.rank, extra=extra)
        logger.info(f"resumable state saved: {self.resume_root / tag}")

    def _load_state(self) -> None:
        self.state, extra = ckpt.load_resume_state(self.engine, self.resume_root, self.resume_tag, rank=self.env.rank)
        self.best.entries = [e for e in self.state.best if Path(e["path"]).is_dir()]
        self.state_epoch_sums = dict(extra.get("epoch_sums", {}))
        if self.adakd is not None:
            if "adakd" not in extra:
                raise SystemExit(f"{self.resume_root / self.resume_tag} holds no AdaKD state")
            self.adakd.load_state_dict(extra["adakd"])
        self._rng_to_restore = extra["rng"]
        logger.info(f"resumed at epoch {self.state.epoch + 1}, step {self.state.step_in_epoch} of that epoch "
                    f"(global step {self.state.global_step})")

    # ------------------------------------------------------------------ training

    def _loader(self, epoch: int, start_step: int):
        from torch.utils.data import DataLoader

        plan = epoch_plan(
            [e.length for e in self.train_data.examples], seed=self.args.seed, epoch=epoch,
            batch_size=self.args.batch_size, world_size=self.env.world_size,
            grad_accum=self.args.gradient_accumulation_steps, group_by_length=self.args.group_by_length,
        )
        loader = DataLoader(
            self.train_data.examples, batch_sampler=plan.rank_batches(self.env.rank, start_step),
            collate_fn=self.collate, num_workers=self.args.num_workers,
            pin_memory=self.env.device.type == "cuda",
            # its own generator: creating an iterator must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(self.args.seed),
        )
        return plan, iter(loader)

    def _optimizer_step(self, micro_batches: list[Batch], diagnostics: bool) -> None:
        device = self.env.device
        batches = [b.to(device, non_blocking=True) for b in micro_batches]
        local_tokens = torch.stack([b.labels.ne(IGNORE_INDEX).sum() for b in batches]).sum()
        global_tokens = all_reduce_sum(local_tokens.float())
        scale = loss_scale(global_tokens, self.args.gradient_accumulation_steps, self.env.world_size)
        kd_sum = kd_tokens = None
        for host_batch, batch in zip(micro_batches, batches):
            teacher_logits = teacher_forward(self.teacher, batch) if self.uses_teacher else None
            out = student_loss(self.engine, batch, self.criterion, teacher_logits, diagnostics=diagnostics,
                               fused=self.args.fused_lm_head)
            self.engine.backward(out.loss * scale)
            self.engine.step()
            for metrics in (self.metrics, self.epoch_metrics):
                metrics.add("loss", out.loss)
                metrics.add("tokens", out.num_tokens)
            self._add_stats(out, diagnostics)
            self.metrics.add_host("examples", host_batch.num_examples)
            self.metrics.add_host("input_tokens", host_batch.num_input_tokens)
            if "kd" in out.stats:
                kd_sum = out.stats["kd"] if kd_sum is None else kd_sum + out.stats["kd"]
                kd_tokens = out.stats["kd_tokens"] if kd_tokens is None else kd_tokens + out.stats["kd_tokens"]
        self.metrics.add_host("steps", 1)
        if self.adakd is not None:
            self.adakd.update(kd_sum, kd_tokens)

    def _add_stats(self, out: LossOutput, diagnostics: bool) -> None:
        for name, value in out.stats.items():
            self.metrics.add(name, value)
        for name, value in out.diagnostics.items():  # the objective's named diagnostics, per KD token
            self.metrics.add(f"diagnostic/{name}", value)
            self.metrics.add(f"diagnostic_tokens/{name}", out.stats["kd_tokens"])
        if "kd" in out.stats:
            self.epoch_metrics.add("kd", out.stats["kd"])
            self.epoch_metrics.add("kd_tokens", out.stats["kd_tokens"])
        self.epoch_metrics.add("ce", out.stats["ce"])

    def _log_interval(self, epoch: int) -> None:
        sums = self.metrics.reduce()
        now = time.perf_counter()
        elapsed, self._last_log_time = now - self._last_log_time, now
        tokens = max(sums.pop("tokens"), 1.0)
        record = {"epoch": epoch + 1, "step": self.state.global_step, "loss": sums.pop("loss") / tokens,
                  "ce": sums.pop("ce") / tokens, "acc": sums.pop("correct") / tokens}
        kd_tokens = sums.pop("kd_tokens", None)
        if kd_tokens is not None:
            record["kd"] = sums.pop("kd") / max(kd_tokens, 1.0)
            record["kd_token_ratio"] = kd_tokens / tokens  # < 1 when a planner (AdaKD) skips tokens
        for name in [k for k in sums if k.startswith("diagnostic/")]:
            short = name.split("/", 1)[1]
            record[short] = sums.pop(name) / max(sums.pop(f"diagnostic_tokens/{short}"), 1.0)
        record["lr"] = float(self.scheduler.get_last_lr()[0])
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        steps, examples, input_tokens = sums.pop("steps"), sums.pop("examples"), sums.pop("input_tokens")
        for name, value in sums.items():  # what a token planner adds, per response token
            record[name] = value / tokens
        if self.adakd is not None:
            record.update({f"adakd_{k}": v for k, v in self.adakd.log_stats().items()})
        record.update({
            "step_time": elapsed / max(steps / self.env.world_size, 1.0), "examples": int(examples),
            "input_tokens": int(input_tokens), "examples_per_s": examples / elapsed,
            "tokens_per_s": input_tokens / elapsed, "elapsed": now - self._start_time,
        })
        if self.env.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.env.device) / 2**30
        logger.info("train | " + format_record(record))
        self.log_file.write({"split": "train", **record})

    @contextmanager
    def _untimed(self):
        """Leave evaluation and saving out of the throughput of the current log interval."""
        start = time.perf_counter()
        yield
        self._last_log_time += time.perf_counter() - start

    def train(self) -> None:
        args, state = self.args, self.state
        if state.global_step >= self.total_iters or state.epoch >= self.num_epochs:
            logger.info(f"training already complete in {self.save_dir}")
            return
        from tqdm import tqdm

        steps_this_run = 0
        self._start_time = self._last_log_time = time.perf_counter()
        logger.info(f"training: {args.criterion}" + (f" ({args.kd_objective}, kd_rate {args.kd_rate}, "
                    f"temperature {args.kd_temperature})" if self.uses_teacher else ""))
        while state.epoch < self.num_epochs and state.global_step < self.total_iters:
            epoch = state.epoch
            plan, batches = self._loader(epoch, state.step_in_epoch)
            if state.step_in_epoch == 0 and plan.skipped:
                logger.info(f"epoch {epoch + 1}: {plan.skipped} examples skipped (less than a global batch left)")
            if self._rng_to_restore is not None:  # right before the first step: nothing else draws in between
                ckpt.set_rng_state(self._rng_to_restore)
                self._rng_to_restore = None
            self.engine.train()
            bar = tqdm(total=len(plan), initial=state.step_in_epoch, desc=f"epoch {epoch + 1}", unit="step",
                       disable=not self.env.is_main, mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
            while state.step_in_epoch < len(plan) and state.global_step < self.total_iters:
                diagnostics = (state.global_step + 1) % args.log_interval == 0
                self._optimizer_step([next(batches) for _ in range(args.gradient_accumulation_steps)], diagnostics)
                state.step_in_epoch += 1
                state.global_step += 1
                steps_this_run += 1
                bar.update(1)
                if state.global_step % args.log_interval == 0:
                    self._log_interval(epoch)
                if state.step_in_epoch == len(plan) or state.global_step >= self.total_iters:
                    break
                stop = args.stop_after_iters is not None and steps_this_run >= args.stop_after_iters
                if stop or (args.state_interval and state.global_step % args.state_interval == 0):
                    with self._untimed():
                        self._save_state()
                if stop:
                    bar.close()
                    logger.info(f"stopping after {steps_this_run} steps (--stop-after-iters); rerun to continue")
                    return
            bar.close()
            with self._untimed():
                self._end_of_epoch(epoch, last=state.epoch + 1 >= self.num_epochs or state.global_step >= self.total_iters)
                state.epoch += 1
                state.step_in_epoch = 0
                self._save_state()
            if args.stop_after_iters is not None and steps_this_run >= args.stop_after_iters:
                logger.info(f"stopping after {steps_this_run} steps (--stop-after-iters); rerun to continue")
                return
        best = self.best.best
        logger.info(f"done: {state.global_step} steps in {time.perf_counter() - self._start_time:.1f}s" +
                    (f"; best checkpoint {best['path']}" if best else ""))

    # ------------------------------------------------------------------ epoch end

    def _end_of_epoch(self, epoch: int, last: bool) -> None:
        args = self.args
        sums = self.epoch_metrics.reduce()
        for key, value in self.state_epoch_sums.items():
            sums[key] = sums.get(key, 0.0) + value
        self.state_epoch_sums = {}
        tokens = max(sums.get("tokens", 0.0), 1.0)
        summary = {"epoch": epoch + 1, "step": self.state.global_step, "loss": sums.get("loss", 0.0) / tokens,
                   "ce": sums.get("ce", 0.0) / tokens}
        if "kd" in sums:
            summary["kd"] = sums["kd"] / max(sums.get("kd_tokens", 0.0), 1.0)
        logger.info("train epoch | " + format_record(summary))
        self.log_file.write({"split": "train_epoch", **summary})

        save = (epoch + 1) % args.save_interval == 0 or last
        evaluate = args.do_valid and ((epoch + 1) % args.eval_interval == 0 or save)
        results = self.evaluate() if evaluate else {}
        if evaluate:
            record = {"epoch": epoch + 1, "step": self.state.global_step, **results}
            logger.info("dev | " + format_record(record))
            self.log_file.write({"split": "dev", **record})
        if save:
            self._save_checkpoint(epoch, results)

    def _save_checkpoint(self, epoch: int, results: dict) -> None:
        name = ckpt.checkpoint_name(epoch + 1, self.state.global_step, results.get("loss"), results.get("rougeL"))
        path = self.save_dir / name
        state_dict = self.engine._zero3_consolidated_16bit_state_dict() if self.zero_stage == 3 else None
        ckpt.save_model(self.engine.module, self.tokenizer, path, state_dict=state_dict, is_main=self.env.is_main)
        if "rougeL" in results:
            score = results["rougeL"]
        elif "loss" in results:
            score = -results["loss"]
        else:
            score = float(self.state.global_step)
        for dropped in self.best.add(path, score):
            if self.env.is_main and dropped.is_dir():
                shutil.rmtree(dropped)
                logger.info(f"removed {dropped.name} (keeping the best {self.best.n})")
        barrier()
        logger.info(f"checkpoint saved: {path}")

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Dev loss and token accuracy (CE of the student, as the official code), then ROUGE-L of
        sampled answers (mean over --eval-gen-repeat-times seeds)."""
        args, env = self.args, self.env
        model = self.engine.module
        was_training = model.training
        model.eval()
        data = self.dev_data
        order = sorted(range(len(data.examples)), key=lambda i: -data.examples[i].length)
        mine = order[env.rank::env.world_size]
        # every process runs the same number of forwards (ZeRO-3 gathers weights collectively)
        n_batches = math.ceil(math.ceil(len(order) / env.world_size) / args.eval_batch_size)
        sums = torch.zeros(3, device=env.device)
        for i in range(n_batches):
            idx = mine[i * args.eval_batch_size:(i + 1) * args.eval_batch_size]
            batch = self.collate([data.examples[j] for j in (idx or order[:1])]).to(env.device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            if not idx:
                continue
            mask = batch.labels.ne(IGNORE_INDEX)
            sums[0] += cross_entropy_sum(logits, batch.labels)
            sums[1] += (logits.argmax(-1).eq(batch.labels) & mask).sum()
            sums[2] += mask.sum()
        ce, correct, tokens = all_reduce_sum(sums).tolist()
        results = {"loss": ce / max(tokens, 1.0), "acc": correct / max(tokens, 1.0)}
        if args.eval_gen:
            from todi.generation import generate
            from todi.metrics import compute_metrics

            config = sampling_config(args, dev=True)
            runs = []
            for r in range(args.eval_gen_repeat_times):
                predictions = generate(
                    model, self.tokenizer, data.prompts, config, seed=args.seed + r,
                    batch_size=args.eval_batch_size, rank=env.rank, world_size=env.world_size,
                    synced_gpus=self.zero_stage == 3, progress=args.eval_tqdm,
                )
                runs.append(compute_metrics(predictions, data.references))
            for key in runs[0]:
                results[key] = round(sum(run[key] for run in runs) / len(runs), 4)
        if was_training:
            model.train()
        return results


def sampling_config(args: argparse.Namespace, *, dev: bool = False):
    """The SamplingConfig of the generation flags (dev may override only the n-gram block)."""
    from todi.generation import SamplingConfig

    ngram = args.no_repeat_ngram_size
    if dev and args.dev_no_repeat_ngram_size is not None:
        ngram = args.dev_no_repeat_ngram_size
    return SamplingConfig(
        do_sample=args.do_sample, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        no_repeat_ngram_size=ngram, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
    )


def main(argv: list[str] | None = None) -> None:
    from todi.args import parse_args

    args = parse_args(argv)
    env = init_distributed()
    setup_logging(env.rank)
    logger.info(f"{env.world_size} process(es) on {env.device.type}; run directory {args.save_dir}")
    try:
        trainer = Trainer(args, env)
    except (DataError, FileNotFoundError, ValueError) as e:  # bad input: a message, not a traceback
        raise SystemExit(f"distillation.py: error: {e}") from None
    trainer.train()
