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


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
