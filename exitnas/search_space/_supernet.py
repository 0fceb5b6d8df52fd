"""The weight-sharing supernet: every subnet of a :class:`SearchSpace` in one module."""

from __future__ import annotations

from torch import Tensor, nn

from exitnas.search_space._arch import ArchConfig
from exitnas.search_space._combine import COMBINERS, NoCombine
from exitnas.search_space._ensemble import GeometricEnsemble
from exitnas.search_space._heads import HEADS
from exitnas.search_space._ops import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticMultiScaleConv2d,
)
from exitnas.search_space._routing import ROUTINGS
from exitnas.search_space._space import SearchSpace
from exitnas.search_space._static import ExitStep, StaticBlock, StaticNet

__all__ = ["ElasticBlock", "Supernet"]


class ElasticBlock(nn.Module):
    """Residual block of two multi-scale convs; width and 5×5 ratio chosen per call."""

    def __init__(self, max_in: int, max_out: int, stride: int, gated: bool = False) -> None:
        super().__init__()
        self.conv1 = ElasticMultiScaleConv2d(max_in, max_out, stride, gated)
        self.bn1 = ElasticBatchNorm2d(max_out)
        self.conv2 = ElasticMultiScaleConv2d(max_out, max_out, 1, gated)
        self.bn2 = ElasticBatchNorm2d(max_out)
        # Zero-init the last BN scale: each block starts as identity (Goyal et al.), which
        # keeps shallow and deep subnets of the supernet on one footing early in training.
        nn.init.zeros_(self.bn2.weight)
        self.downsample = stride != 1 or max_in != max_out
        if self.downsample:
            self.sc_conv = ElasticConv2d(max_in, max_out, 1, stride)
            self.sc_bn = ElasticBatchNorm2d(max_out)

    def forward(self, x: Tensor, c_out: int, ratio: float,
                gate_use: list[tuple[Tensor, float]] | None = None) -> Tensor:
        y = self.bn1(self.conv1(x, c_out, ratio, gate_use)).relu()
        y = self.bn2(self.conv2(y, c_out, ratio, gate_use))
        sc = self.sc_bn(self.sc_conv(x, c_out)) if self.downsample else x
        return (y + sc).relu()

    def to_static(self, c_in: int, c_out: int, ratio: float) -> StaticBlock:
        shortcut = None
        if self.downsample:
            shortcut = nn.Sequential(self.sc_conv.to_static(c_in, c_out), self.sc_bn.to_static(c_out))
        return StaticBlock(
            self.conv1.to_static(c_in, c_out, ratio),
            self.bn1.to_static(c_out),
            self.conv2.to_static(c_out, c_out, ratio),
            self.bn2.to_static(c_out),
            shortcut,
        )


class Supernet(nn.Module):
    """Elastic depth, width, multi-scale ratio and a head of every type at every block end.

    ``forward(x, arch)`` runs the subnet ``arch`` and returns the logits of its exits, in
    order. The arch is an argument, never state kept on the module, so evaluating one subnet
    cannot leak into the next (Once-for-All's ``set_active_subnet`` lesson).
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        c0 = space.channels[0]
        self.stem_conv = ElasticConv2d(space.in_channels, c0, 3)
        self.stem_bn = ElasticBatchNorm2d(c0)
        self.stages = nn.ModuleList()
        c_in = c0
        for c, stride in zip(space.channels, space.strides):
            blocks = nn.ModuleList(
                ElasticBlock(c_in if b == 0 else c, c, stride if b == 0 else 1, space.gate == "emg")
                for b in range(space.max_depth)
            )
            self.stages.append(blocks)
            c_in = c
        self.heads = nn.ModuleDict()
        for s, b in space.candidate_exits():
            self.heads[_key(s, b)] = nn.ModuleDict(
                {h: HEADS.get(h)(space.channels[s], space.num_classes) for h in space.head_choices}
            )
        # One combiner per candidate exit, used when an earlier exit precedes it in the subnet.
        self.combiners = nn.ModuleDict(
            {_key(s, b): COMBINERS.get(space.combine)(space.num_classes) for s, b in space.candidate_exits()}
        )

    def forward(self, x: Tensor, arch: ArchConfig, routing: str = "shared", beta: float = 0.5,
                gate_use: list[tuple[Tensor, float]] | None = None) -> list[Tensor]:
        """Logits of each of ``arch``'s exits (the arch is assumed validated by the caller).

        ``routing`` (see ``_routing``) decides where the gradients of a non-final exit's loss
        flow; the logits are the same for every routing. With ``space.gate: emg``,
        ``gate_use`` (if given) receives each gated conv's ring MACs switched on (see ``_gate``).
        """
        sp = self.space
        ROUTINGS.get(routing)  # an unknown routing fails here, even in a net with one exit
        x = self.stem_bn(self.stem_conv(x, sp.stem_channels(arch))).relu()
        outs: list[Tensor] = []
        prev = x  # unread: a subnet's first exit has nothing to build on
        for blk in sp.walk(arch):
            x = self.stages[blk.stage][blk.block](x, blk.c_out, blk.ratio, gate_use)
            if blk.head is not None:
                key = _key(blk.stage, blk.block)
                # The block ran above: the step's segment is the identity.
                step = ExitStep(nn.Identity(), self.heads[key][blk.head], self.combiners[key],
                                first=not outs, final=blk.exit == arch.num_exits - 1)
                x, prev = step(x, prev, routing, beta)
                outs.append(prev)
        return outs

    def to_static(self, arch: ArchConfig) -> StaticNet:
        """A plain ``nn.Module`` for ``arch`` holding copies of the inherited weights.

        Its segments run the blocks between consecutive exits, so an early-exit forward
        can stop after any of them.
        """
        self.space.validate(arch)
        sp = self.space
        c0 = sp.stem_channels(arch)
        stem = nn.Sequential(self.stem_conv.to_static(sp.in_channels, c0), self.stem_bn.to_static(c0), nn.ReLU())
        segments: list[list[nn.Module]] = [[stem]]
        heads: list[nn.Module] = []
        combiners: list[nn.Module] = []
        for blk in sp.walk(arch):
            segments[-1].append(self.stages[blk.stage][blk.block].to_static(blk.c_in, blk.c_out, blk.ratio))
            if blk.head is not None:
                key = _key(blk.stage, blk.block)
                heads.append(self.heads[key][blk.head].to_static(blk.c_out))
                combiners.append(self.combiners[key].to_static() if combiners else NoCombine())
                segments.append([])
        segments.pop()  # the final exit is the last block: nothing runs after it
        ensemble = GeometricEnsemble(len(heads), sp.num_classes) if sp.ensemble == "geometric" else None
        net = StaticNet([nn.Sequential(*seg) for seg in segments], heads, combiners, ensemble)
        # Sliced modules are built on the CPU and deep-copied ones keep the supernet's device:
        # the static net lives where the supernet does (a mixed net broke cost counting on CUDA).
        return net.to(self.stem_conv.weight.device).train(self.training)


def _key(stage: int, block: int) -> str:
    return f"s{stage}b{block}"
