"""Elastic ops of the supernet and the plain ops ``to_static`` turns them into.

Every elastic op computes only its active channels (slices of the full weight), so a
narrower or less multi-scale subnet really costs less, and every elastic op can hand
out a plain ``nn.Module`` holding copies of exactly those slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exitnas.search_space._gate import GatedMultiScaleConv2d, gated_conv, ring_mask, ring_use

__all__ = [
    "ElasticBatchNorm2d",
    "ElasticMultiScaleConv2d",
    "ElasticConv2d",
    "MultiScaleConv2d",
    "split_channels",
]


def split_channels(c_out: int, ratio: float) -> tuple[int, int]:
    """(5×5 channels, 3×3 channels) of a conv with ``c_out`` outputs and 5×5 share ``ratio``."""
    c5 = int(round(ratio * c_out))
    return c5, c_out - c5


class MultiScaleConv2d(nn.Module):
    """Plain multi-scale conv: the first ``c5`` outputs use 5×5 kernels, the rest 3×3.

    The static form of :class:`ElasticMultiScaleConv2d` (EMGNet's multi-scale features with
    a fixed split). Either part may be absent.
    """

    def __init__(self, c_in: int, c5: int, c3: int, stride: int = 1) -> None:
        super().__init__()
        self.conv5 = nn.Conv2d(c_in, c5, 5, stride, 2, bias=False) if c5 else None
        self.conv3 = nn.Conv2d(c_in, c3, 3, stride, 1, bias=False) if c3 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv5 is None:
            assert self.conv3 is not None
            return self.conv3(x)
        if self.conv3 is None:
            return self.conv5(x)
        return torch.cat([self.conv5(x), self.conv3(x)], dim=1)


class ElasticMultiScaleConv2d(nn.Module):
    """A 5×5 weight tensor whose centre 3×3 doubles as the 3×3 kernel.

    For active inputs ``c_in``, outputs ``c_out`` and ratio ``r``, output channels
    ``[0, c5)`` are computed with the full 5×5 kernels and ``[c5, c_out)`` with their
    centre 3×3, so switching a channel between scales keeps its weights (the centre is shared).
    """

    def __init__(self, max_in: int, max_out: int, stride: int = 1, gated: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 5, 5))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        # EMGNet's dynamic mode (see _gate): a threshold per channel; 0 starts every gate on.
        self.theta = nn.Parameter(torch.zeros(max_out)) if gated else None
        self.register_buffer("mask", ring_mask() if gated else None, persistent=False)

    def kernels(self, c_in: int, c_out: int, ratio: float) -> tuple[Tensor | None, Tensor | None]:
        c5, _ = split_channels(c_out, ratio)
        w = self.weight[:c_out, :c_in]
        w5 = w[:c5] if c5 else None
        w3 = w[c5:, :, 1:4, 1:4] if c5 < c_out else None
        return w5, w3

    def forward(self, x: Tensor, c_out: int, ratio: float,
                gate_use: list[tuple[Tensor, float]] | None = None) -> Tensor:
        """The multi-scale conv; with a gate, its 3×3 channels are gated per sample, and
        ``gate_use`` (if given) receives (mean ring MACs switched on per sample, ring MACs of all)."""
        w5, w3 = self.kernels(x.shape[1], c_out, ratio)
        outs = []
        if w5 is not None:
            outs.append(F.conv2d(x, w5, None, self.stride, 2))
        if w3 is not None and self.theta is not None:
            c5 = c_out - w3.shape[0]
            y, g = gated_conv(x, self.weight[c5:c_out, : x.shape[1]], self.theta[c5:c_out], self.stride,
                              self.training, self.mask)
            if gate_use is not None:
                gate_use.append(ring_use(g, x.shape[1], y))
            outs.append(y)
        elif w3 is not None:
            outs.append(F.conv2d(x, w3, None, self.stride, 1))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def to_static(self, c_in: int, c_out: int, ratio: float) -> MultiScaleConv2d | GatedMultiScaleConv2d:
        w5, w3 = self.kernels(c_in, c_out, ratio)
        c5, c3 = split_channels(c_out, ratio)
        if self.theta is not None and c3:
            g = GatedMultiScaleConv2d(c_in, c5, c3, self.stride).to(self.weight.device)
            with torch.no_grad():
                if g.conv5 is not None and w5 is not None:
                    g.conv5.weight.copy_(w5)
                g.weight.copy_(self.weight[c5:c_out, :c_in])
                g.theta.copy_(self.theta[c5:c_out])
            return g
        # Built where the weights are: a static net lives on its supernet's device, every part of it.
        m = MultiScaleConv2d(c_in, c5, c3, self.stride).to(self.weight.device)
        with torch.no_grad():
            if m.conv5 is not None and w5 is not None:
                m.conv5.weight.copy_(w5)
            if m.conv3 is not None and w3 is not None:
                m.conv3.weight.copy_(w3)
        return m


class ElasticConv2d(nn.Module):
    """A conv whose input and output channels are prefixes of the full weight."""

    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.stride, self.padding = stride, kernel // 2
        self.weight = nn.Parameter(torch.empty(max_out, max_in, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None

    def forward(self, x: Tensor, c_out: int) -> Tensor:
        b = self.bias[:c_out] if self.bias is not None else None
        return F.conv2d(x, self.weight[:c_out, : x.shape[1]], b, self.stride, self.padding)

    def to_static(self, c_in: int, c_out: int) -> nn.Conv2d:
        k = self.weight.shape[-1]
        m = nn.Conv2d(c_in, c_out, k, self.stride, self.padding, bias=self.bias is not None, device=self.weight.device)
        with torch.no_grad():
            m.weight.copy_(self.weight[:c_out, :c_in])
            if self.bias is not None:
                m.bias.copy_(self.bias[:c_out])
        return m


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over a channel prefix: weights and running statistics are sliced views.

    In training mode the sliced running statistics are updated in place, as Once-for-All
    does; they are re-estimated per subnet before evaluation (BN recalibration).
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        # Momentum is fixed (no cumulative average), so num_batches_tracked is not needed.
        training = self.training or not self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c],
            self.bias[:c],
            training,
            self.momentum if self.momentum is not None else 0.1,
            self.eps,
        )

    def to_static(self, c: int) -> nn.BatchNorm2d:
        m = nn.BatchNorm2d(c, eps=self.eps, momentum=self.momentum, device=self.weight.device)
        with torch.no_grad():
            m.weight.copy_(self.weight[:c])
            m.bias.copy_(self.bias[:c])
            if self.running_mean is not None and self.running_var is not None:
                m.running_mean.copy_(self.running_mean[:c])
                m.running_var.copy_(self.running_var[:c])
        return m
