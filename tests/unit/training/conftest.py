"""Fixtures of the in-process training tests: one process group (gloo) per module, a tiny GPT-2
student/teacher pair with the real tokenizer, and a small Dolly split."""

from __future__ import annotations

import pytest

from _training import make_dolly, make_gpt2_pair


@pytest.fixture(scope="module")
def process_group():
    from todi.util.distributed import init_distributed

    return init_distributed()


@pytest.fixture(scope="module")
def pair(shared_dir, tmp_path_factory):
    return make_gpt2_pair(shared_dir, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def dolly(shared_dir, tmp_path_factory):
    return make_dolly(shared_dir, tmp_path_factory.mktemp("dolly"), n_train=16, n_dev=4)
