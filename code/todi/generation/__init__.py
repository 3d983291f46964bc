"""Sampling answers behind one engine interface: the seeded HF sampler (the reference), vLLM."""
