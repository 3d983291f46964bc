"""The training loop: SFT or KD on a DeepSpeed engine, dev evaluation, checkpoints, exact resume.

One optimizer step = ``gradient_accumulation_steps`` micro-batches on every process. The loss of a
micro-batch is summed over its response tokens and scaled by :func:`todi.loss.criterion.loss_scale` with
the response-token count of the whole step (all micro-batches, all processes), so every response
token of a step weighs the same, as in the official code.

The step path never waits for the device: metrics are summed on the device and reduced across
processes once per log interval; the only per-step collective is the token count above (issued
asynchronously on GPUs).
"""

from __future__ import annotations

import argparse
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from todi.training import checkpoint as ckpt
from todi.data.batching import epoch_plan
from todi.loss.criterion import DistillationLoss, LossOutput, loss_scale
from todi.data.instructions import Batch
from todi.evaluation.dev import DevEvaluation
from todi.util.distributed import DistEnv, all_reduce_sum, barrier
from todi.models.fused_head import fused_student_loss
from todi.kernels import SparseTargets
from todi.util.labels import IGNORE_INDEX
from todi.util.log import MetricsLog, format_record, logger, progress_bar
from todi.training.resume import RunDirectory
from todi.training.step_metrics import StepMetrics, StepSums
from todi.training import setup

__all__ = ["Trainer", "student_loss", "teacher_forward"]

CACHE_TAIL_METRIC = "cache_tail_mass"  # a top-k cache's mean tail mass P_R at its temperature


def student_loss(model, batch: Batch, criterion: DistillationLoss, teacher_logits: Tensor | None,
                 *, diagnostics: bool = False, fused: bool = False, cache=None, head=None, ce: bool = True) -> LossOutput:
    """Student forward and loss of one micro-batch.

    ``fused``: the output layer, CE and KD run chunk by chunk on the final hidden states
    (:func:`todi.models.fused_head.fused_student_loss`), so the student's ``[B, L, V]`` logits never exist.
    ``cache``: the :class:`todi.cache.store.TeacherCache` whose arrays the batch carries
    (``batch.teacher_targets``), read instead of ``teacher_logits``: top-k targets, or hidden states
    that ``head`` (the cache's output layer, on the device) turns into teacher logits chunk by chunk.
    ``ce``: False for a batch of sampled responses (on-policy): its CE is left out of the loss.
    """
    sparse = None
    if batch.teacher_targets is not None:
        cached = cache.loss_teacher(batch.teacher_targets, head)
        if isinstance(cached, SparseTargets):
            sparse = cached
        else:
            teacher_logits = cached
    if fused:
        return fused_student_loss(model, batch.input_ids, batch.attention_mask, batch.labels, teacher_logits,
                                  criterion, diagnostics=diagnostics, ce=ce)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    out = criterion(logits, batch.labels, teacher_logits, teacher_sparse=sparse, diagnostics=diagnostics, ce=ce)
    if sparse is not None:  # what the top-k targets leave in their bucket, logged per response token
        tail = sparse.log_probs[..., -1].exp().masked_fill(batch.labels.eq(IGNORE_INDEX), 0.0)
        out.stats.planner[CACHE_TAIL_METRIC] = tail.sum()
    return out


def teacher_forward(teacher, batch: Batch) -> Tensor:
    """Teacher logits ``[B, L, V_t]`` without autograd.

    ``torch.no_grad`` rather than ``inference_mode``: inference tensors cannot be saved for
    backward, and the memory-efficient loss kernels keep the teacher logits to recompute from.
    """
    ids = batch.input_ids if batch.teacher_input_ids is None else batch.teacher_input_ids
    with torch.no_grad():
        return teacher(input_ids=ids, attention_mask=batch.attention_mask, use_cache=False).logits


class Trainer:
    """Builds the run (:mod:`todi.training.setup`) from the arguments, resumes it if its directory
    holds its state (:mod:`todi.training.resume`), then trains: optimizer steps, logging, dev evaluation,
    checkpoints."""

    def __init__(self, args: argparse.Namespace, env: DistEnv):
        from transformers import set_seed

        self.args, self.env = args, env
        setup.check_model_paths(args)
        self.ds = setup.deepspeed_settings(args, env)
        self.zero_stage = self.ds.zero_stage
        self.run = RunDirectory(args, env, {"world_size": env.world_size, "precision": self.ds.precision,
                                            "zero_stage": self.ds.zero_stage})
        self.save_dir = self.run.path
        self.run.write_args({"deepspeed": self.ds.config})
        set_seed(args.seed)  # the same on every process; the data order has its own generator

        self.data = setup.build_data(args)
        self.steps_per_epoch, self.total_iters, self.num_epochs = setup.schedule_length(
            args, len(self.data.train.examples), env.world_size)
        self.uses_teacher = setup.uses_teacher(args)
        models = setup.build_models(args, env, self.ds, self.data, self.total_iters)
        self.engine, self.scheduler, self.teacher = models.engine, models.scheduler, models.teacher
        self.criterion = setup.build_criterion(args, self.total_iters, vocab_size=models.kd_vocab)
        self.cache = self.data.collate.teacher_cache
        self.cache_head = models.cache_head
        colocated = setup.build_colocated(args, self.data.tokenizer)  # vLLM beside training: one per process
        self.dev = DevEvaluation(args, env, self.ds.zero_stage, colocated)
        self.mixer = setup.build_mixer(args, env, self.data, self.total_iters, self.ds.zero_stage, colocated)

        self.state = ckpt.TrainerState()
        self.best = ckpt.BestCheckpoints(args.keep_best_n_checkpoints)
        self.metrics = StepMetrics(env.device)
        self.epoch_metrics = StepMetrics(env.device)
        self.log_file = MetricsLog(self.save_dir / "metrics.jsonl", env.is_main)
        # --report-to: the same records as live events (TensorBoard, CSV, W&B), written by rank 0
        self.monitor = setup.build_monitor(args, env, self.save_dir, fresh=self.run.resume_tag is None)
        self._rng_to_restore = None
        self.state_epoch_sums = StepSums()  # epoch sums of steps before the last saved state
        if self.run.resume_tag is None:
            self.log_file.clear()  # a new run: the records of an earlier one would mix in
        else:
            self._load_state()

    # ------------------------------------------------------------------ resume

    def _save_state(self) -> None:
        self.state_epoch_sums = self.state_epoch_sums + self.epoch_metrics.reduce()
        self.state.best = self.best.entries
        extra = {"epoch_sums": self.state_epoch_sums.to_dict()}
        if self.criterion.planner is not None:
            extra["adakd"] = self.criterion.planner.state_dict()
        if self.mixer is not None:
            extra["data_mixer"] = self.mixer.state_dict()
        self.run.save(self.engine, self.state, extra)

    def _load_state(self) -> None:
        self.state, extra = self.run.load(self.engine)
        self.best.entries = [e for e in self.state.best if Path(e["path"]).is_dir()]
        self.state_epoch_sums = StepSums.from_dict(extra.get("epoch_sums", {}))
        if self.criterion.planner is not None:
            if "adakd" not in extra:
                raise SystemExit(f"{self.run.where} holds no AdaKD state")
            self.criterion.planner.load_state_dict(extra["adakd"])
        if self.mixer is not None:
            if "data_mixer" not in extra:
                raise SystemExit(f"{self.run.where} holds no state of --data-mode {self.args.data_mode}")
            self.mixer.load_state_dict(extra["data_mixer"])
        self._rng_to_restore = extra["rng"]

    # ------------------------------------------------------------------ training

    def _loader(self, epoch: int, start_step: int):
        from torch.utils.data import DataLoader

        plan = epoch_plan(
            [e.length for e in self.data.train.examples], seed=self.args.seed, epoch=epoch,
            batch_size=self.args.batch_size, world_size=self.env.world_size,
            grad_accum=self.args.gradient_accumulation_steps, group_by_length=self.args.group_by_length,
        )
        loader = DataLoader(
            self.data.train.examples, batch_sampler=plan.rank_batches(self.env.rank, start_step),
            collate_fn=self.data.collate, num_workers=self.args.num_workers,
            pin_memory=self.env.device.type == "cuda",
            # its own generator: creating an iterator must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(self.args.seed),
        )
        return plan, iter(loader)

    def _optimizer_step(self, micro_batches: list[Batch], diagnostics: bool) -> None:
        device = self.env.device
        generated = False
        if self.mixer is not None:  # on-policy: this step may train on sampled responses instead
            kind = self.mixer.kind(self.state.global_step)
            micro_batches = self.mixer.batches(kind, self.state.global_step, micro_batches,
                                               student=self.engine.module, teacher=self.teacher)
            generated = kind != "dataset"
        batches = [b.to(device, non_blocking=True) for b in micro_batches]
        local_tokens = torch.stack([b.labels.ne(IGNORE_INDEX).sum() for b in batches]).sum()
        global_tokens = all_reduce_sum(local_tokens.float())
        scale = loss_scale(global_tokens, self.args.gradient_accumulation_steps, self.env.world_size)
        step_stats = []
        for host_batch, batch in zip(micro_batches, batches):
            start = self._clock()
            # a cached batch carries the teacher's outputs; generated ones (no cache targets) meet the teacher live
            live = self.teacher is not None and batch.teacher_targets is None
            teacher_logits = teacher_forward(self.teacher, batch) if live else None
            middle = self._clock()
            out = student_loss(self.engine, batch, self.criterion, teacher_logits, diagnostics=diagnostics,
                               cache=self.cache, head=self.cache_head, fused=self.args.fused_lm_head, ce=not generated)
            self.engine.backward(out.loss * scale)
            self.engine.step()
            if self.mixer is not None:
                self.mixer.add_times(teacher=middle - start, student=self._clock() - middle)
            self.metrics.add(out)
            self.epoch_metrics.add(out)
            self.metrics.add_batch(host_batch.num_examples, host_batch.num_input_tokens)
            step_stats.append(out.stats)
        self.metrics.add_step()
        if self.criterion.planner is not None:  # LATF moves once per optimizer step, on the step's local sums
            self.criterion.planner.update(sum(s.kd for s in step_stats), sum(s.kd_tokens for s in step_stats))

    def _clock(self) -> float:
        """Wall time for the on-policy time split (after the device's queued work, on a GPU)."""
        if self.mixer is None:
            return 0.0
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        return time.perf_counter()

    def _log_interval(self, epoch: int) -> None:
        sums = self.metrics.reduce()
        now = time.perf_counter()
        elapsed, self._last_log_time = now - self._last_log_time, now
        tokens = max(sums.tokens, 1.0)
        record = {"epoch": epoch + 1, "step": self.state.global_step, "loss": sums.loss / tokens,
                  "ce": sums.ce / tokens, "acc": sums.correct / tokens}
        if sums.kd_tokens is not None:
            record["kd"] = sums.kd / max(sums.kd_tokens, 1.0)
            record["kd_token_ratio"] = sums.kd_tokens / tokens  # < 1 when a planner (AdaKD) skips tokens
        for name, total in sums.diagnostics.items():
            record[name] = total / max(sums.diagnostic_tokens[name], 1.0)
        record["lr"] = float(self.scheduler.get_last_lr()[0])
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        for name, value in sums.planner.items():  # what a token planner adds, per response token
            record[name] = value / tokens
        if self.criterion.planner is not None:  # its names carry their prefix (adakd_ratio, adakd_tau_min, ...)
            record.update(self.criterion.planner.log_stats())
        if self.mixer is not None:  # share of generated steps, rollout lengths and speed, the time split, τ
            record.update(self.mixer.log_stats())
        record.update({
            "step_time": elapsed / max(sums.steps / self.env.world_size, 1.0), "examples": int(sums.examples),
            "input_tokens": int(sums.input_tokens), "examples_per_s": sums.examples / elapsed,
            "tokens_per_s": sums.input_tokens / elapsed, "elapsed": now - self._start_time,
        })
        if self.env.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.env.device) / 2**30
        logger.info("train | " + format_record(record))
        self.log_file.write({"split": "train", **record})
        self.monitor.write("train", record, self.state.global_step)

    @contextmanager
    def _untimed(self):
        """Leave evaluation and saving out of the throughput of the current log interval."""
        start = time.perf_counter()
        yield
        self._last_log_time += time.perf_counter() - start

    def train(self) -> bool:
        """Train to the end, or until ``--stop-after-iters`` steps of this invocation: True when paused
        there (resumable state saved, ``PAUSED`` written: :meth:`_pause`)."""
        args, state = self.args, self.state
        if state.global_step >= self.total_iters or state.epoch >= self.num_epochs:
            logger.info(f"training already complete in {self.save_dir}")
            return False
        steps_this_run = 0
        self._start_time = self._last_log_time = time.perf_counter()
        logger.info(f"training: {args.criterion}" + (f" ({args.kd_objective}, kd_rate {args.kd_rate}, "
                    f"temperature {args.kd_temperature})" if self.uses_teacher else ""))
        every = f" and every {args.state_interval} steps" if args.state_interval else ""
        logger.info(f"resumable state in {self.run.resume_root}, saved at each epoch end{every}")
        if self.mixer is not None and self.mixer.needs_reference():  # DistiLLM: the dev loss before training
            with self._untimed():
                results = self.evaluate()
            logger.info("dev before training (the reference of --data-mode distillm) | " + format_record(results))
            self.mixer.on_dev_loss(results["loss"])
        while state.epoch < self.num_epochs and state.global_step < self.total_iters:
            epoch = state.epoch
            plan, batches = self._loader(epoch, state.step_in_epoch)
            if steps_this_run == 0 and state.step_in_epoch == 0 and plan.skipped:  # the same count every epoch
                logger.info(f"each epoch leaves out {plan.skipped} examples (less than a global batch); "
                            "a different draw each epoch")
            if self._rng_to_restore is not None:  # right before the first step: nothing else draws in between
                ckpt.set_rng_state(self._rng_to_restore)
                self._rng_to_restore = None
            self.engine.train()
            bar = progress_bar(total=len(plan), initial=state.step_in_epoch, desc=f"epoch {epoch + 1}", unit="step",
                               disable=not self.env.is_main)
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
                    return self._pause(steps_this_run)
            bar.close()
            with self._untimed():
                self._end_of_epoch(epoch, last=state.epoch + 1 >= self.num_epochs or state.global_step >= self.total_iters)
                state.epoch += 1
                state.step_in_epoch = 0
                self._save_state()
            more = state.epoch < self.num_epochs and state.global_step < self.total_iters
            if more and args.stop_after_iters is not None and steps_this_run >= args.stop_after_iters:
                return self._pause(steps_this_run)
        best = self.best.best
        logger.info(f"done: {state.global_step} steps in {time.perf_counter() - self._start_time:.1f}s" +
                    (f"; best checkpoint {best['path']}" if best else ""))
        return False

    def _pause(self, steps_this_run: int) -> bool:
        """After the state is saved: log, mark the run directory ``PAUSED``; True."""
        logger.info(f"stopping after {steps_this_run} steps (--stop-after-iters), state saved in "
                    f"{self.run.resume_root}; rerun to continue")
        self.run.mark_paused(f"paused at step {self.state.global_step} of {self.total_iters} by --stop-after-iters: "
                             "rerun the same command to continue")
        return True

    # ------------------------------------------------------------------ epoch end

    def _end_of_epoch(self, epoch: int, last: bool) -> None:
        args = self.args
        sums = self.epoch_metrics.reduce() + self.state_epoch_sums
        self.state_epoch_sums = StepSums()
        tokens = max(sums.tokens, 1.0)
        summary = {"epoch": epoch + 1, "step": self.state.global_step, "loss": sums.loss / tokens,
                   "ce": sums.ce / tokens}
        if sums.kd is not None:
            summary["kd"] = sums.kd / max(sums.kd_tokens, 1.0)
        self.log_file.write({"split": "train_epoch", **summary})
        self.monitor.write("epoch", summary, self.state.global_step)

        save = (epoch + 1) % args.save_interval == 0 or last
        evaluate = args.do_valid and ((epoch + 1) % args.eval_interval == 0 or save)
        results = self.evaluate() if evaluate else {}
        if evaluate and self.mixer is not None:
            self.mixer.on_dev_loss(results["loss"])  # DistiLLM's threshold rule
        line = "train epoch | " + format_record(summary)  # one line per epoch: its train means and dev results
        if evaluate:
            record = {"epoch": epoch + 1, "step": self.state.global_step, **results}
            line += " || dev | " + format_record(results)
            self.log_file.write({"split": "dev", **record})
            self.monitor.write("dev", results, self.state.global_step)
        logger.info(line)
        if save:
            self._save_checkpoint(epoch, results)
        if last:
            self.monitor.close()  # the last event of the run has been written

    def _save_checkpoint(self, epoch: int, results: dict) -> None:
        name = ckpt.checkpoint_name(epoch + 1, self.state.global_step, results.get("loss"), results.get("rougeL"))
        path = self.save_dir / name
        state_dict = self.engine._zero3_consolidated_16bit_state_dict() if self.zero_stage == 3 else None
        ckpt.save_model(self.engine.module, self.data.tokenizer, path, state_dict=state_dict, is_main=self.env.is_main)
        if "rougeL" in results:
            score = results["rougeL"]
        elif "loss" in results:
            score = -results["loss"]
        else:
            score = float(self.state.global_step)
        removed = []
        for dropped in self.best.add(path, score):
            if self.env.is_main and dropped.is_dir():
                shutil.rmtree(dropped)
                removed.append(dropped.name)
        barrier()
        note = f" (removed {', '.join(removed)}: keeping the best {self.best.n})" if removed else ""
        logger.info(f"checkpoint saved: {path}{note}")

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict:
        return self.dev.evaluate(self.engine.module, self.data.dev, self.data.eval_collate, self.data.tokenizer)
