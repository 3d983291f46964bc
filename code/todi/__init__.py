"""ToDi / AdaKD knowledge distillation for LLMs: losses, training, evaluation.

The stable public surface, importable from ``todi`` itself:

* :func:`divergence` and :data:`DIVERGENCES` (:mod:`todi.loss.divergence`): any registered objective
  on logits, by name;
* :func:`hellinger` and :func:`idts_temperature` (:mod:`todi.loss.adakd`): AdaKD's difficulty and
  per-token temperatures;
* :func:`compute_metrics` (:mod:`todi.evaluation.rouge`): the MiniLLM ROUGE-L and exact match;
* objectives are defined with ``todi.objectives.{Objective, Param, register}``.

They load on first use (PEP 562): ``import todi`` alone imports neither torch nor any sub-package,
so the judge and the launchers' helpers stay light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
PUBLIC = {
    "DIVERGENCES": "todi.loss.divergence",
    "divergence": "todi.loss.divergence",
    "hellinger": "todi.loss.adakd",
    "idts_temperature": "todi.loss.adakd",
    "compute_metrics": "todi.evaluation.rouge",
}

__all__ = sorted(PUBLIC)


def __getattr__(name: str):
    if name not in PUBLIC:  # also how ``from todi import kernels`` falls through to the sub-package
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(PUBLIC[name]), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC))
