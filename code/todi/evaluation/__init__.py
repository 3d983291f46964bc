"""Evaluation: ROUGE-L, eval sets x seeds, dev evaluation, results tables, curves."""
