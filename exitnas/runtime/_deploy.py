"""The deployed form of a module: BatchNorm folded, channels-last, TorchScript, frozen.

At batch size 1 on a CPU a small subnet runs far below the arithmetic rate of a large one:
each op pays a fixed cost (dispatch, allocation) and small convs use their kernels poorly.
:func:`fold_batchnorm` removes the BatchNorms (each is folded into the conv before it; for a
multi-scale conv, each part takes its channels' share). :func:`deploy` then stores 4-D
weights channels-last (measured on a 2-core Xeon, torch 2.13, one thread: subnets 8–45%
faster than NCHW; ``torch.jit.optimize_for_inference``'s MKLDNN layout was slower for small
subnets and its result cannot be saved), scripts and freezes, which inlines every submodule
call and turns weights into constants. The exported early-exit model, the latency table and
the latency benchmark all run this one path, so the table predicts what ships.

Folding works on a deep copy: the module passed in (a ``StaticNet``, a block, a head) is
left as it is, with its BatchNorms, for training and for checking against the supernet.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from itertools import pairwise
from typing import TypeVar

import torch
from torch import Tensor, nn

from exitnas.search_space import MultiScaleConv2d, StaticBlock

__all__ = ["Normalise", "channels_last", "deploy", "fold_batchnorm"]

M = TypeVar("M", bound=nn.Module)


def fold_batchnorm(module: M) -> M:
    """A deep copy of ``module`` in eval mode with every BatchNorm that follows a conv folded
    into that conv (the BatchNorm becomes ``nn.Identity``); the same outputs up to rounding."""
    m = copy.deepcopy(module).eval()
    _fold_in_place(m)
    return m


def _fold_in_place(m: nn.Module) -> None:
    if isinstance(m, StaticBlock):
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
            if _foldable(getattr(m, conv), getattr(m, bn)):
                setattr(m, conv, _fold(getattr(m, conv), getattr(m, bn)))
                setattr(m, bn, nn.Identity())
    elif isinstance(m, nn.Sequential):
        names = list(m._modules)
        for a, b in pairwise(names):
            if _foldable(m._modules[a], m._modules[b]):
                m._modules[a] = _fold(m._modules[a], m._modules[b])  # type: ignore[arg-type]
                m._modules[b] = nn.Identity()
    for child in m.children():
        _fold_in_place(child)


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return (isinstance(conv, (nn.Conv2d, MultiScaleConv2d)) and type(bn) is nn.BatchNorm2d
            and bn.track_running_stats and bn.running_mean is not None)


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """``bn(conv(x))`` as one conv: W' = W·s, b' = (b - μ)·s + β with s = γ / √(σ² + ε)."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    if isinstance(conv, MultiScaleConv2d):
        # Output channels [0, c5) come from the 5×5 part, the rest from the 3×3 part.
        folded = copy.deepcopy(conv)
        c5 = conv.conv5.out_channels if conv.conv5 is not None else 0
        if conv.conv5 is not None:
            folded.conv5 = _fold_conv(conv.conv5, scale[:c5], shift[:c5])
        if conv.conv3 is not None:
            folded.conv3 = _fold_conv(conv.conv3, scale[c5:], shift[c5:])
        return folded
    assert isinstance(conv, nn.Conv2d)
    return _fold_conv(conv, scale, shift)


def _fold_conv(conv: nn.Conv2d, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    out = out.to(conv.weight.device, conv.weight.dtype)
    out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    assert out.bias is not None
    out.bias.copy_(bias * scale + shift)
    return out.requires_grad_(False)


def deploy(module: nn.Module, preserve: Sequence[str] = ()) -> torch.jit.ScriptModule:
    """``module`` as it runs in deployment: BatchNorm folded, channels-last, scripted, frozen.

    ``preserve`` names attributes and exported methods (``@torch.jit.export``) that freezing
    must keep besides ``forward``. It runs on inputs of either memory format; channels-last
    ones (:func:`channels_last`) avoid a conversion in the first conv. The result is a new
    module; ``module`` is unchanged.
    """
    folded = fold_batchnorm(module).requires_grad_(False).to(memory_format=torch.channels_last)
    # Freezing alone already folds a conv directly followed by a BN in the graph; the
    # explicit fold also covers the conv → cat → BN of a multi-scale conv, which it cannot.
    return torch.jit.freeze(torch.jit.script(folded), preserved_attrs=list(preserve))


def channels_last(x: Tensor) -> Tensor:
    """An image batch (N×C×H×W) in the memory layout the deployed convs are fastest with;
    a tensor of another rank as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class Normalise(nn.Module):
    """Images in [0, 1] → ``(x - mean) / std`` per channel, channels-last: the exported
    model's first step, so the latency table times it with the stem."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return channels_last((x - self.mean) / self.std)
