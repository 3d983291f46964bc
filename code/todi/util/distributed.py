"""Process group, device and the few collectives the trainer needs (NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import warnings
from dataclasses import dataclass
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from todi.util.log import quiet

__all__ = ["DistEnv", "all_reduce_sum", "barrier", "init_distributed", "process_group"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _silence_libraries() -> None:
    """Quiet mode: torch's deprecation of the collectives DeepSpeed calls (a FutureWarning per process
    and call site, nothing a user can act on) is not shown."""
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def init_distributed(timeout_minutes: int = 60) -> DistEnv:
    """Join (or create) the default process group through DeepSpeed.

    Under torchrun / the deepspeed launcher the environment describes the group; a plain
    ``python code/distillation.py`` becomes a one-process group. GPUs are used when CUDA sees
    any (one per local rank), the CPU otherwise. Quiet (:func:`todi.util.log.quiet`): without the
    libraries' per-process notices (DeepSpeed's "built successfully" lines, torch's deprecations).
    """
    import deepspeed

    if "RANK" not in os.environ:  # started without a launcher: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} visible GPU(s): "
                "start at most one process per GPU (NPROC) or list more GPUs (GPUS)"
            )
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    silent = quiet()
    if silent:
        _silence_libraries()
    if not dist.is_initialized():
        printed = contextlib.redirect_stdout(io.StringIO()) if silent else contextlib.nullcontext()
        with printed:  # DeepSpeed prints a line per process when it builds its CPU communication op
            deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
    world_size = dist.get_world_size()
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return DistEnv(dist.get_rank(), world_size, local_rank, local_world_size, device)


@contextlib.contextmanager
def process_group(timeout_minutes: int = 60) -> Iterator[DistEnv]:
    """:func:`init_distributed` for a command: the group it creates is destroyed when the block ends
    normally. A process that leaves gloo's worker threads alive at interpreter exit can abort
    ("terminate called without an active exception", exit code 1, after a finished run). A group
    the caller created (in-process use) stays the caller's; a failed rank of a larger group leaves
    without a teardown that could wait for the others (todi.util.failures)."""
    created = not dist.is_initialized()
    env = init_distributed(timeout_minutes)
    finished = False
    try:
        yield env
        finished = True
    finally:
        if created and dist.is_initialized() and (finished or env.world_size == 1):
            dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """In-place sum over all processes (no host synchronisation on GPUs); returns the tensor."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
