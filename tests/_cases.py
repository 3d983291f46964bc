"""The (objective, parameters) cases every loss test runs, read from the objective registry: each
objective at its defaults, then at the parameter values its entry lists (limits such as λ = 0 / 1,
strong / weak ToDi β, the α-β divergence's KL limits)."""

from __future__ import annotations

from todi.objectives import all_objectives

CASES = [(o.name, dict(params)) for o in all_objectives() for params in ({}, *o.cases)]
IDS = [f"{n}-{p}" for n, p in CASES]
