"""Pairwise LLM-as-judge: inputs, client, statistics."""
