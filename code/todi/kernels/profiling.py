"""Measuring the extra memory a function allocates (bytes, not time), on CUDA and on CPU.

On CUDA the caching allocator's peak counter is exact. On CPU there is no such counter; the
profiler records every allocation and free of the CPU allocator (``profile_memory=True``), and
replaying those events in time order gives the peak of the bytes allocated while the function ran
(tensors alive before the call are not counted; tensors it leaves alive, e.g. ``.grad``, are).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_extra_bytes"]


def peak_extra_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak of the bytes allocated by ``fn()`` above what was allocated when it started."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cuda or cpu, not {device.type}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak
