"""exit_costs: a count by hand, whole-prefix counts, and monotonicity."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import nn

from exitnas.evaluators import count_macs, exit_costs
from exitnas.evaluators._cost import _Prefix
from exitnas.search_space import ArchConfig, SearchSpace, Supernet


def conv(c_out: int, c_in: int, k: int, hw: int) -> int:
    """MACs of a k×k conv with a square hw×hw output."""
    return c_out * c_in * k * k * hw * hw


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    from exitnas.search_space import build_space

    return build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 0.5, 1.0), heads=("linear", "msdnet"))


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    torch.manual_seed(0)
    return Supernet(space).eval()


HAND_ARCH = ArchConfig("msr-resnet", depths=(2, 2), widths=(1.0, 0.5), ratios=((0.5, 1.0), (0.0, 0.5)),
                       exits=((0, 0), (1, 0), (1, 1)), heads=("msdnet", "linear", "msdnet"))


def test_costs_by_hand(supernet: Supernet) -> None:
    # 8×8 input; stage 0 runs 8 channels at 8×8, stage 1 runs round(0.5·16) = 8 at 4×4.
    stem = conv(8, 1, 3, 8)
    b00 = 2 * (conv(4, 8, 5, 8) + conv(4, 8, 3, 8))  # ratio 0.5: 4 outputs 5×5, 4 outputs 3×3
    b01 = 2 * conv(8, 8, 5, 8)  # ratio 1: all 5×5
    b10 = conv(8, 8, 3, 4) + conv(8, 8, 3, 4) + conv(8, 8, 1, 4)  # ratio 0, stride 2, 1×1 shortcut
    b11 = 2 * (conv(4, 8, 5, 4) + conv(4, 8, 3, 4))
    # MSDNet head keeps the stage's full width (8 on stage 0, 16 on stage 1): two stride-2
    # 3×3 convs, mean pool (one add per input element), linear
    head0 = conv(8, 8, 3, 4) + conv(8, 8, 3, 2) + 8 * 2 * 2 + 8 * 10
    head1 = 8 * 4 * 4 + 8 * 10  # linear head: pool + linear
    head2 = conv(16, 8, 3, 2) + conv(16, 16, 3, 1) + 16 * 1 * 1 + 16 * 10
    backbone = [stem + b00, stem + b00 + b01 + b10, stem + b00 + b01 + b10 + b11]
    heads = [head0, head1, head2]

    net = supernet.to_static(HAND_ARCH)
    c = exit_costs(net, (1, 8, 8))
    assert list(c.backbone_macs) == backbone
    assert list(c.head_macs) == heads
    assert list(c.macs) == [backbone[0] + head0, backbone[1] + head0 + head1, backbone[2] + sum(heads)]
    assert c.params[-1] == sum(p.numel() for p in net.parameters())
    assert c.to_dict()["macs"] == list(c.macs)


def test_each_prefix_counted_whole_agrees(supernet: Supernet, space: SearchSpace) -> None:
    rng = random.Random(0)
    archs = [HAND_ARCH, space.largest(), space.smallest(), space.largest(head="msdnet")]
    archs += [space.sample(rng) for _ in range(3)]
    x = torch.zeros(1, 1, 8, 8)
    for arch in archs:
        net = supernet.to_static(arch).eval()
        c = exit_costs(net, (1, 8, 8))
        for k in range(arch.num_exits):
            assert count_macs(_Prefix(net, k), x) == c.macs[k], (arch, k)
            assert count_macs(_Prefix(net, k, heads=False), x) == c.backbone_macs[k], (arch, k)
        assert count_macs(net, x) == c.macs[-1]  # the plain forward returns every exit's logits


def test_macs_increase_along_exits(supernet: Supernet, space: SearchSpace) -> None:
    rng = random.Random(1)
    for _ in range(5):
        arch = space.with_all_exits(space.sample(rng), rng)
        c = exit_costs(supernet.to_static(arch), (1, 8, 8))
        assert all(a < b for a, b in zip(c.macs, c.macs[1:]))
        assert all(a < b for a, b in zip(c.backbone_macs, c.backbone_macs[1:]))
        assert all(a < b for a, b in zip(c.params, c.params[1:]))


def test_larger_ratio_costs_more(supernet: Supernet, space: SearchSpace) -> None:
    base = space.largest()
    costs = []
    for r in space.ratio_choices:
        arch = base.replace(ratios=tuple((r,) * d for d in base.depths))
        costs.append(exit_costs(supernet.to_static(arch), (1, 8, 8)))
    for lo, hi in zip(costs, costs[1:]):
        assert all(a < b for a, b in zip(lo.macs, hi.macs))
    # one block's ratio alone raises every later exit's cost, and leaves earlier ones alone
    one = base.replace(ratios=((1.0, 0.5), (1.0, 1.0)))
    c = exit_costs(supernet.to_static(one), (1, 8, 8))
    assert c.macs[0] == costs[-1].macs[0] and c.macs[1] < costs[-1].macs[1]


def test_count_macs_rules() -> None:
    x = torch.zeros(1, 3, 6, 6)
    conv_bn = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU()).eval()
    assert count_macs(conv_bn, x) == conv(5, 3, 3, 6)  # BN folds into the conv, ReLU is free

    class Pool(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.mean(dim=(2, 3))

    assert count_macs(Pool(), x) == 3 * 6 * 6
    assert count_macs(nn.Linear(7, 4), torch.zeros(1, 7)) == 28


def test_exit_costs_restores_mode(supernet: Supernet) -> None:
    net: Any = supernet.to_static(HAND_ARCH).train()
    exit_costs(net, (1, 8, 8))
    assert net.training
