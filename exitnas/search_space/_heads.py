"""Exit heads: an elastic form in the supernet, a plain form after ``to_static``."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor, nn

from exitnas._registry import Registry
from exitnas.search_space._ops import ElasticBatchNorm2d, ElasticConv2d

__all__ = ["HEADS", "BoFHead", "ElasticHead", "LinearHead", "MSDNetHead"]


class ElasticHead(nn.Module):
    """Base of an exit head whose input channels are a prefix of ``max_in``."""

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def to_static(self, c_in: int) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError


#: Exit head types by name; each factory takes ``(max_in, num_classes)``.
HEADS: Registry[Callable[[int, int], ElasticHead]] = Registry("exit head")


class _Pool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


@HEADS.register("linear", "global average pool + linear classifier (cheap)")
class LinearHead(ElasticHead):
    def __init__(self, max_in: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(max_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        return nn.functional.linear(x.mean(dim=(2, 3)), self.fc.weight[:, :c], self.fc.bias)

    def to_static(self, c_in: int) -> nn.Module:
        fc = nn.Linear(c_in, self.fc.out_features, device=self.fc.weight.device)
        fc.weight.data.copy_(self.fc.weight.data[:, :c_in])
        fc.bias.data.copy_(self.fc.bias.data)
        return nn.Sequential(_Pool(), fc)


@HEADS.register("msdnet", "MSDNet's conv head: two 3x3 stride-2 convs, pool, linear")
class MSDNetHead(ElasticHead):
    def __init__(self, max_in: int, num_classes: int) -> None:
        super().__init__()
        ch = max_in  # MSDNet keeps the head as wide as the features it reads
        self.conv1 = ElasticConv2d(max_in, ch, 3, stride=2)
        self.bn1 = ElasticBatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.fc = nn.Linear(ch, num_classes)
        self.ch = ch

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x, self.ch)).relu()
        x = self.bn2(self.conv2(x)).relu()
        return self.fc(x.mean(dim=(2, 3)))

    def to_static(self, c_in: int) -> nn.Module:

        return nn.Sequential(
            self.conv1.to_static(c_in, self.ch),
            self.bn1.to_static(self.ch),
            nn.ReLU(),
            copy.deepcopy(self.conv2),
            copy.deepcopy(self.bn2),
            nn.ReLU(),
            _Pool(),
            copy.deepcopy(self.fc),
        )


def _bof(similarity: Tensor, log_scale: Tensor) -> Tensor:
    """Soft assignment (softmax of scaled similarities over codewords) → histogram, the input
    of the head's linear classifier.

    The histogram is scaled by the number of codewords (mean 1 per codeword instead of 1/K),
    so the classifier learns at the pace of the other heads instead of K times slower.
    """
    assign = torch.softmax(similarity * log_scale.exp(), dim=1)  # N×K×H×W, sums to 1 over K
    return assign.mean(dim=(2, 3)) * similarity.shape[1]


class _BoFStatic(nn.Module):
    """Plain bag-of-features head: 1×1 codeword similarities → soft assignment → histogram → linear."""

    def __init__(self, codewords: nn.Conv2d, fc: nn.Linear, log_scale: Tensor) -> None:
        super().__init__()
        self.codewords, self.fc = codewords, fc
        self.log_scale = nn.Parameter(log_scale.detach().clone())

    def histogram(self, x: Tensor) -> Tensor:
        """N×K: the share of positions assigned to each codeword (each row sums to 1)."""
        return _bof(self.codewords(x), self.log_scale) / self.codewords.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(_bof(self.codewords(x), self.log_scale))


@HEADS.register("bof", "bag-of-features head (Passalis et al. 2020): codewords, soft assignment, histogram, linear")
class BoFHead(ElasticHead):
    """Each position is softly assigned to ``codewords`` learned by a 1×1 conv; the exit classifies
    the histogram of assignments, a summary that is cheap and invariant to where features occur.
    The assignment's sharpness (1 / temperature) is learned, starting at ``1 / temperature``."""

    def __init__(self, max_in: int, num_classes: int, codewords: int = 32, temperature: float = 0.5) -> None:
        super().__init__()
        self.codewords = ElasticConv2d(max_in, codewords, 1, bias=True)
        self.fc = nn.Linear(codewords, num_classes)
        self.log_scale = nn.Parameter(torch.tensor(-math.log(temperature)))
        self.k = codewords

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(_bof(self.codewords(x, self.k), self.log_scale))

    def to_static(self, c_in: int) -> nn.Module:
        return _BoFStatic(self.codewords.to_static(c_in, self.k), copy.deepcopy(self.fc), self.log_scale)
