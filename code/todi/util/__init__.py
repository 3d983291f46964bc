"""Utilities that know nothing of the rest: labels, atomic writes, logging, failures, plug-ins, process group, JSONL, DeepSpeed config files."""
