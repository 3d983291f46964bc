"""A vLLM engine colocated with training, for dev evaluation (``--dev-gen-backend vllm``) and on-policy
rollouts (``--rollout-backend vllm``); one per process, shared by both.

Each rank starts its own engine at its first use, from the student's config and current weights
(written to a temporary folder, which vLLM loads), with a bounded share of the device memory.
Before every later use the training weights are pushed into it in place (names as in a
Hugging Face checkpoint; under ZeRO-3 gathered with DeepSpeed's ``GatheredParameters``; a LoRA
adapter's layers as merged weights), so the engine samples from the weights the HF sampler uses. (A
LoRA student's merged weight rounds differently from the unmerged layer, ~1e-7 in fp32: the answers
are then equal except at near-ties.) Between uses the engine sleeps where vLLM can (CUDA: its
weights and KV cache are freed for training).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Iterator

import torch

from todi.generation.vllm_engine import VLLMEngine, start_llm

__all__ = ["COLOCATED_MEMORY_SHARE", "ColocatedEngine", "training_weights"]

# The device memory share of a colocated engine: the training run keeps the rest. A tiny model's
# weights plus a KV cache for a dev set's prompts fit easily; a larger student may want more.
COLOCATED_MEMORY_SHARE = 0.25
SLEEP_LEVEL = 2  # weights and KV cache discarded while asleep: the weights are pushed anew anyway


def training_weights(model, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of every weight the model generates with; ``model`` is the training
    module (a Hugging Face model or a peft one). A LoRA layer yields its merged weight, ``W + ΔW``
    (computed aside: the training weights are never touched); under ZeRO-3 tensors are gathered copies."""
    peft = hasattr(model, "get_base_model")
    base = model.get_base_model() if peft else model
    # a peft model is gathered whole (each merged weight needs its adapter), a plain one a weight at a time
    with _gathered(list(model.parameters()), zero_stage == 3 and peft):
        lora = {f"{name}.base_layer.weight": module for name, module in base.named_modules()
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")}
        for name, param in base.named_parameters():
            if "lora_" in name:
                continue
            with _gathered([param], zero_stage == 3 and not peft):
                data = param.data.detach()
                if name in lora:
                    data = data + _lora_delta(lora[name])
                elif zero_stage == 3:
                    data = data.clone()  # the gathered storage is freed on leaving the block
                yield name.replace(".base_layer.", "."), data


def _lora_delta(module) -> torch.Tensor:
    """The weight change of a peft LoRA layer's active adapters (as ``merge_and_unload`` adds it)."""
    active = [a for a in module.active_adapters if a in module.lora_A]
    return sum(module.get_delta_weight(a) for a in active)


def _gathered(params: list, gather: bool):
    """DeepSpeed's collective gathering of ZeRO-3 partitioned parameters (every rank takes part)."""
    if not gather:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


class ColocatedEngine:
    """The rank's vLLM engine beside training (one per process: dev evaluation and rollouts share it),
    started on first use, asleep between uses where supported.

    ``max_model_len``: the longest prompt + answer any user asks of it. The engine remembers which
    weights it holds by a tag (e.g. the optimizer step whose weights were pushed), so a caller that
    holds fixed weights for a while (``--rollout-sync-interval``) pushes them only when needed.
    """

    def __init__(self, tokenizer, max_model_len: int, memory_share: float = COLOCATED_MEMORY_SHARE):
        self.tokenizer, self.max_model_len, self.memory_share = tokenizer, max_model_len, memory_share
        self.engine: VLLMEngine | None = None
        self.tag: object = None  # the tag of the weights the engine holds (None: unknown or discarded)
        self.sleeps = torch.cuda.is_available()  # vLLM's sleep mode needs CUDA (ROCm/XPU too, untested)
        self.asleep = False

    def synced(self, model, zero_stage: int) -> VLLMEngine:
        """The engine, awake, holding ``model``'s current weights."""
        return self.holding(model.config, lambda: training_weights(model, zero_stage), tag=None)

    def holding(self, config, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]], *, tag: object) -> VLLMEngine:
        """The engine, awake, holding ``weights()`` (checkpoint names; a model ``config``'s): pushed unless
        it already holds weights tagged ``tag`` (None: always pushed). Every rank calls this together
        (gathering ZeRO-3 weights is collective)."""
        if self.engine is None:
            self.engine = self._start(config, weights())
        else:
            self._wake("weights")  # level 1 restores the kept weights; level 2 brings back empty buffers
            if tag is None or tag != self.tag:
                self.engine.load_weights(weights())
            self._wake("kv_cache")
        self.asleep = False
        self.tag = tag
        return self.engine

    def release(self, *, keep_weights: bool = False) -> None:
        """After a use: hand the memory back to training (CUDA). ``keep_weights``: offload the weights to
        host memory and restore them on waking (else they are discarded and pushed anew)."""
        if self.engine is None or not self.sleeps or self.asleep:
            return
        self.engine.llm.sleep(level=1 if keep_weights else SLEEP_LEVEL)
        self.asleep = True
        if not keep_weights:
            self.tag = None

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def _wake(self, part: str) -> None:
        if self.asleep:
            self.engine.llm.wake_up(tags=[part])

    def _start(self, config, weights: Iterable[tuple[str, torch.Tensor]]) -> VLLMEngine:
        """An engine loaded from a temporary folder holding ``config`` and ``weights``.

        vLLM reseeds every random generator as it starts; training's random streams (dropout) are
        restored, so a run draws the same numbers whichever engine samples for it."""
        from safetensors.torch import save_file

        tensors = {name: t.detach().contiguous().cpu() for name, t in weights}
        dtype = next(iter(tensors.values())).dtype
        with tempfile.TemporaryDirectory(prefix="todi-colocated-engine-") as folder, _random_state_kept():
            config.save_pretrained(folder)
            save_file(tensors, f"{folder}/model.safetensors", metadata={"format": "pt"})
            del tensors
            llm = start_llm(folder, dtype, self.max_model_len, memory_share=self.memory_share,
                            sleep_mode=self.sleeps)
        return VLLMEngine(llm, self.tokenizer)


@contextlib.contextmanager
def _random_state_kept():
    """Python's, NumPy's and torch's (CPU, current CUDA device) random states, restored on exit."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
