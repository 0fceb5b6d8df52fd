"""Feature routing: Deep Feature Surgery's partition routes each loss's gradient to its own channels
and changes no forward value."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exitnas.search_space import Supernet, build_space
from exitnas.search_space._routing import dfs_route, partition_channels, shared_route


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.75])
def test_dfs_cross_terms_carry_no_gradient(beta: float) -> None:
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    k = partition_channels(8, beta)
    assert k == round(beta * 8)
    head_in, deeper_in = dfs_route(x, beta)
    torch.testing.assert_close(head_in, x)  # both read every channel...
    torch.testing.assert_close(deeper_in, x)
    (g_head,) = torch.autograd.grad(head_in.square().sum(), x)
    (g_deep,) = torch.autograd.grad(deeper_in.square().sum(), x)
    # ...but the exit's loss reaches only its β share, the deeper loss only the rest.
    assert bool((g_head[:, k:] == 0).all()) and bool((g_head[:, :k] != 0).all())
    assert bool((g_deep[:, :k] == 0).all()) and bool((g_deep[:, k:] != 0).all())
    (g_shared,) = torch.autograd.grad(shared_route(x, beta)[0].square().sum(), x)
    assert bool((g_shared != 0).all())


def test_partition_keeps_a_channel_on_each_side() -> None:
    assert partition_channels(4, 0.01) == 1
    assert partition_channels(4, 0.99) == 3


def test_dfs_supernet_has_the_same_logits_and_its_exit_loss_spares_the_deeper_channels() -> None:
    torch.manual_seed(0)
    space = build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                        widths=(1.0,), ratios=(0.0,), heads=("linear",))
    net = Supernet(space).train()
    torch.nn.init.ones_(net.stages[0][0].bn2.weight)  # zero-initialised: would block every gradient
    arch = space.largest()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    shared, dfs = net(x, arch), net(x, arch, "dfs", 0.5)
    for a, b in zip(shared, dfs):
        torch.testing.assert_close(a, b)
    # The first exit sits after stage 0's only block; with DFS its loss reaches only the first
    # half of that block's output channels, so the second conv's weights for the other half
    # (rows 4..7 of conv2) get no gradient from it.
    net.zero_grad()
    F.cross_entropy(net(x, arch, "dfs", 0.5)[0], y).backward()
    g = net.stages[0][0].conv2.weight.grad
    assert bool((g[4:] == 0).all()) and float(g[:4].abs().sum()) > 0
    net.zero_grad()
    F.cross_entropy(net(x, arch)[0], y).backward()
    assert float(net.stages[0][0].conv2.weight.grad[4:].abs().sum()) > 0


def test_static_net_trains_with_the_same_routing() -> None:
    """``exitnas retrain`` trains the exported subnet with DFS as the supernet was trained."""
    torch.manual_seed(0)
    space = build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                        widths=(1.0,), ratios=(0.0,), heads=("linear",), combine="ztw")
    sup = Supernet(space)
    torch.nn.init.ones_(sup.stages[0][0].bn2.weight)
    net = sup.to_static(space.largest()).train()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for a, b in zip(net(x), net(x, "dfs", 0.5)):
        torch.testing.assert_close(a, b)
    net.zero_grad()
    F.cross_entropy(net(x, "dfs", 0.5)[0], y).backward()
    g = net.segments[0][1].conv2.conv3.weight.grad  # segment 0: the stem, then stage 0's block
    assert bool((g[4:] == 0).all()) and float(g[:4].abs().sum()) > 0
    net.zero_grad()
    F.cross_entropy(net(x, "shared", 0.5)[0], y).backward()
    assert float(net.segments[0][1].conv2.conv3.weight.grad[4:].abs().sum()) > 0
