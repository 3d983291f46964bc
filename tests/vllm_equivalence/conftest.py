"""The vLLM equivalence suite: runs only where vLLM imports (its own virtual environment, see
docs/evaluation.md and .ci/run); elsewhere each module skips itself (``REQUIRES_VLLM``). The folder
is not named ``vllm``: on pytest's path (``tests/``) that name would import as an empty package.

Its models are tiny but vLLM-shaped (head_dim 64, which vLLM's CPU attention needs) with real
tokenizers, and each has padding rows (output rows beyond the tokenizer) whose logits are made
large, so that any answer that could sample one would.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest

# in-process engines with a small CPU KV cache (GiB), before vLLM reads its settings
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from _vllm import boost_padding_rows  # noqa: E402
from todi.models import load_tokenizer, save_random_model  # noqa: E402


@pytest.fixture(autouse=True)
def _no_engine_left():
    """Engines a test left to the garbage collector are finalized now, not during a later test (an
    engine's shutdown tears down vLLM's process-wide state, see VLLMEngine.shutdown)."""
    gc.collect()
    yield
    gc.collect()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/vllm_equivalence/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def gpt2(shared_dir, tmp_path_factory) -> Path:
    """GPT-2 (real tokenizer, 50,257 ids) with 50,304 output rows: 47 padding rows."""
    out = save_random_model(shared_dir / "model_hub/gpt2/gpt2-base", tmp_path_factory.mktemp("gpt2"), n_layer=2,
                            n_embd=128, n_head=2, n_positions=256, vocab_size=50304)
    return boost_padding_rows(out, len(load_tokenizer(out)))


@pytest.fixture(scope="session")
def qwen(shared_dir, tmp_path_factory) -> Path:
    """Qwen2.5 (real tokenizer, 151,665 ids) with its 151,936 output rows: 271 padding rows."""
    out = save_random_model(shared_dir / "model_hub/qwen2.5/qwen2.5-0.5b", tmp_path_factory.mktemp("qwen"),
                            num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                            num_key_value_heads=2, max_position_embeddings=256,
                            layer_types=["full_attention"] * 2)
    return boost_padding_rows(out, len(load_tokenizer(out)))


@pytest.fixture(scope="session")
def dolly_prompts(shared_dir) -> list[str]:
    with open(shared_dir / "data/dolly/valid.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line, _ in zip(f, range(8))]
