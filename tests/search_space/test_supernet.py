"""Supernet vs ``to_static``: same outputs at every exit, shared kernel centre, real savings,
no hidden state, and an early exit that really stops."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from exitnas.search_space import ArchConfig, SearchSpace, StaticNet, Supernet, build_space
from exitnas.search_space._ops import MultiScaleConv2d, split_channels

RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _space() -> SearchSpace:
    return build_space("msr-resnet", in_channels=3, num_classes=5, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=RATIOS, heads=("linear", "msdnet"))


def _randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every weight and BN statistic random, so equal outputs cannot come from zeros or identities
    (the last BN of each block starts at zero scale, which would hide the block's convs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for name, p in net.named_parameters():
            if "bn" in name:
                continue
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return _space()


@pytest.fixture(scope="module")
def archs(space: SearchSpace) -> list[ArchConfig]:
    rng = random.Random(1)
    sampled = [space.sample(rng) for _ in range(8)]
    return [space.largest(), space.smallest(), space.largest(head="msdnet"), space.smallest(all_exits=True)] + sampled


def _net(space: SearchSpace, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return _randomize(Supernet(space), seed).eval()  # type: ignore[return-value]


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- supernet == static ---------------------------------------------------------------------------
def test_static_equals_supernet_eval(space: SearchSpace, archs: list[ArchConfig]) -> None:
    net = _net(space)
    x = _x()
    with torch.no_grad():
        for arch in archs:
            static = net.to_static(arch)
            assert isinstance(static, StaticNet) and not static.training
            assert static.num_exits == arch.num_exits
            ys, yt = net(x, arch), static(x)
            assert len(ys) == len(yt) == arch.num_exits
            for k, (a, b) in enumerate(zip(ys, yt)):
                assert a.shape == (4, space.num_classes)
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{arch} exit {k}: {m}")


def test_static_equals_supernet_train_mode(space: SearchSpace, archs: list[ArchConfig]) -> None:
    x = _x(6, seed=1)
    for arch in archs:
        net = _net(space).train()
        static = net.to_static(arch)
        assert static.training
        with torch.no_grad():
            ys, yt = net(x, arch), static(x)
        for k, (a, b) in enumerate(zip(ys, yt)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{arch} exit {k}: {m}")
        # both updated the running statistics of the active channels the same way
        first = static.segments[0][0][1]  # the stem BN
        torch.testing.assert_close(net.stem_bn.running_mean[: first.num_features], first.running_mean)
        torch.testing.assert_close(net.stem_bn.running_var[: first.num_features], first.running_var)


def test_static_gradients_match_supernet_slices(space: SearchSpace) -> None:
    """Training a static subnet and the supernet on it moves the same weights the same way."""
    arch = space.sample(random.Random(5))
    net = _net(space).train()
    static = net.to_static(arch)
    x, y = _x(6, seed=2), torch.arange(6) % space.num_classes
    sum(nn.functional.cross_entropy(z, y) for z in net(x, arch)).backward()
    sum(nn.functional.cross_entropy(z, y) for z in static(x)).backward()
    stem = static.segments[0][0][0]  # the stem conv
    c_out, c_in = stem.weight.shape[:2]
    torch.testing.assert_close(net.stem_conv.weight.grad[:c_out, :c_in], stem.weight.grad, atol=1e-5, rtol=1e-4)
    # inactive channels of the stem get no gradient
    assert torch.count_nonzero(net.stem_conv.weight.grad[c_out:]) == 0


# -- the multi-scale conv ----------------------------------------------------------------------------
def _msconvs(static: StaticNet) -> list[MultiScaleConv2d]:
    return [m for m in static.modules() if isinstance(m, MultiScaleConv2d)]


def test_3x3_is_the_centre_of_the_5x5(space: SearchSpace) -> None:
    net = _net(space)
    for r in (0.25, 0.5, 0.75):
        arch = space.largest().replace(ratios=((r, r), (r, r)))
        static = net.to_static(arch)
        block = static.segments[0][1]  # first block of stage 0
        conv, w = block.conv1, net.stages[0][0].conv1.weight
        c_out, c_in = 8, 8
        c5, c3 = split_channels(c_out, r)
        assert conv.conv5.weight.shape == (c5, c_in, 5, 5) and conv.conv3.weight.shape == (c3, c_in, 3, 3)
        assert torch.equal(conv.conv5.weight, w[:c5, :c_in])
        assert torch.equal(conv.conv3.weight, w[c5:c_out, :c_in, 1:4, 1:4])
    # a channel that moves from the 3×3 part to the 5×5 part keeps its centre weights
    lo = net.to_static(space.largest().replace(ratios=((0.25,) * 2, (0.25,) * 2))).segments[0][1].conv1
    hi = net.to_static(space.largest().replace(ratios=((0.75,) * 2, (0.75,) * 2))).segments[0][1].conv1
    # channels 2..5 are 3×3 at ratio 0.25 and 5×5 at ratio 0.75
    assert torch.equal(lo.conv3.weight[:4], hi.conv5.weight[2:6, :, 1:4, 1:4])


def test_static_conv_sizes_follow_the_ratio(space: SearchSpace) -> None:
    net = _net(space)
    base = space.largest()

    def conv_elems(r: float) -> int:
        arch = base.replace(ratios=((r, r), (r, r)))
        return sum(p.numel() for c in _msconvs(net.to_static(arch)) for p in c.parameters())

    sizes = [conv_elems(r) for r in RATIOS]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    # all-3×3 holds exactly 9/25 of the all-5×5 weights
    assert sizes[0] * 25 == sizes[-1] * 9


def _flops(fn: object, *args: object) -> int:
    with FlopCounterMode(display=False) as fc:
        fn(*args)  # type: ignore[operator]
    return fc.get_total_flops()


def test_supernet_computes_only_active_channels(space: SearchSpace, archs: list[ArchConfig]) -> None:
    """The supernet's forward costs what the static subnet costs: nothing is computed and dropped."""
    net = _net(space)
    x = _x(2)
    with torch.no_grad():
        for arch in archs:
            assert _flops(net, x, arch) == _flops(net.to_static(arch), x), arch
        base = space.largest()
        by_ratio = [_flops(net, x, base.replace(ratios=((r, r), (r, r)))) for r in RATIOS]
        assert by_ratio == sorted(by_ratio) and len(set(by_ratio)) == len(RATIOS)
        assert _flops(net, x, base.replace(widths=(0.5, 0.5))) < _flops(net, x, base)


def test_narrower_width_gives_fewer_channels(space: SearchSpace) -> None:
    net = _net(space)
    x = _x(2)
    wide, narrow = space.largest(), space.largest().replace(widths=(0.5, 0.5))
    with torch.no_grad():
        for arch, chans in ((wide, (8, 8, 16, 16)), (narrow, (4, 4, 8, 8))):
            static = net.to_static(arch)
            h = x
            got = []
            for seg in static.segments:
                h = seg(h)
                got.append(h.shape[1])
            assert tuple(got) == chans
    n_wide = sum(p.numel() for p in net.to_static(wide).parameters())
    n_narrow = sum(p.numel() for p in net.to_static(narrow).parameters())
    assert n_narrow < n_wide


# -- no hidden state --------------------------------------------------------------------------------
def test_forward_leaves_no_state(space: SearchSpace) -> None:
    net = _net(space)
    rng = random.Random(3)
    a, b = space.sample(rng), space.sample(rng)
    assert a != b
    x = _x()
    before = _state(net)
    with torch.no_grad():
        ya = net(x, a)
        net(x, b)
        net.to_static(b)
        ya2 = net(x, a)
    for u, v in zip(ya, ya2):
        assert torch.equal(u, v)
    _assert_state_equal(before, _state(net))
    assert not net.training


def test_static_holds_copies(space: SearchSpace) -> None:
    """Changing the static module's weights never changes the supernet."""
    net = _net(space)
    before = _state(net)
    static = net.to_static(space.largest())
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    _assert_state_equal(before, _state(net))


def test_to_static_validates(space: SearchSpace) -> None:
    from exitnas._errors import UserError

    net = _net(space)
    with pytest.raises(UserError, match=r"widths\[0\]"):
        net.to_static(space.largest().replace(widths=(0.75, 1.0)))


# -- early exit ------------------------------------------------------------------------------------
def _hooked(static: StaticNet) -> list[int]:
    called: list[int] = []
    for k, seg in enumerate(static.segments):
        seg.register_forward_hook(lambda m, i, o, k=k: called.append(k))
    return called


def test_early_exit_stops_at_batch_size_1(space: SearchSpace) -> None:
    net = _net(space)
    arch = space.largest()
    static = net.to_static(arch)
    called = _hooked(static)
    head_called: list[int] = []
    for k, head in enumerate(static.heads):
        head.register_forward_hook(lambda m, i, o, k=k: head_called.append(k))
    x = _x(1)
    n = arch.num_exits
    logits, where = static.early_exit(x, torch.zeros(n - 1))
    assert where.tolist() == [0] and called == [0] and head_called == [0]
    with torch.no_grad():
        full = static(x)
    torch.testing.assert_close(logits, full[0])

    called.clear()
    logits, where = static.early_exit(x, torch.full((n - 1,), 1.01))
    assert where.tolist() == [n - 1] and called == list(range(n))
    torch.testing.assert_close(logits, full[-1], atol=0, rtol=0)


def test_early_exit_single_exit(space: SearchSpace) -> None:
    net = _net(space)
    static = net.to_static(space.smallest())
    x = _x(3)
    logits, where = static.early_exit(x, torch.zeros(0))
    assert where.tolist() == [0, 0, 0]
    with torch.no_grad():
        torch.testing.assert_close(logits, static(x)[-1])


@pytest.mark.parametrize("kind", ["maxprob", "entropy"])
def test_batched_early_exit_equals_per_sample(space: SearchSpace, kind: str) -> None:
    from exitnas._confidence import confidence

    net = _net(space, seed=3)
    static = net.to_static(space.largest())
    x = _x(16, seed=4)
    with torch.no_grad():
        conf = [confidence(z, kind) for z in static(x)]
    # thresholds between two samples' confidences, so about half the remaining ones leave at
    # each exit and no sample sits on a threshold (where rounding could tip it either way)
    thr = []
    for c in conf[:-1]:
        s = c.sort().values
        thr.append(float((s[11] + s[12]) / 2))
    thresholds = torch.tensor(thr)
    logits, where = static.early_exit(x, thresholds, kind)
    assert len(set(where.tolist())) >= 2, "the test needs samples leaving at different exits"
    for i in range(x.shape[0]):
        li, wi = static.early_exit(x[i : i + 1], thresholds, kind)
        assert wi.item() == where[i].item()
        torch.testing.assert_close(li[0], logits[i], atol=1e-5, rtol=1e-5)
    # and each sample left at its first exit whose confidence reached the threshold
    for i in range(x.shape[0]):
        first = next((k for k in range(len(thr)) if conf[k][i] >= thr[k]), len(thr))
        assert where[i].item() == first


@pytest.mark.parametrize("space_options", [{}, {"gate": "emg"}, {"heads": ("linear", "msdnet", "bof")},
                                           {"combine": "ztw", "ensemble": "geometric"}])
def test_a_supernet_on_another_device_makes_its_static_nets_there(space_options: dict) -> None:  # type: ignore[type-arg]
    # A CPU-only guard for issue 14's cost-counting crash: on "meta" (a device that is not the
    # CPU), a part built on the CPU fails to copy its weights or is left on the CPU.
    opts = {"channels": (8, 16), "depths": (1, 2), "widths": (0.5, 1.0), "ratios": (0.0, 0.5, 1.0), **space_options}
    space = build_space("msr-resnet", in_channels=3, num_classes=10, **opts)
    net = Supernet(space).to("meta")
    rng = random.Random(0)
    for arch in [space.largest(), space.smallest()] + [space.with_random_exits(space.sample(rng), rng)
                                                       for _ in range(4)]:
        static = net.to_static(arch)
        assert {t.device.type for t in (*static.parameters(), *static.buffers())} == {"meta"}


@pytest.mark.gpu
def test_static_net_lives_on_the_supernets_device(space: SearchSpace, archs: list[ArchConfig]) -> None:
    # Sliced modules are built fresh and deep-copied ones keep their device: every part of the
    # static net must follow the supernet (a mixed net broke cost counting of msdnet heads on CUDA).
    net = Supernet(space).cuda()
    for arch in archs:
        static = net.to_static(arch)
        devices = {t.device.type for t in (*static.parameters(), *static.buffers())}
        assert devices == {"cuda"}
