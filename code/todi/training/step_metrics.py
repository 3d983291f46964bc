"""Training metrics summed on the device over a log interval (or an epoch) and reduced across
processes in one collective, so that the step path never waits for the device."""

from __future__ import annotations

import torch
from torch import Tensor

from todi.util.distributed import all_reduce_sum

__all__ = ["StepMetrics"]


class StepMetrics:
    """Device-side sums over a log interval, reduced across processes in one collective."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.device_sums: dict[str, Tensor] = {}
        self.host_sums: dict[str, float] = {"examples": 0.0, "input_tokens": 0.0, "steps": 0.0}

    def add(self, name: str, value: Tensor) -> None:
        value = value.detach().float()
        if name in self.device_sums:
            self.device_sums[name] += value
        else:
            self.device_sums[name] = value.clone()

    def add_host(self, name: str, value: float) -> None:
        self.host_sums[name] = self.host_sums.get(name, 0.0) + value

    def reduce(self) -> dict[str, float]:
        """Global sums (one all-reduce, one host transfer); then resets."""
        names = sorted(self.device_sums)
        host_names = sorted(self.host_sums)
        values = [self.device_sums[n].to(self.device) for n in names]
        values += [torch.tensor(self.host_sums[n], device=self.device) for n in host_names]
        summed = all_reduce_sum(torch.stack(values)).tolist() if values else []
        self.reset()
        return dict(zip(names + host_names, summed))
