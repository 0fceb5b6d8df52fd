"""BatchNorm recalibration of one subnet (Once-for-All): fresh statistics on training images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exitnas.data import normalize
from exitnas.search_space import ArchConfig, StaticNet, Supernet

__all__ = ["recalibrated_subnet", "recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(net: nn.Module, images: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                   batch_size: int = 500, device: torch.device | str = "cpu") -> None:
    """Re-estimate every BatchNorm's running statistics of ``net`` on uint8 ``images``.

    Statistics are the exact average over the batches (momentum None), not a moving average,
    so the result does not depend on the order of the batches.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
        m.train()
    try:
        for i in range(0, len(images), batch_size):
            x = normalize(images[i : i + batch_size].to(device, non_blocking=True), mean, std)
            net(x)
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)


def recalibrated_subnet(supernet: Supernet, arch: ArchConfig, images: Tensor, mean: tuple[float, ...],
                        std: tuple[float, ...], batch_size: int = 500,
                        device: torch.device | str = "cpu") -> StaticNet:
    """``to_static(arch)`` with BatchNorm statistics recalibrated on ``images``, in eval mode.

    The recalibration runs on the static copy, so the supernet's parameters and buffers are
    left exactly as they were.
    """
    net = supernet.to_static(arch).to(device)
    net.train()
    recalibrate_bn(net, images, mean, std, batch_size, device)
    return net.eval()
