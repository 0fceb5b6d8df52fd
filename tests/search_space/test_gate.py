"""EMGNet's dynamic mode: the per-sample gate between a channel's 3×3 centre and its 5×5 kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exitnas.evaluators import ExitCache, ExitPolicy, anytime, build_exit_cache, exit_costs, oracle
from exitnas.runtime import deploy_early_exit
from exitnas.search_space import GatedMultiScaleConv2d, Supernet, build_space
from exitnas.search_space._gate import gate_mask
from exitnas.training import gate_penalty


def _gated(c_in: int = 3, c5: int = 2, c3: int = 5, seed: int = 0) -> GatedMultiScaleConv2d:
    torch.manual_seed(seed)
    m = GatedMultiScaleConv2d(c_in, c5, c3)
    with torch.no_grad():
        m.weight.normal_()
        if m.conv5 is not None:
            m.conv5.weight.normal_()
    return m.eval()


def _fill_theta(net: torch.nn.Module, value: float) -> None:
    """Every gate threshold of ``net`` set to ``value``."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("theta"):
                p.fill_(value)


def _space(**kw):  # type: ignore[no-untyped-def]
    opts = dict(channels=(8, 16), depths=(1, 2), widths=(0.5, 1.0), ratios=(0.0, 0.5), heads=("linear",), gate="emg")
    opts.update(kw)
    return build_space("msr-resnet", in_channels=3, num_classes=10, **opts)


def test_gate_off_is_the_shared_centre_and_gate_on_the_full_kernel() -> None:
    m = _gated()
    x = torch.randn(4, 3, 9, 9)
    five = F.conv2d(x, m.conv5.weight, None, 1, 2)  # type: ignore[union-attr]
    with torch.no_grad():
        m.theta.fill_(1e9)  # every gate off: the 3×3 channels are exactly the 5×5 kernels' centres
        torch.testing.assert_close(m(x), torch.cat([five, F.conv2d(x, m.weight[:, :, 1:4, 1:4], None, 1, 1)], 1))
        m.theta.fill_(-1e9)  # every gate on: the full 5×5 kernels
        torch.testing.assert_close(m(x), torch.cat([five, F.conv2d(x, m.weight, None, 1, 2)], 1), atol=1e-5, rtol=1e-5)


def test_each_sample_gets_its_own_kernels_in_a_batch() -> None:
    m = _gated()
    x = torch.randn(6, 3, 9, 9) * torch.linspace(0.2, 3, 6).view(6, 1, 1, 1)  # gates differ by sample
    with torch.no_grad():
        y3 = F.conv2d(x, m.weight[:, :, 1:4, 1:4], None, 1, 1)
        m.theta.copy_(y3.abs().mean((0, 2, 3)))  # thresholds in the middle of the batch
        g = gate_mask(y3, m.theta, False)
        assert 0 < g.sum() < g.numel()
        want = torch.where(g[:, :, None, None] > 0, F.conv2d(x, m.weight, None, 1, 2), y3)
        torch.testing.assert_close(m(x)[:, 2:], want, atol=1e-5, rtol=1e-5)
        alone = torch.cat([m(x[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(m(x), alone, atol=1e-5, rtol=1e-5)


def test_supernet_and_static_gated_subnets_agree() -> None:
    torch.manual_seed(0)
    space = _space()
    net = Supernet(space).eval()
    x = torch.randn(5, 3, 16, 16)
    for arch in (space.largest(), space.smallest(), space.sample(__import__("random").Random(3))):
        static = net.to_static(arch).eval()
        for a, b in zip(net(x, arch), static(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gate_gradient_reaches_the_thresholds_and_the_cost_turns_gates_off() -> None:
    torch.manual_seed(0)
    space = _space()
    net = Supernet(space).train()
    arch = space.largest()
    x = torch.randn(8, 3, 16, 16)
    opt = torch.optim.SGD([p for n, p in net.named_parameters() if n.endswith("theta")], lr=5.0)
    use = []
    for step in range(30):
        gate_use: list = []
        net(x, arch, gate_use=gate_use)
        loss = gate_penalty(gate_use)
        use.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        if step == 0:  # through the straight-through sigmoid, every active threshold gets a gradient
            theta = net.stages[0][0].conv1.theta
            assert theta.grad is not None and bool((theta.grad[theta.shape[0] // 2 :] != 0).all())
            assert bool((theta.grad[: theta.shape[0] // 2] == 0).all())  # the static 5×5 half has no gate
        opt.step()
    assert use[0] == pytest.approx(1.0)  # θ = 0: every gate starts on
    assert use[-1] < 0.2


def _hand_ring_macs(static: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """K×N cumulative ring MACs counted by running each sample alone through each segment."""
    rows = []
    for i in range(len(x)):
        xi, total, per_exit = x[i : i + 1], 0.0, []
        for seg in static.segments:
            # each gated conv's input, to count its gates by hand
            inputs: dict = {}
            hs = [m.register_forward_pre_hook(lambda mod, inp, d=inputs: d.__setitem__(mod, inp[0]))
                  for m in seg.modules() if isinstance(m, GatedMultiScaleConv2d)]
            xi = seg(xi)
            for h in hs:
                h.remove()
            for m, inp in inputs.items():
                y3 = F.conv2d(inp, m.weight[:, :, 1:4, 1:4], None, m.stride, 1)
                on = int((y3.abs().mean((2, 3)) > m.theta).sum())
                total += on * m.c_in * 16 * y3.shape[2] * y3.shape[3]
            per_exit.append(total)
        rows.append(per_exit)
    return np.array(rows).T


def test_exit_cache_counts_each_samples_rings() -> None:
    torch.manual_seed(0)
    space = _space(ratios=(0.0,))
    net = Supernet(space).eval()
    arch = space.largest()
    _fill_theta(net, 0.3)  # thresholds that switch some gates on and some off
    static = net.to_static(arch).eval()
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 10, (12,))
    costs = exit_costs(static, (3, 16, 16))
    cache = build_exit_cache(static, arch, images, labels, (0.5,) * 3, (0.25,) * 3, costs.macs, batch_size=5)
    assert cache.extra_macs is not None and cache.extra_macs.shape == (arch.num_exits, 12)
    x = (images.float() / 255 - 0.5) / 0.25
    np.testing.assert_allclose(cache.extra_macs, _hand_ring_macs(static, x))
    assert 0 < cache.extra_macs[-1].min() < cache.extra_macs[-1].max()  # the cost depends on the sample

    # Every gate on: base + rings = the static all-5×5 subnet's MACs, plus the gates' means.
    _fill_theta(net, -1e9)
    on = net.to_static(arch).eval()
    full = build_exit_cache(on, arch, images, labels, (0.5,) * 3, (0.25,) * 3, costs.macs)
    five = _space(ratios=(1.0,), gate="none")
    static5 = Supernet(five).to_static(five.largest()).eval()
    adds = [0.0] * on.num_exits  # the gates' means: one add per gated output element
    x = torch.zeros(1, 3, 16, 16)
    for k, seg in enumerate(on.segments):
        def count(mod, i, y, k=k):  # type: ignore[no-untyped-def]
            adds[k] += y[0, -mod.weight.shape[0] :].numel()

        hs = [m.register_forward_hook(count) for m in seg.modules() if isinstance(m, GatedMultiScaleConv2d)]
        x = seg(x)
        for h in hs:
            h.remove()
    gate_adds = np.cumsum(adds)
    base = np.asarray(exit_costs(on, (3, 16, 16)).backbone_macs)
    np.testing.assert_allclose(base + full.extra_macs[:, 0] - gate_adds,
                               exit_costs(static5, (3, 16, 16)).backbone_macs)
    assert np.all(full.extra_macs == full.extra_macs[:, :1])


def test_policy_and_protocols_charge_each_sample_its_own_macs() -> None:
    from exitnas.search_space import ArchConfig

    arch = ArchConfig("msr-resnet", (2,), (1.0,), ((0.0, 0.0),), ((0, 0), (0, 1)), ("linear", "linear"))
    conf = np.array([[0.9, 0.2, 0.6], [1.0, 1.0, 1.0]], dtype=np.float32)
    ok = np.array([[1, 0, 0], [1, 1, 1]], dtype=bool)
    extra = np.array([[10.0, 0.0, 30.0], [15.0, 40.0, 35.0]])
    cache = ExitCache(arch, conf, ok, np.array([100.0, 300.0]), extra_macs=extra)
    # t = 0.5: samples 0 and 2 leave at exit 0 (100+10, 100+30), sample 1 at exit 1 (300+40).
    r = ExitPolicy(cache).evaluate([[0.5]])
    assert r.expected_cost[0] == pytest.approx((110 + 130 + 340) / 3)
    assert r.accuracy[0] == pytest.approx(2 / 3)
    many = ExitPolicy(cache).evaluate(np.linspace(0, 1, 100)[:, None])  # "auto" with per-sample costs
    assert many.expected_cost[50] == pytest.approx(float(ExitPolicy(cache).evaluate([[0.505]]).expected_cost[0]))
    with pytest.raises(ValueError, match="dense"):
        ExitPolicy(cache).evaluate([[0.5]], method="bitset")
    assert [p.macs for p in anytime(cache)] == pytest.approx([100 + 40 / 3, 300 + 90 / 3])
    assert oracle(cache).macs == pytest.approx((110 + 340 + 335) / 3)
    # Costs given explicitly (latencies) replace MACs, per-sample extras and all.
    assert ExitPolicy(cache, [1.0, 2.0]).evaluate([[0.5]]).expected_cost[0] == pytest.approx(4 / 3)


def test_cache_keeps_extra_macs_on_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from exitnas.search_space import ArchConfig

    arch = ArchConfig("msr-resnet", (1,), (1.0,), ((0.0,),), ((0, 0),), ("linear",))
    c = ExitCache(arch, np.ones((1, 2), np.float32), np.ones((1, 2), bool), np.array([5.0]),
                  extra_macs=np.array([[1.0, 2.0]]))
    c.save(tmp_path / "c.npz")
    np.testing.assert_array_equal(ExitCache.load(tmp_path / "c.npz").extra_macs, [[1.0, 2.0]])


def test_deployed_gated_net_exits_as_the_eager_one(mid_gap) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    space = _space()
    net = Supernet(space).eval()
    _fill_theta(net, 0.3)
    arch = space.largest()
    static = net.to_static(arch).eval()
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        conf = [F.softmax(z, 1).max(1).values for z in static(x)]
    thr = [float(mid_gap(c)) for c in conf[:-1]]
    deployed = deploy_early_exit(static, thr)
    want_logits, want_exit = static.early_exit(x, torch.tensor(thr))
    got_logits, got_exit = deployed(x)
    assert torch.equal(got_exit, want_exit)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    for i in range(len(x)):
        lo, ex = deployed(x[i : i + 1])
        assert int(ex) == int(want_exit[i])
        torch.testing.assert_close(lo[0], want_logits[i], atol=1e-4, rtol=1e-4)


def test_a_trace_of_a_gated_net_follows_each_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ONNX export traces: the gate must not be baked in for the example input."""
    torch.manual_seed(0)
    space = _space()
    net = Supernet(space).eval()
    _fill_theta(net, 0.3)
    static = net.to_static(space.largest()).eval()
    quiet, loud = torch.zeros(1, 3, 16, 16), torch.randn(4, 3, 16, 16) * 3
    class Last(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[-1]

    with torch.no_grad():
        traced = torch.jit.trace(Last(static), quiet, check_trace=False)
        torch.testing.assert_close(traced(loud), static(loud)[-1], atol=1e-4, rtol=1e-4)
        want = static(loud)[-1].numpy()
    ort = pytest.importorskip("onnxruntime")  # installed with the dev extras
    torch.onnx.export(Last(static), (quiet,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": loud.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_watchers_and_the_cost_count_leave_the_gated_convs_as_they_were() -> None:
    """No attribute is set on a gated conv (the gates reach a watcher as its Gate's output),
    and the MAC count traces a ring-free copy."""
    from exitnas.search_space import GateUse, RingMacs, gated_modules

    torch.manual_seed(0)
    space = _space(ratios=(0.0,))
    static = Supernet(space).to_static(space.largest()).eval()
    convs = gated_modules(static)
    before = [dict(vars(m)) for m in convs]
    with RingMacs(list(static.segments)) as rings, GateUse(static) as use:
        static(torch.randn(3, 3, 16, 16))
        assert rings.take(3) is not None and len(use.take()) == len(convs)
    exit_costs(static, (3, 16, 16))
    for m, b in zip(convs, before):
        assert vars(m).keys() == b.keys()
        assert not m.gate._forward_hooks
    assert gated_modules(static) == convs
