"""Data parallelism under torchrun: each rank takes its shard of every global batch, gradients are summed.

The step differentiates with ``torch.autograd.grad`` (so MAGIC can replay it), which DDP's backward hooks
do not see; this module does DDP's job explicitly: one flat all-reduce of the gradients per step, buffers
broadcast from rank 0 (as DDP's ``broadcast_buffers``). gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a plain process gets world size 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def sum_gradients(grads: list[Tensor]) -> None:
    """All-reduce (sum) a list of gradients in place through one flat buffer."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_tensors(tensors: dict[str, Tensor], src: int = 0) -> None:
    for t in tensors.values():
        dist.broadcast(t, src)


def all_equal(values: Tensor) -> bool:
    """Whether every rank holds the same 1-D tensor of checksums."""
    gathered = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, values)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one. Exiting without it can abort a rank at
    interpreter teardown (gloo's threads still alive: "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
