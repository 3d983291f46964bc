"""Building a teacher cache: this rank's share of the examples no part holds yet, a part at a time.

Per batch the teacher runs once; per response token a top-k cache keeps its targets
(:func:`teacher_targets`), a hidden-state cache the input of its output layer (captured by a hook:
exactly what that layer reads). A hidden-state build checks on its first batch that the stored
output layer reproduces the teacher's logits (:func:`todi.cache.head.check_output_layer`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from todi.cache.head import OutputLayer, capture_head_inputs, check_output_layer
from todi.cache.store import DTYPES, HIDDEN_DTYPES, CacheSettings, covered_examples, write_part
from todi.util.labels import IGNORE_INDEX

__all__ = ["build_cache", "hidden_array", "tail_statistics", "teacher_targets"]


@torch.no_grad()
def teacher_targets(logits: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor]:
    """Top-k ids ``[N, k]`` (int64) and coarsened log-probabilities ``[N, k + 1]`` (float32) of
    teacher logits ``[N, V]`` at ``temperature`` (the last column: the log-mass of the other entries),
    the same coarsening the loss applies to the student (:func:`todi.objectives.math.coarse_log_probs`)."""
    from todi.objectives import scaled_logits
    from todi.objectives.math import coarse_log_probs

    ids = scaled_logits(logits, temperature).topk(min(k, logits.shape[-1]), dim=-1).indices
    return ids, coarse_log_probs(logits, ids, temperature)


@torch.no_grad()
def tail_statistics(logits: Tensor, ids: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """What a top-k target drops, per row of teacher logits ``[N, V]`` and its top-k ``ids``: the tail
    mass P_R (float32 ``[N]``) and the teacher entropy inside the tail, P_R·H(p_R) = −Σ_R p log p + P_R log P_R
    (nats): the part of the teacher's distribution the bucket makes invisible to every objective."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    p = log_p.exp()
    top_p, top_log_p = p.gather(-1, ids), log_p.gather(-1, ids)
    tail = (1.0 - top_p.sum(-1)).clamp_min(0.0)
    entropy = -(p * log_p).sum(-1) + (top_p * top_log_p).sum(-1)
    return tail, (entropy + tail * tail.clamp_min(1e-30).log()).clamp_min(0.0)


def hidden_array(hidden: Tensor, dtype: str) -> np.ndarray:
    """Hidden states ``[n, H]`` as the stored array (bf16 as its 16-bit pattern: numpy has no bfloat16)."""
    h = hidden.to(HIDDEN_DTYPES[dtype]).cpu()
    return (h.view(torch.int16) if dtype == "bf16" else h).numpy()


class _Collector:
    """The arrays of one part, per example: what a mode keeps of the teacher's outputs."""

    def __init__(self, settings: CacheSettings, vocab: int | None, layer: OutputLayer | None):
        self.settings, self.vocab, self.layer = settings, vocab, layer
        self.arrays: dict[str, list[np.ndarray]] = {"hidden": []} if settings.mode == "hidden" else \
            {"ids": [], "log_probs": []}
        self.max_difference: float | None = None  # hidden mode: of the first batch's check
        self.tail_mass = self.tail_entropy = 0.0  # topk mode: sums over tokens (tail_statistics)

    def add(self, teacher, logits: Tensor, hidden: Tensor | None, labels: Tensor) -> None:
        """One batch: ``logits`` ``[B, L, V]``, ``hidden`` ``[B, L, H]`` (hidden mode), ``labels`` ``[B, L]``."""
        s = self.settings
        for i, mask in enumerate(labels.ne(IGNORE_INDEX)):
            if s.mode == "hidden":
                if self.max_difference is None:  # once per build and rank: cheap, and before anything is written
                    self.max_difference = check_output_layer(teacher, self.layer, hidden[i][mask], logits[i][mask])
                self.arrays["hidden"].append(hidden_array(hidden[i][mask], s.dtype))
                continue
            rows = logits[i][mask][:, : self.vocab]
            top, lp = teacher_targets(rows, s.k, s.temperature)
            tail, entropy = tail_statistics(rows, top, s.temperature)
            self.tail_mass += float(tail.sum())
            self.tail_entropy += float(entropy.sum())
            self.arrays["ids"].append(top.to(torch.int32).cpu().numpy())
            self.arrays["log_probs"].append(lp.cpu().numpy().astype(DTYPES[s.dtype]))

    def tokens(self) -> int:
        return sum(len(a) for a in next(iter(self.arrays.values())))


@torch.no_grad()
def build_cache(teacher, examples: list, collate, root: str | Path, settings: CacheSettings, *, device,
                vocab: int | None = None, layer: OutputLayer | None = None, batch_size: int = 8,
                part_size: int = 256, rank: int = 0, world_size: int = 1, progress: bool = False) -> dict:
    """Compute this rank's share of the examples no part covers yet and write them in parts.

    ``examples``: the split's :class:`todi.data.instructions.TokenizedExample` list; ``collate``: its
    :class:`todi.data.instructions.Collator` (without a cache); ``vocab``: the leading logits a top-k
    target considers (the tokenizer's entries; None: all); ``layer``: the teacher's output layer
    (hidden mode; checked against the logits on the first batch). Rank r takes every
    world_size-th missing example. Returns this rank's counts: examples, tokens, bytes written.
    """
    from todi.util.log import progress_bar

    root = Path(root)
    done = covered_examples(root)
    mine = [e for e in examples if e.index not in done][rank::world_size]
    counts = {"examples": 0, "tokens": 0, "bytes": 0, "tail_mass": 0.0, "tail_entropy": 0.0}
    bar = progress_bar(total=len(mine), desc=f"teacher cache (rank {rank})", unit="ex", disable=not progress)
    checked = None
    with capture_head_inputs(teacher) as captured:
        for start in range(0, len(mine), part_size):
            part = mine[start : start + part_size]
            collector = _Collector(settings, vocab, layer)
            collector.max_difference = checked
            for b in range(0, len(part), batch_size):
                chunk = part[b : b + batch_size]
                batch = collate(chunk).to(device)
                source = batch.input_ids if batch.teacher_input_ids is None else batch.teacher_input_ids
                logits = teacher(input_ids=source, attention_mask=batch.attention_mask, use_cache=False).logits
                collector.add(teacher, logits, captured[0] if captured else None, batch.labels)
                bar.update(len(chunk))
            checked = collector.max_difference
            counts["bytes"] += write_part(root, part, collector.arrays)
            counts["examples"] += len(part)
            counts["tokens"] += collector.tokens()
            counts["tail_mass"] += collector.tail_mass
            counts["tail_entropy"] += collector.tail_entropy
    bar.close()
    counts["max_difference"] = checked
    return counts
