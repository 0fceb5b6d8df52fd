"""How the features at an exit feed its head and the blocks after it, during training.

Forward values never change (a trained subnet runs the same network either way); what a
routing changes is where each loss's gradient may flow:

- ``shared``: the head and the deeper blocks both read every channel, and both losses
  push on all of them (the usual multi-exit network);
- ``dfs``: Deep Feature Surgery's feature partitioning (Gong et al. 2024). The first
  ``β·C`` channels belong to the exit, the rest to the deeper network. The head reads
  all channels but its gradient reaches only its own part (it *references* the rest,
  detached); the deeper blocks read all channels but their gradient reaches only the
  deeper part. The cross terms carry no gradient, so the two losses stop pulling the
  channels at the exit in opposite directions. The final exit is never partitioned.

A routing is ``route(x, beta) -> (head_input, deeper_input)``; ``StaticNet.forward(x, routing, beta)``
(through ``ExitStep``) and ``Supernet.forward`` apply it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from exitnas._registry import Registry

__all__ = ["ROUTINGS", "dfs_route", "partition_channels", "shared_route"]

Route = Callable[[Tensor, float], "tuple[Tensor, Tensor]"]

#: Feature routings at non-final exits, by name (``train.routing``).
ROUTINGS: Registry[Route] = Registry("feature routing")


def partition_channels(channels: int, beta: float) -> int:
    """Channels that belong to the exit: ``round(β·C)``, at least 1 and at most ``C − 1``."""
    return min(channels - 1, max(1, round(beta * channels)))


@ROUTINGS.register("shared", "head and deeper blocks share every channel's gradient (default)")
def shared_route(x: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    return x, x


@ROUTINGS.register("dfs", "Deep Feature Surgery: a β share of channels is the exit's, cross gradients detached")
def dfs_route(x: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    k = partition_channels(x.shape[1], beta)
    own, rest = x[:, :k], x[:, k:]
    return torch.cat([own, rest.detach()], 1), torch.cat([own.detach(), rest], 1)
