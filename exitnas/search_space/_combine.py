"""How an exit's prediction builds on the exits before it (BoostNet, Zero Time Waste).

Exit k's head computes ``f_k`` from its features; a combiner turns it into the exit's
logits ``F_k`` given ``F_{k-1}``, the logits of the exit before it in the same subnet:

- ``none``: ``F_k = f_k`` (independent exits, MSDNet);
- ``boost``: ``F_k = f_k + detach(F_{k-1})`` (BoostNet, Yu et al.: each exit learns the
  residual the earlier exits left, without pushing its gradient into them);
- ``ztw``: ``F_k = f_k + W_k · detach(F_{k-1})``, a learned cascade of the previous exit's
  prediction (Zero Time Waste, Wołczyk et al. 2021), ``W_k`` starting at zero.

The first exit of a subnet has nothing before it and is never combined. Every combiner
is a module ``forward(logits, prev) -> logits`` that TorchScript compiles.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import Tensor, nn

from exitnas._registry import Registry

__all__ = ["COMBINERS", "Boost", "Cascade", "NoCombine"]


class NoCombine(nn.Module):
    """``F_k = f_k``."""

    def forward(self, logits: Tensor, prev: Tensor) -> Tensor:
        return logits

    def to_static(self) -> nn.Module:
        return NoCombine()


class Boost(nn.Module):
    """``F_k = f_k + detach(F_{k-1})``: exit k is trained on what the earlier exits got wrong."""

    def forward(self, logits: Tensor, prev: Tensor) -> Tensor:
        return logits + prev.detach()

    def to_static(self) -> nn.Module:
        return Boost()


class Cascade(nn.Module):
    """``F_k = f_k + W_k · detach(F_{k-1})``; ``W_k`` is zero at first, so training starts from ``none``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.mix = nn.Linear(num_classes, num_classes, bias=False)
        nn.init.zeros_(self.mix.weight)

    def forward(self, logits: Tensor, prev: Tensor) -> Tensor:
        return logits + self.mix(prev.detach())

    def to_static(self) -> nn.Module:
        return copy.deepcopy(self)


#: Exit combiners by name; each factory takes ``num_classes``.
COMBINERS: Registry[Callable[[int], nn.Module]] = Registry("exit combiner")
COMBINERS.register("none", "independent exits: each predicts from its own features (MSDNet)")(lambda n: NoCombine())
COMBINERS.register("boost", "BoostNet: exit k learns f_k + detach(F_{k-1}), a boosted residual")(lambda n: Boost())
COMBINERS.register("ztw", "Zero Time Waste cascade: f_k + W_k detach(F_{k-1}), W_k learned from 0")(Cascade)
