"""Shared test fixtures: paths to the real tokenizers/data in ../shared, small random tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TODI_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        message = f"shared data not found at {SHARED} (set TODI_SHARED to its location)"
        if os.environ.get("TODI_REQUIRE_SHARED"):  # set by CI: there, a missing folder is a failure
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine threads cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# Small enough to train in seconds on a CPU core, large enough to have every real component.
TINY_GPT2 = dict(n_layer=2, n_embd=64, n_head=4, n_positions=1024)
TINY_LLAMA = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024)


@pytest.fixture(scope="session")
def tiny_gpt2(shared_dir, tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 with the real GPT-2 tokenizer, saved as a Hugging Face directory."""
    from todi.models import save_random_model

    return save_random_model(shared_dir / "model_hub/gpt2/gpt2-base", tmp_path_factory.mktemp("gpt2"), **TINY_GPT2)


@pytest.fixture(scope="session")
def tiny_gpt2_teacher(shared_dir, tmp_path_factory) -> Path:
    """A different (wider, other seed) random GPT-2 sharing the tokenizer: a teacher for KD tests."""
    from todi.models import save_random_model

    return save_random_model(
        shared_dir / "model_hub/gpt2/gpt2-base", tmp_path_factory.mktemp("gpt2t"), seed=1,
        **{**TINY_GPT2, "n_embd": 96},
    )


@pytest.fixture(scope="session")
def tiny_llama(shared_dir, tmp_path_factory) -> Path:
    """A random 2-layer Llama with the real TinyLLaMA tokenizer."""
    from todi.models import save_random_model

    return save_random_model(
        shared_dir / "model_hub/tinyllama/tinyllama-1.1b-3T", tmp_path_factory.mktemp("llama"), **TINY_LLAMA
    )
