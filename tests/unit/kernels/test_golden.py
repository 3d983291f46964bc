"""Every implementation still gives the numbers it gave before the objectives became registry
entries (``tests/data/kernel_golden.json``, see ``tests/_golden.py``), to 1e-6."""

from __future__ import annotations

import json
import math

import pytest

from _golden import GOLDEN, key, summarize
from _cases import CASES

TABLE = json.loads(GOLDEN.read_text())
OLD = [(n, p) for n, p in CASES if key(n, p) in TABLE]


def _close(got, want):
    if isinstance(want, list):
        return all(_close(g, w) for g, w in zip(got, want)) and len(got) == len(want)
    if not math.isfinite(want):
        return not math.isfinite(got)
    return abs(got - want) <= 1e-6 * max(1.0, abs(want))


def test_every_old_case_is_still_a_case():
    assert len(OLD) == len(TABLE) == 17


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("name,params", OLD, ids=[key(n, p) for n, p in OLD])
def test_losses_match_the_golden_values(name, params, impl):
    got, want = summarize(name, params, impl), TABLE[key(name, params)][impl]
    bad = {k: (got[k], want[k]) for k in want if not _close(got[k], want[k])}
    assert not bad, bad
