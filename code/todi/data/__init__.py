"""Instruction data: reading and tokenizing, batching, preparing the evaluation sets."""
