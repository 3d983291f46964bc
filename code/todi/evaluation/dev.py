"""Dev evaluation during training: the student's CE and token accuracy on the dev split, then
ROUGE-L of sampled answers with the generation flags (the same code path as the test evaluation),
drawn by the HF sampler on the training model or (``--dev-gen-backend vllm``) by a vLLM engine
colocated on each rank that receives the training weights first (:mod:`todi.generation.colocated`):
the same answers in fp32, hence the same keep-best decisions."""

from __future__ import annotations

import argparse
import math

import torch

from todi.loss.criterion import cross_entropy_sum
from todi.data.instructions import Split
from todi.util.distributed import DistEnv, all_reduce_sum
from todi.util.labels import IGNORE_INDEX

__all__ = ["DevEvaluation", "sampling_config"]


class DevEvaluation:
    """Evaluates a model on a dev split with the run's flags; ``zero_stage`` 3 keeps generation in
    lockstep across processes (the weights are gathered collectively). ``colocated``: the process's
    vLLM engine (:class:`todi.generation.colocated.ColocatedEngine`, started at its first use;
    :func:`todi.training.setup.build_colocated` checks that vLLM is installed), needed by
    ``--eval-gen --dev-gen-backend vllm``."""

    def __init__(self, args: argparse.Namespace, env: DistEnv, zero_stage: int, colocated=None):
        self.args, self.env, self.zero_stage = args, env, zero_stage
        self.backend = args.dev_gen_backend
        if args.eval_gen and self.backend == "vllm" and colocated is None:
            raise ValueError("--dev-gen-backend vllm needs the process's colocated engine")
        self.colocated = colocated

    @torch.no_grad()
    def evaluate(self, model, data: Split, collate, tokenizer) -> dict:
        """Dev loss and token accuracy (CE of the student, as the official code), then ROUGE-L of
        sampled answers (mean over --eval-gen-repeat-times seeds), on every process together."""
        args, env = self.args, self.env
        was_training = model.training
        model.eval()
        order = sorted(range(len(data.examples)), key=lambda i: -data.examples[i].length)
        mine = order[env.rank::env.world_size]
        # every process runs the same number of forwards (ZeRO-3 gathers weights collectively)
        n_batches = math.ceil(math.ceil(len(order) / env.world_size) / args.eval_batch_size)
        sums = torch.zeros(3, device=env.device)
        for i in range(n_batches):
            idx = mine[i * args.eval_batch_size:(i + 1) * args.eval_batch_size]
            batch = collate([data.examples[j] for j in (idx or order[:1])]).to(env.device)
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
            runs = self._rouge(model, data, tokenizer)
            for key in runs[0]:
                results[key] = round(sum(run[key] for run in runs) / len(runs), 4)
        if was_training:
            model.train()
        return results

    def _rouge(self, model, data: Split, tokenizer) -> list[dict]:
        """The metrics of each seed's sampled answers (seeds SEED, SEED+1, ...)."""
        from todi.evaluation.rouge import compute_metrics
        from todi.generation.sampling import SamplingJob

        args, env = self.args, self.env
        config = sampling_config(args, dev=True)
        jobs = [SamplingJob(data.prompts, args.seed + r) for r in range(args.eval_gen_repeat_times)]
        engine = self._engine(model, tokenizer)
        try:
            answered = engine.answer(jobs, config, rank=env.rank, world_size=env.world_size, progress=args.eval_tqdm)
            return [compute_metrics(answers.texts, data.references) for answers in answered]
        finally:
            if self.backend == "vllm":
                self.colocated.release()

    def _engine(self, model, tokenizer):
        """The HF sampler on the training model, or the colocated vLLM engine holding its weights."""
        if self.backend == "hf":
            from todi.generation.engine import HFEngine

            return HFEngine(model, tokenizer, batch_size=self.args.eval_batch_size, synced_gpus=self.zero_stage == 3)
        return self.colocated.synced(model, self.zero_stage)



def sampling_config(args: argparse.Namespace, *, dev: bool = False):
    """The SamplingConfig of the generation flags (dev may override only the n-gram block)."""
    from todi.generation.sampling import SamplingConfig

    ngram = args.no_repeat_ngram_size
    if dev and args.dev_no_repeat_ngram_size is not None:
        ngram = args.dev_no_repeat_ngram_size
    return SamplingConfig(
        do_sample=args.do_sample, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        no_repeat_ngram_size=ngram, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
    )
