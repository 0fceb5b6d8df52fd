"""Several processes (torchrun): rank bookkeeping and gradient averaging.

A sandwich step runs several subnets forward and backward before one optimiser step, each
using a different part of the supernet. ``DistributedDataParallel`` expects one forward per
backward and a fixed set of used parameters, so the trainer averages gradients itself, once
per step, in one flat all-reduce. Every rank samples the same subnets (seeded by the step),
so the same parameters have gradients on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "average_buffers",
    "average_gradients",
    "broadcast_parameters",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op without it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    """Replace each tensor by its mean over ranks, in one flat all-reduce."""
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def average_gradients(model: nn.Module, info: DistInfo) -> None:
    """Average the gradients of all parameters that have one across ranks."""
    _all_reduce_mean([p.grad for p in model.parameters() if p.grad is not None], info.world)


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average the floating-point buffers (BN running statistics) across ranks.

    Each rank's BN layers update their running statistics from its own shard of the batch,
    so without this the ranks drift apart and rank 0's checkpoint holds statistics of
    1/world of the data. Done every step, the running averages equal an EMA of the mean of
    the ranks' batch statistics (the EMA is linear), the same on every rank.
    """
    _all_reduce_mean([b for b in model.buffers() if b.is_floating_point()], info.world)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(model: nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if info.world == 1:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, 0)
