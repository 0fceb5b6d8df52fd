"""MACs and parameters of each exit's prefix (fvcore; one multiply-add = 1).

An early-exit graph traced end to end drops the heads whose output only feeds an exit
decision, so each prefix — the backbone up to exit k plus the heads of exits 1..k, which
all ran — is counted as its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

import torch
from fvcore.nn import FlopCountAnalysis
from torch import Tensor, nn

from exitnas.search_space import StaticNet, gated_modules, without_rings

__all__ = ["ExitCosts", "exit_costs"]


@dataclass(frozen=True)
class ExitCosts:
    """Cumulative cost of leaving at each exit.

    Attributes:
        macs: MACs of the prefix up to and including exit k (backbone + heads 0..k).
        params: Parameters of that prefix.
        backbone_macs: MACs of the backbone segments up to exit k alone.
        head_macs: MACs of head k alone.
    """

    macs: tuple[int, ...]
    params: tuple[int, ...]
    backbone_macs: tuple[int, ...]
    head_macs: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(getattr(self, k)) for k in ("macs", "params", "backbone_macs", "head_macs")}


class _Prefix(nn.Module):
    """Segments 0..k and heads 0..k of a static net, every head's output kept alive."""

    def __init__(self, net: StaticNet, k: int, heads: bool = True) -> None:
        super().__init__()
        self.segments = nn.ModuleList(net.segments[: k + 1])
        self.heads = nn.ModuleList(net.heads[: k + 1] if heads else [])

    def forward(self, x: Tensor) -> List[Tensor]:
        outs: List[Tensor] = []
        for i, seg in enumerate(self.segments):
            x = seg(x)
            if len(self.heads):
                outs.append(self.heads[i](x))
        return outs if outs else [x]


def _mean_handle(inputs: List[Any], outputs: List[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    n = 1
    for d in get_shape(inputs[0]):
        n *= d
    return n  # one add per input element


def _zero_handle(inputs: List[Any], outputs: List[Any]) -> int:
    return 0


def count_macs(module: nn.Module, *inputs: Tensor) -> int:
    """MACs of ``module(*inputs)``: convs, linears and pooling; BatchNorm is folded at deployment."""
    fca = FlopCountAnalysis(module, inputs)
    # A zero handle, not None: fvcore only consults its ignore list for ops that have no
    # handle, and batch_norm has a default one, so None would leave BN counted.
    fca.set_op_handle("aten::batch_norm", _zero_handle, "aten::mean", _mean_handle)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return int(fca.total())


@torch.no_grad()
def exit_costs(net: StaticNet, input_shape: tuple[int, int, int]) -> ExitCosts:
    """Per-exit cumulative MACs and parameters of ``net`` for one C×H×W input.

    A gated multi-scale conv counts what every sample pays (its 3×3 centres and the gate);
    the rings a sample switches on are counted per sample by the exit cache.
    """
    # fvcore counts a copy whose gated convs leave their rings out (see search_space._gate).
    return _exit_costs(without_rings(net) if gated_modules(net) else net, input_shape)


def _exit_costs(net: StaticNet, input_shape: tuple[int, int, int]) -> ExitCosts:
    was_training = net.training
    net.eval()
    x = torch.zeros(1, *input_shape, device=next(net.parameters()).device)
    macs, params, backbone, head = [], [], [], []
    feats = x
    seg_total = head_total = 0
    param_total = 0
    prev = x
    for k, step in enumerate(net.steps):
        # Each segment and head is traced as its own module on its real input, so no head
        # is dropped as dead code; summing them gives prefix k (see _Prefix for the check).
        seg_total += count_macs(step.segment, feats)
        feats, logits = step(feats, prev)
        head_k = count_macs(step.head, feats)
        if not step.first and any(True for _ in step.combiner.parameters()):
            # the combiner is part of exit k's head (only ZTW's cascade has MACs)
            head_k += count_macs(step.combiner, step.head(feats), prev)
        prev = logits
        param_total += sum(p.numel() for p in step.parameters())
        if net.ensemble is not None:  # Σ_{i≤k} w_ki · log p_i: (k + 1) · C multiply-adds
            classes = int(logits.shape[1])
            head_k += (k + 1) * classes
            param_total += k + 1 + classes  # row k of the weights, exit k's biases
        head_total += head_k
        backbone.append(seg_total)
        head.append(head_k)
        macs.append(seg_total + head_total)
        params.append(param_total)
    net.train(was_training)
    return ExitCosts(tuple(macs), tuple(params), tuple(backbone), tuple(head))
