"""The (objective, parameters) cases every loss test runs: each objective at its defaults and at
non-default parameter values, including the limits (λ = 0 / 1) and strong / weak ToDi β."""

from __future__ import annotations

CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js_divergence", {}),
    ("tvd", {}),
    ("skewed_forward_kl", {}),
    ("skewed_forward_kl", {"skew_lambda": 0.3}),
    ("skewed_forward_kl", {"skew_lambda": 0.0}),
    ("skewed_forward_kl", {"skew_lambda": 1.0}),
    ("skewed_reverse_kl", {}),
    ("skewed_reverse_kl", {"skew_lambda": 0.7}),
    ("skewed_reverse_kl", {"skew_lambda": 0.0}),
    ("adaptive_kl", {}),
    ("adaptive_kl", {"adaptive_kl_alpha": 0.2}),
    ("adaptive_kl", {"adaptive_kl_alpha": 0.9}),
    ("ToDi", {}),
    ("ToDi", {"beta": 0.5}),
    ("ToDi", {"beta": 4.0}),
]
IDS = [f"{n}-{p}" for n, p in CASES]
