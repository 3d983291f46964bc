"""The generation backends by name, and whether one can run here (a clear error when it cannot).

Standard library only: the command lines check a backend before loading anything.
"""

from __future__ import annotations

import importlib.util

__all__ = ["BACKENDS", "EngineUnavailable", "VLLM_INSTALL", "check_backend"]

BACKENDS = ("hf", "vllm")
# the optional extra that brings the GPU build; CPU machines (tests): docs/evaluation.md, "Backends"
VLLM_INSTALL = "pip install -e '.[vllm]'"


class EngineUnavailable(ValueError):
    """A backend that is unknown, or whose package is not installed (bad settings: one error line)."""


def check_backend(name: str, flag: str = "--backend") -> None:
    """Raise :class:`EngineUnavailable` (naming ``flag``) unless backend ``name`` can run here."""
    if name not in BACKENDS:
        raise EngineUnavailable(f"{flag} {name}: unknown generation backend (choose from {', '.join(BACKENDS)})")
    if name == "vllm" and not _installed("vllm"):
        raise EngineUnavailable(
            f"{flag} vllm: vLLM is not installed in this Python; install it with {VLLM_INSTALL} "
            f"(GPU) or see docs/evaluation.md, 'Generation backends', for the CPU build")


def _installed(package: str) -> bool:
    """Whether ``package`` is an installed package, not merely a folder of that name on the path
    (Python would import one as an empty namespace package)."""
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin is not None
