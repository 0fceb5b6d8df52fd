"""The deployed runtime: folded BatchNorm, channels-last, frozen TorchScript gives the same
outputs as the plain subnet, leaves the subnet untouched, and really stops early."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exitnas.runtime import deploy, deploy_early_exit, fold_batchnorm
from exitnas.search_space import ArchConfig, Supernet, build_space

TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def space():  # type: ignore[no-untyped-def]
    # Ratio 0.5 makes multi-scale convs with both a 5×5 and a 3×3 part (BN split between them).
    return build_space("msr-resnet", in_channels=3, num_classes=10, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 0.5, 1.0), heads=("linear", "msdnet", "bof"))


@pytest.fixture(scope="module")
def supernet(space):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = Supernet(space).eval()
    with torch.no_grad():  # BN statistics and affine far from identity, so a wrong fold shows
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net


def _arch(space) -> ArchConfig:  # type: ignore[no-untyped-def]
    return ArchConfig("msr-resnet", (2, 2), (1.0, 0.5), ((0.5, 1.0), (0.0, 0.5)),
                      ((0, 0), (0, 1), (1, 0), (1, 1)), ("linear", "msdnet", "bof", "msdnet"))


def test_fold_removes_every_batchnorm_and_keeps_outputs(space, supernet) -> None:  # type: ignore[no-untyped-def]
    net = supernet.to_static(space.validate(_arch(space))).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(folded(x), net(x)):
            torch.testing.assert_close(a, b, **TOL)
    # The subnet itself is untouched: same modules, same weights, still its BatchNorms.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("which", ["smallest", "largest", "arch"])
def test_deployed_net_matches_at_every_exit(space, supernet, which: str) -> None:  # type: ignore[no-untyped-def]
    arch = {"smallest": space.smallest(), "largest": space.largest(), "arch": _arch(space)}[which]
    net = supernet.to_static(space.validate(arch)).eval()
    deployed = deploy(net)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        got, ref = deployed(x), net(x)
    assert len(got) == len(ref) == arch.num_exits
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **TOL)
    assert "batch_norm" not in deployed.code  # folded (and frozen: no submodule calls left)


def test_deployed_early_exit_matches_the_plain_one(space, supernet, mid_gap) -> None:  # type: ignore[no-untyped-def]
    net = supernet.to_static(space.validate(_arch(space))).eval()
    x = torch.rand(64, 3, 16, 16)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    xn = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        conf = torch.stack([torch.softmax(z, -1).max(-1).values for z in net(xn)])
        thresholds = torch.stack([mid_gap(c) for c in conf[:-1]])  # about half leave at each exit
        ref_logits, ref_exit = net.early_exit(xn, thresholds)
        model = deploy_early_exit(net, thresholds.tolist(), mean=mean, std=std)
        got_logits, got_exit = model(x)  # a batch: StaticNet.early_exit's bookkeeping
        # One image at a time: the runtime's own loop for batch size 1, same exits and logits.
        one = [model(x[i : i + 1]) for i in range(len(x))]
    assert len(set(ref_exit.tolist())) == 4  # every exit is used
    assert torch.equal(got_exit, ref_exit)
    torch.testing.assert_close(got_logits, ref_logits, **TOL)
    assert torch.equal(torch.cat([e for _, e in one]), ref_exit)
    torch.testing.assert_close(torch.cat([z for z, _ in one]), ref_logits, **TOL)


def test_deployed_early_exit_stops_at_batch_size_one(space, supernet) -> None:  # type: ignore[no-untyped-def]
    """Frozen, the model keeps its data-dependent control flow: leaving at exit 0 runs only
    the convs before exit 0 (counted by the profiler, as hooks are gone once frozen)."""
    from torch.profiler import ProfilerActivity, profile

    net = supernet.to_static(space.validate(_arch(space))).eval()
    x = torch.rand(1, 3, 16, 16)

    def convs(thresholds: list[float]) -> tuple[int, int]:
        model = deploy_early_exit(net, thresholds)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            _, exit_idx = model(x)
        return int(exit_idx), sum(e.count for e in prof.key_averages() if e.key == "aten::conv2d")

    def count(*modules: nn.Module) -> int:
        return sum(isinstance(m, nn.Conv2d) for mod in modules for m in mod.modules())

    assert convs([0.0, 0.0, 0.0]) == (0, count(net.segments[0], net.heads[0]))
    assert convs([2.0, 2.0, 2.0]) == (3, count(net))
    assert count(net.segments[0], net.heads[0]) < count(net) / 3
