"""A vLLM engine colocated with training, for dev evaluation (``--dev-gen-backend vllm``).

Each rank starts its own engine at the first dev evaluation, from the student's config and current
weights (written to a temporary folder, which vLLM loads), with a bounded share of the device memory.
Before every later dev evaluation the training weights are pushed into it in place (names as in a
Hugging Face checkpoint; under ZeRO-3 gathered with DeepSpeed's ``GatheredParameters``; a LoRA
adapter's layers as merged weights), so the engine samples from the weights the HF sampler uses. (A
LoRA student's merged weight rounds differently from the unmerged layer, ~1e-7 in fp32: the answers
are then equal except at near-ties.) Between evaluations the engine sleeps where vLLM can (CUDA: its
weights and KV cache are freed for training).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

import torch

from todi.generation.sampling import SamplingConfig
from todi.generation.vllm_engine import VLLMEngine, start_llm

__all__ = ["DEV_MEMORY_SHARE", "ColocatedEngine", "training_weights"]

# The device memory share of a colocated engine: the training run keeps the rest. A tiny model's
# weights plus a KV cache for a dev set's prompts fit easily; a larger student may want more.
DEV_MEMORY_SHARE = 0.25
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
    """The rank's engine: started on first use, asleep between dev evaluations where supported."""

    def __init__(self, tokenizer, config: SamplingConfig, memory_share: float = DEV_MEMORY_SHARE):
        self.tokenizer, self.config, self.memory_share = tokenizer, config, memory_share
        self.engine: VLLMEngine | None = None
        self.sleeps = torch.cuda.is_available()  # vLLM's sleep mode needs CUDA (ROCm/XPU too, untested)

    def synced(self, model, zero_stage: int) -> VLLMEngine:
        """The engine, awake, holding ``model``'s current weights."""
        if self.engine is None:
            self.engine = self._start(model, zero_stage)
            return self.engine
        if self.sleeps:
            self.engine.llm.wake_up(tags=["weights"])
        self.engine.load_weights(training_weights(model, zero_stage))
        if self.sleeps:
            self.engine.llm.wake_up(tags=["kv_cache"])
        return self.engine

    def release(self) -> None:
        """After a dev evaluation: hand the memory back to training."""
        if self.engine is not None and self.sleeps:
            self.engine.llm.sleep(level=SLEEP_LEVEL)

    def _start(self, model, zero_stage: int) -> VLLMEngine:
        """An engine loaded from a temporary copy of the model (config and current weights).

        vLLM reseeds every random generator as it starts; training's random streams (dropout) are
        restored, so a run draws the same numbers whichever engine evaluates it."""
        from safetensors.torch import save_file

        dtype = next(model.parameters()).dtype
        weights = {name: t.detach().contiguous().cpu() for name, t in training_weights(model, zero_stage)}
        with tempfile.TemporaryDirectory(prefix="todi-dev-engine-") as folder, _random_state_kept():
            model.config.save_pretrained(folder)
            save_file(weights, f"{folder}/model.safetensors", metadata={"format": "pt"})
            del weights
            llm = start_llm(folder, dtype, self.config.max_length, memory_share=self.memory_share,
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
