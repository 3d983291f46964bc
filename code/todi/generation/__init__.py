"""Sampling answers: the seeded HF sampler (the reference)."""
