"""EMGNet's dynamic mode: a per-sample gate that picks 5×5 or 3×3 for each channel.

In a multi-scale conv the 3×3 kernel of a channel is the centre of its 5×5 kernel, so the
5×5 output is the 3×3 output plus a *ring* conv (the 16 outer taps):
``y5 = y3 + ring(x)``. With ``space.gate: emg`` (Lee et al. 2021) every channel the static
split gives a 3×3 kernel may grow to 5×5 for one input: the gate of channel c on sample n is

    g[n, c] = 1  if  mean_hw |y3[n, c]| > θ_c,   else 0,

with a learned threshold θ_c per channel (EMGNet's gate reads the 3×3 output it has already
computed). Training passes the gradient straight through a sigmoid of the same margin and
``train.gate_cost`` prices the ring MACs the gates switch on. At inference only the channels
some sample in the batch switched on run their ring conv (at batch size 1: exactly its own),
so the MACs of a sample depend on the sample; the evaluators count them per sample.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional, Tuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exitnas._registry import Registry

__all__ = ["GATES", "Gate", "GateUse", "GatedMultiScaleConv2d", "RingMacs", "gate_mask", "gated_conv",
           "gated_modules", "ring_macs", "ring_mask", "ring_use", "without_rings"]

#: Multi-scale gates by name (``space.gate``).
GATES: Registry[str] = Registry("multi-scale gate")
GATES.register("none", "static multi-scale split: the searched ratio fixes each channel's kernel")("none")
GATES.register("emg", "EMGNet dynamic mode: a per-sample gate grows a 3x3 channel to 5x5")("emg")


def gate_mask(y3: Tensor, theta: Tensor, training: bool) -> Tensor:
    """N×C gates from the 3×3 outputs ``y3`` (N×C×H×W) and thresholds ``theta`` (C).

    Hard 0/1 values; in training the gradient of ``sigmoid(margin)`` passes straight through.
    """
    margin = y3.abs().mean(dim=(2, 3)) - theta
    hard = (margin > 0).to(y3.dtype)
    if not training:
        return hard
    soft = torch.sigmoid(margin)
    return hard + soft - soft.detach()


def ring_macs(c_in: int, out: Tensor) -> int:
    """MACs of one channel's ring conv (16 taps of c_in inputs) for an output map like ``out``."""
    return c_in * 16 * int(out.shape[-2]) * int(out.shape[-1])


def ring_use(g: Tensor, c_in: int, out: Tensor) -> Tuple[Tensor, float]:
    """(mean ring MACs the N×C gates ``g`` switch on per sample, ring MACs of all C channels),
    what ``training.gate_penalty`` prices; ``out`` is the gated conv's output map."""
    per = ring_macs(c_in, out)
    return g.sum(1).mean() * per, float(g.shape[1] * per)


class Gate(nn.Module):
    """The gate of a :class:`GatedMultiScaleConv2d`: ``forward(y3, theta)`` → N×C gates.

    A module of its own so that its output — the gates the conv computed — is what a
    :class:`RingMacs` or :class:`GateUse` hook reads (with its input ``y3`` for the map's
    size): the gates are computed once, and nothing is kept on the conv.
    """

    def forward(self, y3: Tensor, theta: Tensor) -> Tensor:
        return gate_mask(y3, theta, self.training)


class GatedMultiScaleConv2d(nn.Module):
    """Static multi-scale conv with EMGNet's gate on its 3×3 channels.

    Outputs ``[0, c5)`` always use 5×5 kernels (``conv5``); outputs ``[c5, c5 + c3)`` use the
    centre of ``weight`` (c3×c_in×5×5) and, where the ``gate`` is on, its ring as well.
    """

    def __init__(self, c_in: int, c5: int, c3: int, stride: int = 1) -> None:
        super().__init__()
        self.c_in = c_in
        self.stride = stride
        self.conv5 = nn.Conv2d(c_in, c5, 5, stride, 2, bias=False) if c5 else None
        self.weight = nn.Parameter(torch.zeros(c3, c_in, 5, 5))
        self.theta = nn.Parameter(torch.zeros(c3))
        self.gate = Gate()
        self.register_buffer("mask", ring_mask(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y3 = centre_conv(x, self.weight, self.stride)
        y = add_rings(x, y3, self.gate(y3, self.theta), self.weight, self.stride, self.training, self.mask)
        if self.conv5 is None:
            return y
        return torch.cat([self.conv5(x), y], dim=1)


class _RingFree(nn.Module):
    """A gated conv without its rings: the conv5 part, the 3×3 centres and the gate, which
    every sample pays (the same parameters; see :func:`without_rings`)."""

    def __init__(self, conv: GatedMultiScaleConv2d) -> None:
        super().__init__()
        self.conv5, self.weight, self.theta, self.stride = conv.conv5, conv.weight, conv.theta, conv.stride
        self.register_buffer("mask", conv.mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y = gated_conv(x, self.weight, self.theta, self.stride, self.training, self.mask, ring=False)[0]
        return y if self.conv5 is None else torch.cat([self.conv5(x), y], dim=1)


M = TypeVar("M", bound=nn.Module)


def without_rings(module: M) -> M:
    """A deep copy of ``module`` whose gated convs leave their rings out, for fvcore to count
    the MACs every sample pays (the evaluators add each sample's rings)."""
    copied = copy.deepcopy(module)
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GatedMultiScaleConv2d):
                setattr(parent, name, _RingFree(child))
    return copied


def ring_mask() -> Tensor:
    """1×1×5×5: ones on the 16 outer taps, zeros on the shared 3×3 centre."""
    m = torch.ones(1, 1, 5, 5)
    m[:, :, 1:4, 1:4] = 0
    return m


def centre_conv(x: Tensor, weight: Tensor, stride: int) -> Tensor:
    """The 3×3 output: the centres of the 5×5 kernels ``weight``."""
    return F.conv2d(x, weight[:, :, 1:4, 1:4], None, stride, 1)


def add_rings(x: Tensor, y3: Tensor, g: Tensor, weight: Tensor, stride: int, training: bool,
              mask: Tensor) -> Tensor:
    """``y3`` plus the ring conv of each channel where its gate ``g`` (N×C) is on.

    Training runs every ring (so the gradient reaches every gate and kernel); inference runs
    the rings of the channels some sample switched on and adds them where its gate is on.
    A trace (ONNX export) takes the training form, which has no branch on the data.
    """
    rings = weight * mask  # the outer taps (a product, so ONNX knows the kernel's shape)
    if training or torch.jit.is_tracing():
        return y3 + g[:, :, None, None] * F.conv2d(x, rings, None, stride, 2)
    on = torch.nonzero(g.sum(0) > 0).flatten()
    if on.numel() == 0:
        return y3
    r = F.conv2d(x, rings.index_select(0, on), None, stride, 2)
    return y3.index_add(1, on, r * g.index_select(1, on)[:, :, None, None])


def gated_conv(x: Tensor, weight: Tensor, theta: Tensor, stride: int, training: bool, mask: Tensor,
               ring: bool = True) -> Tuple[Tensor, Tensor]:
    """(output, N×C gates) of 5×5 kernels ``weight`` whose rings the gate switches per sample
    (see :func:`add_rings`); ``ring=False`` leaves the rings out, for counting MACs: the gate
    stays in the traced graph, the rings do not."""
    y3 = centre_conv(x, weight, stride)
    g = gate_mask(y3, theta, training)
    if not ring:
        return y3 + 0.0 * g.sum(), g
    return add_rings(x, y3, g, weight, stride, training, mask), g


def gated_modules(module: nn.Module) -> List[GatedMultiScaleConv2d]:
    return [m for m in module.modules() if isinstance(m, GatedMultiScaleConv2d)]


W = TypeVar("W", bound="_Watch")


class _Watch:
    """Forward hooks on the gates of gated convs while a ``with`` block is open; a hook reads
    the gates (the :class:`Gate`'s output) and the 3×3 output map they gate (its input)."""

    def __init__(self, watched: List[GatedMultiScaleConv2d]) -> None:
        self.watched = watched
        self._handles: List[torch.utils.hooks.RemovableHandle] = []

    def _seen(self, m: GatedMultiScaleConv2d, gates: Tensor, out: Tensor) -> None:
        raise NotImplementedError

    def _hook_for(self, m: GatedMultiScaleConv2d) -> Callable[[nn.Module, Tuple[Tensor, ...], Tensor], None]:
        return lambda gate, inputs, gates: self._seen(m, gates, inputs[0])

    def __enter__(self: W) -> W:
        self._handles = [m.gate.register_forward_hook(self._hook_for(m)) for m in self.watched]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class RingMacs(_Watch):
    """While open, forward passes over ``segments`` record each sample's ring MACs per segment.

    ``take(n)`` returns K×n cumulative ring MACs of the last pass (sample n leaving at exit k
    ran the rings of segments 0..k) and clears them; ``None`` if the segments have no gate.
    """

    def __init__(self, segments: List[nn.Module]) -> None:
        per_segment = [gated_modules(s) for s in segments]
        super().__init__([m for mods in per_segment for m in mods])
        self.segment_of = {id(m): k for k, mods in enumerate(per_segment) for m in mods}
        self.rows: List[Optional[Tensor]] = [None] * len(segments)

    def _seen(self, m: GatedMultiScaleConv2d, gates: Tensor, out: Tensor) -> None:
        k = self.segment_of[id(m)]
        macs = gates.sum(1).double().cpu() * ring_macs(m.c_in, out)
        prev = self.rows[k]
        self.rows[k] = macs if prev is None else prev + macs

    def take(self, n: int) -> Optional[Tensor]:
        if not self.watched:
            return None
        out = torch.stack([r if r is not None else torch.zeros(n, dtype=torch.float64) for r in self.rows])
        self.rows = [None] * len(self.rows)
        return out.cumsum(0)


class GateUse(_Watch):
    """While open, each training forward of the gated convs in ``module`` appends to ``use``
    (mean ring MACs switched on per sample, ring MACs of all its gated channels) for
    ``training.gate_penalty`` (the supernet reports this itself; a static net is watched)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(gated_modules(module))
        self.use: List[Tuple[Tensor, float]] = []

    def _seen(self, m: GatedMultiScaleConv2d, gates: Tensor, out: Tensor) -> None:
        self.use.append(ring_use(gates, m.c_in, out))

    def take(self) -> List[Tuple[Tensor, float]]:
        use, self.use = self.use, []
        return use
