"""BN recalibration: the supernet is left bit-identical, and the statistics are the features'."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import nn

from exitnas.data import ImageSplits, normalize
from exitnas.evaluators import recalibrate_bn, recalibrated_subnet
from exitnas.search_space import SearchSpace, StaticNet, Supernet


@pytest.fixture(scope="module")
def supernet(space: SearchSpace, splits: ImageSplits) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(space)
    for m in net.modules():  # non-trivial BN parameters, so copies that alias would show
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    # some running statistics of the supernet's own, unlike the fresh 0 / 1
    with torch.no_grad():
        net.train()(normalize(splits.train_x[:64], splits.mean, splits.std), space.largest(head="msdnet"))
    return net.eval()


def _snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict(keep_vars=True).items()}


def _bns(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def test_supernet_left_bit_identical(supernet: Supernet, space: SearchSpace, splits: ImageSplits) -> None:
    before = _snapshot(supernet)
    archs = [space.largest(head="msdnet"), space.smallest(), space.largest().replace(widths=(0.5, 0.5))]
    for arch in archs:
        net = recalibrated_subnet(supernet, arch, splits.train_x[:100], splits.mean, splits.std, batch_size=50)
        assert not net.training
        after = supernet.state_dict(keep_vars=True)
        assert after.keys() == before.keys()
        for k, v in before.items():
            assert torch.equal(after[k], v), k
    assert not supernet.training


def test_stem_bn_is_true_mean_and_var(supernet: Supernet, space: SearchSpace, splits: ImageSplits) -> None:
    images = splits.train_x[:200]
    net = recalibrated_subnet(supernet, space.largest(head="msdnet"), images, splits.mean, splits.std,
                              batch_size=len(images))  # one batch
    stem_conv, stem_bn = net.segments[0][0][0], net.segments[0][0][1]
    with torch.no_grad():
        f = stem_conv(normalize(images, splits.mean, splits.std))
    # PyTorch's running_var is the unbiased estimate
    assert torch.allclose(stem_bn.running_mean, f.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert torch.allclose(stem_bn.running_var, f.var(dim=(0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
    assert stem_bn.momentum == 0.1 and not stem_bn.training


def _bn_inputs(net: StaticNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Input of every BN of ``net`` (in ``_bns`` order) in a train-mode forward, as recalibration sees it."""
    net = copy.deepcopy(net).train()
    bns = _bns(net)
    seen: dict[int, torch.Tensor] = {}

    def keep(j: int) -> Callable[..., None]:
        def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen[j] = inputs[0].detach()  # returns None: the output is left as it is

        return hook

    hooks = [bn.register_forward_hook(keep(j)) for j, bn in enumerate(bns)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return [seen[j] for j in range(len(bns))]


def test_every_bn_is_true_mean_and_var_one_batch(supernet: Supernet, space: SearchSpace,
                                                 splits: ImageSplits) -> None:
    images = splits.train_x[:150]
    arch = space.largest(head="msdnet").replace(heads=("msdnet", "linear", "msdnet", "msdnet"))
    net = recalibrated_subnet(supernet, arch, images, splits.mean, splits.std, batch_size=1000)
    feats = _bn_inputs(net, normalize(images, splits.mean, splits.std))
    bns = _bns(net)
    assert len(feats) == len(bns) > 10  # block, shortcut and MSDNet head BNs all took part
    for bn, f in zip(bns, feats):
        assert torch.allclose(bn.running_mean, f.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
        assert torch.allclose(bn.running_var, f.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_several_batches_average_and_order_does_not_matter(supernet: Supernet, space: SearchSpace,
                                                           splits: ImageSplits) -> None:
    images = splits.train_x[:200]
    arch = space.smallest(head="msdnet")
    a = supernet.to_static(arch)
    recalibrate_bn(a, images, splits.mean, splits.std, batch_size=50)
    b = supernet.to_static(arch)
    recalibrate_bn(b, torch.cat([images[150:], images[:150]]), splits.mean, splits.std, batch_size=50)
    for x, y in zip(_bns(a), _bns(b)):
        assert torch.allclose(x.running_mean, y.running_mean, atol=1e-5)
        assert torch.allclose(x.running_var, y.running_var, rtol=1e-4, atol=1e-5)
    # equal batches: the stem's mean is the mean over all 200 images
    with torch.no_grad():
        f = a.segments[0][0][0](normalize(images, splits.mean, splits.std))
    assert torch.allclose(a.segments[0][0][1].running_mean, f.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_recalibrate_restores_momentum_and_mode() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.3)).eval()
    recalibrate_bn(net, torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8), (0.5,), (0.25,), batch_size=4)
    bn = net[1]
    assert bn.momentum == 0.3 and not bn.training
    assert int(bn.num_batches_tracked) == 3
