"""Exit heads: every registered head matches its static form; the BoF head's defining property."""

from __future__ import annotations

import pytest
import torch

from exitnas.search_space import HEADS, Supernet, build_space
from exitnas.search_space._heads import BoFHead


def test_bof_histogram_is_a_distribution_over_codewords() -> None:
    head = BoFHead(16, 10, codewords=8).eval()
    static = head.to_static(12).eval()
    x = torch.randn(5, 12, 4, 4)
    h = static.histogram(x)
    assert h.shape == (5, 8)
    torch.testing.assert_close(h.sum(dim=1), torch.ones(5))
    assert bool((h >= 0).all())
    # Where features occur does not matter: the histogram is invariant to moving positions around.
    perm = torch.randperm(16)
    moved = x.flatten(2)[:, :, perm].view_as(x)
    torch.testing.assert_close(static(moved), static(x))
    torch.testing.assert_close(head(x), static(x))
    # The assignment's sharpness is learned with the rest of the head.
    head(x).square().sum().backward()
    assert float(head.log_scale.grad.abs()) > 0 and float(head.fc.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_in_a_supernet_matches_its_static_form(head: str) -> None:
    torch.manual_seed(0)
    space = build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                        widths=(0.5, 1.0), ratios=(0.0, 1.0), heads=(head,))
    net = Supernet(space).eval()
    arch = space.largest()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for a, b in zip(net(x, arch), net.to_static(arch).eval()(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bof_head_compiles_and_is_counted() -> None:
    """Export scripts the early-exit model; the cost model counts the codeword conv and the classifier."""
    from exitnas.evaluators import exit_costs

    space = build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                        widths=(0.5, 1.0), ratios=(0.0, 1.0), heads=("bof",))
    net = Supernet(space).to_static(space.largest()).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, 8, 8)
    for a, b in zip(scripted(x), net(x)):
        torch.testing.assert_close(a, b)
    costs = exit_costs(net, (1, 8, 8))
    # head at stage 0 (8 channels at 8×8): 1×1 conv 8→32 per position, pooling of 32×64, linear 32→10
    assert costs.head_macs[0] >= 8 * 32 * 64 + 32 * 10
