"""Which generation engine samples an on-policy step's rollouts, and how fresh its weights are.

* ``--rollout-backend hf`` (the default): the seeded HF sampler on the training model itself (under
  ZeRO-3 with the ranks in lock-step);
* ``--rollout-backend vllm``: the process's colocated vLLM engine (:mod:`todi.generation.colocated`,
  shared with ``--dev-gen-backend vllm``). It samples from the student's weights of its last sync: a
  generated step pushes the current weights when the engine's are ``--rollout-sync-interval`` or more
  optimizer steps old. With 1 (the default) every generated step pushes, and the samples are the HF
  engine's (fp32). With more, the synced weights are also kept on the host: they are part of the
  resumable state (a resumed run samples from the weights the uninterrupted run would), and they are
  pushed back when a dev evaluation has put newer ones into the shared engine.

The teacher's rollouts (GKD's ``--seq-kd``) always use the HF engine: vLLM runs one engine per
process, and here it holds the student.
"""

from __future__ import annotations

import torch

from todi.generation.engine import GenerationEngine, HFEngine

__all__ = ["RolloutEngines"]


class RolloutEngines:
    """The student's and the teacher's rollout engines of one rank (see the module docstring)."""

    def __init__(self, backend: str, tokenizer, *, sync_interval: int, zero_stage: int, batch_size: int,
                 synced_gpus: bool, colocated=None):
        if backend == "vllm" and colocated is None:
            raise ValueError("--rollout-backend vllm needs the process's colocated engine")
        self.backend, self.tokenizer, self.interval = backend, tokenizer, sync_interval
        self.zero_stage, self.batch_size, self.synced_gpus = zero_stage, batch_size, synced_gpus
        self.colocated = colocated
        self.synced_step: int | None = None  # the optimizer step whose weights the vLLM engine samples from
        self.kept: dict[str, torch.Tensor] | None = None  # those weights on the host (interval > 1 only)
        self.syncs = 0  # weight pushes since the last :meth:`take_syncs`

    def student(self, model, step: int) -> GenerationEngine:
        """The engine that samples the student at optimizer step ``step`` (every rank calls this together)."""
        if self.backend == "hf":
            return HFEngine(model, self.tokenizer, batch_size=self.batch_size, synced_gpus=self.synced_gpus)
        from todi.generation.colocated import training_weights

        if self.synced_step is None or step - self.synced_step >= self.interval:
            self.synced_step, self.syncs = step, self.syncs + 1
            if self.interval == 1:
                return self.colocated.holding(model.config, lambda: training_weights(model, self.zero_stage),
                                              tag=self._tag())
            self.kept = {name: t.detach().to("cpu", copy=True) for name, t in training_weights(model, self.zero_stage)}
        return self.colocated.holding(model.config, lambda: self.kept.items(), tag=self._tag())

    def teacher(self, model) -> GenerationEngine:
        return HFEngine(model, self.tokenizer, batch_size=self.batch_size, synced_gpus=self.synced_gpus)

    def release(self) -> None:
        """After a step's rollouts: the vLLM engine's memory goes back to training (CUDA), its weights
        kept aside when they will be sampled from again."""
        if self.backend == "vllm":
            self.colocated.release(keep_weights=self.interval > 1)

    def take_syncs(self) -> int:
        syncs, self.syncs = self.syncs, 0
        return syncs

    def _tag(self) -> tuple:
        return "rollouts", self.synced_step

    # ---- resume: the step of the last sync and, with an interval above 1, its weights ------------
    def state_dict(self) -> dict:
        if self.backend != "vllm" or self.interval == 1:
            return {}
        return {"synced_step": self.synced_step, "weights": self.kept}

    def load_state_dict(self, state: dict) -> None:
        if self.backend == "vllm" and self.interval > 1 and state.get("weights") is not None:
            self.synced_step, self.kept = state["synced_step"], state["weights"]
