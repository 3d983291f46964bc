"""Loss values and gradient projections on fixed inputs, per (objective, parameters) case.

``tests/data/kernel_golden.json`` holds what this computed before the objectives became registry
entries; ``test_golden.py`` checks that every implementation still gives those numbers (1e-6).
Regenerate (only when a change of the numbers is intended) with ``python tests/_golden.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "data" / "kernel_golden.json"
SHAPE = (3, 7, 203)  # V = 203: no power of two anywhere


def inputs():
    g = torch.Generator().manual_seed(11)
    s = torch.randn(*SHAPE, generator=g, dtype=torch.float64).float() * 3
    t = torch.randn(*SHAPE, generator=g, dtype=torch.float64).float() * 3
    s2, t2 = s.view(-1, SHAPE[-1]), t.view(-1, SHAPE[-1])
    s2[0, 3], t2[0, 4], s2[1, 5] = -math.inf, math.inf, math.inf
    s2[:, 7], t2[:, 7] = -math.inf, -math.inf
    labels = torch.randint(0, SHAPE[-1], SHAPE[:-1], generator=g)
    labels[0, :2] = -100
    temperature = torch.rand(SHAPE[:-1], generator=g) * 2 + 0.4
    projection = torch.randn(*SHAPE, generator=g)
    return s, t, labels, temperature, projection


def summarize(name, params, impl):
    """{"values": per-position divergence at T=2, "values_t": with per-position T, "grad": the
    projected gradient, "loss": the criterion's CE+KD sum, "loss_grad": its projected gradient}."""
    from todi.loss.criterion import DistillationLoss
    from todi.loss.divergence import divergence

    s, t, labels, temperature, projection = inputs()
    out = {}
    for key, temp in (("values", 2.0), ("values_t", temperature)):
        leaf = s.clone().requires_grad_(True)
        v = divergence(name, leaf, t, temperature=temp, impl=impl, **params)
        (v * torch.linspace(0.5, 1.5, v.numel()).view(v.shape)).sum().backward()
        out[key] = v.detach().reshape(-1).tolist()
        out["grad" if key == "values" else "grad_t"] = float((leaf.grad.nan_to_num() * projection).sum())
    leaf = s.clone().requires_grad_(True)
    crit = DistillationLoss(name, kd_rate=0.4, temperature=1.5, impl=impl, **params)
    loss = crit(leaf, labels, t).loss
    loss.backward()
    out["loss"] = float(loss.detach())
    out["loss_grad"] = float((leaf.grad * projection).sum())
    return out


def key(name, params):
    return name + json.dumps(params, sort_keys=True)


if __name__ == "__main__":
    import os

    from _cases import CASES

    IMPLS = ("reference", "chunked") + (("triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ())

    table = {key(n, p): {impl: summarize(n, p, impl) for impl in IMPLS} for n, p in CASES}
    GOLDEN.write_text(json.dumps(table, indent=0) + "\n")
    print(f"wrote {GOLDEN} ({len(table)} cases)")
