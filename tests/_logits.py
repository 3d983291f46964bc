"""Random student/teacher logits for the kernel tests, with the edge cases the semantics define."""

from __future__ import annotations

import math

import torch


def make_pair(*shape, dtype=torch.float32, seed=0, scale=3.0, specials=True, device=None):
    """Random student/teacher logits of ``shape`` (normal, times ``scale``), on ``device``.

    With ``specials`` (on the rows of the flattened ``[-1, V]`` view): a student −inf entry, a
    teacher +inf entry, a student +inf entry, a shared −inf column, a row where the student has no
    finite logit and one where the teacher has none.
    """
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g) * scale
    t = torch.randn(*shape, generator=g) * scale
    if specials:
        s2, t2 = s.view(-1, shape[-1]), t.view(-1, shape[-1])
        s2[0, 3] = -math.inf
        t2[0, 4] = math.inf
        s2[1, 5] = math.inf
        s2[:, 7], t2[:, 7] = -math.inf, -math.inf
        s2[2, :] = -math.inf
        t2[3, :] = -math.inf
    return s.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype)
