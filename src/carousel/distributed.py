"""Data-parallel helpers: ``torchrun --nproc-per-node N -m carousel train ...`` starts N
processes; each joins the group here (gloo on CPU, nccl on CUDA), trains on its own streams
of the global batch, and DistributedDataParallel averages the gradients.  Without torchrun
every helper degrades to the one-process case."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> tuple[int, int]:
    """Join the process group if torchrun started us; return (rank, world size)."""
    world = world_size_from_env()
    if world <= 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def share(obj: object) -> object:
    """Process 0's ``obj`` (a small JSON-like value, e.g. evaluation scores) on every
    process (``obj`` itself when alone)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: Tensor) -> Tensor:
    """``value`` averaged over the processes (itself when alone)."""
    if not active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def gather(t: Tensor, dim: int) -> Tensor:
    """Every process's ``t`` concatenated along ``dim`` in rank order (itself when alone)."""
    if not active():
        return t
    home = t.device
    if dist.get_backend() == "nccl":  # nccl gathers CUDA tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim).to(home)


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown(*, together: bool = True) -> None:
    """Leave the process group (a no-op without one).  ``together``: wait at a barrier first,
    so that no process tears its group down while another still talks to it; a process
    leaving on an error passes False (its peers may never reach the barrier)."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
