"""Whole pipelines: the demo and the toy study."""
