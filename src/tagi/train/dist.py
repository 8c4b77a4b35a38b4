"""Data-parallel plumbing: one process per device, started by ``torchrun`` (or a single plain process).

``init_distributed()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and joins the process group — gloo on CPU, NCCL on GPUs. Without
``WORLD_SIZE > 1`` it returns a single-process :class:`DistInfo` and every collective below is a no-op,
so the training code has one path for both cases. Rank 0 writes all files; the others wait at barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group described by torchrun's environment (idempotent); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def current() -> DistInfo:
    """The current group (without joining one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def default_device(info: DistInfo) -> torch.device:
    """``cuda:<local_rank>`` when GPUs are visible, else the CPU."""
    return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_grads(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum the gradients over ranks in one flat buffer (each rank holds its shard's summed loss gradient)."""
    if not info.enabled:
        return
    for p in params:  # a parameter this rank's shard did not reach still takes part in the sum
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (all ranks start from identical weights)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def cleanup() -> None:
    """Leave the process group (end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
