"""Training metrics summed on the device over a log interval (or an epoch) and reduced across
processes in one collective, so that the step path never waits for the device."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from todi.loss.criterion import LossOutput
from todi.util.distributed import all_reduce_sum

__all__ = ["StepMetrics", "StepSums"]

Sum = Tensor | float  # a device scalar while summing, a float once reduced

# Flattened names of the per-diagnostic sums (also the keys of the epoch sums saved with a run's state).
DIAGNOSTIC = "diagnostic/"
DIAGNOSTIC_TOKENS = "diagnostic_tokens/"


@dataclass
class StepSums:
    """What the trainer sums over micro-batches: device float32 scalars while summing (None until
    added), floats after :meth:`StepMetrics.reduce`.

    loss, tokens: the summed loss and the response tokens; ce, correct, kd, kd_tokens, planner:
    :class:`todi.loss.criterion.LossStats` summed (kd and kd_tokens None without a teacher);
    diagnostics / diagnostic_tokens: each diagnostic's sum and the KD tokens of the micro-batches
    that computed it; examples, input_tokens, steps: counted on the host.
    """

    loss: Sum | None = None
    tokens: Sum | None = None
    ce: Sum | None = None
    correct: Sum | None = None
    kd: Sum | None = None
    kd_tokens: Sum | None = None
    planner: dict[str, Sum] = field(default_factory=dict)
    diagnostics: dict[str, Sum] = field(default_factory=dict)
    diagnostic_tokens: dict[str, Sum] = field(default_factory=dict)
    examples: float = 0.0
    input_tokens: float = 0.0
    steps: float = 0.0

    def to_dict(self) -> dict[str, Sum]:
        """Flat, in an order every process shares: fields, then each dict's entries by name."""
        flat = {"loss": self.loss, "tokens": self.tokens, "ce": self.ce, "correct": self.correct}
        flat = {k: 0.0 if v is None else v for k, v in flat.items()}
        if self.kd is not None:
            flat.update(kd=self.kd, kd_tokens=self.kd_tokens)
        flat.update(sorted(self.planner.items()))
        flat.update({DIAGNOSTIC + k: v for k, v in sorted(self.diagnostics.items())})
        flat.update({DIAGNOSTIC_TOKENS + k: v for k, v in sorted(self.diagnostic_tokens.items())})
        flat.update(examples=self.examples, input_tokens=self.input_tokens, steps=self.steps)
        return flat

    @classmethod
    def from_dict(cls, flat: dict[str, float]) -> "StepSums":
        """The inverse of :meth:`to_dict` (names it does not know are a planner's)."""
        sums, rest = cls(), dict(flat)
        for name in ("loss", "tokens", "ce", "correct", "kd", "kd_tokens", "examples", "input_tokens", "steps"):
            if name in rest:
                setattr(sums, name, rest.pop(name))
        for name, value in rest.items():
            if name.startswith(DIAGNOSTIC_TOKENS):
                sums.diagnostic_tokens[name[len(DIAGNOSTIC_TOKENS):]] = value
            elif name.startswith(DIAGNOSTIC):
                sums.diagnostics[name[len(DIAGNOSTIC):]] = value
            else:
                sums.planner[name] = value
        return sums

    def __add__(self, other: "StepSums") -> "StepSums":
        """The sums of two reduced StepSums (floats)."""
        a, b = self.to_dict(), other.to_dict()
        return StepSums.from_dict({k: a.get(k, 0.0) + b.get(k, 0.0) for k in a | b})


def _added(total: Tensor | None, value: Tensor) -> Tensor:
    """``total + value`` in float32 on the device, in place after the first."""
    value = value.detach().float()
    return value.clone() if total is None else total.add_(value)


class StepMetrics:
    """Device-side sums over a log interval, reduced across processes in one collective."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = StepSums()

    def add(self, out: LossOutput) -> None:
        """One micro-batch's loss, tokens, statistics and diagnostics."""
        s, stats = self.sums, out.stats
        s.loss, s.tokens = _added(s.loss, out.loss), _added(s.tokens, out.num_tokens)
        s.ce, s.correct = _added(s.ce, stats.ce), _added(s.correct, stats.correct)
        if stats.kd is not None:
            s.kd, s.kd_tokens = _added(s.kd, stats.kd), _added(s.kd_tokens, stats.kd_tokens)
        for name, value in stats.planner.items():
            s.planner[name] = _added(s.planner.get(name), value)
        for name, value in out.diagnostics.items():  # the objective's named diagnostics, per KD token
            s.diagnostics[name] = _added(s.diagnostics.get(name), value)
            s.diagnostic_tokens[name] = _added(s.diagnostic_tokens.get(name), stats.kd_tokens)

    def add_batch(self, examples: int, input_tokens: int) -> None:
        self.sums.examples += examples
        self.sums.input_tokens += input_tokens

    def add_step(self) -> None:
        self.sums.steps += 1

    def reduce(self) -> StepSums:
        """Global sums (one all-reduce, one host transfer); then resets."""
        flat = self.sums.to_dict()
        values = [v.to(self.device) if isinstance(v, Tensor) else torch.tensor(v, device=self.device)
                  for v in flat.values()]
        summed = all_reduce_sum(torch.stack(values)).tolist()
        self.reset()
        return StepSums.from_dict(dict(zip(flat, summed)))
