"""Exit combiners (BoostNet boosting, ZTW cascading): the detached term carries no gradient,
the static form and the early-exit runtime match the supernet, the cascade is counted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exitnas.evaluators import exit_costs
from exitnas.search_space import COMBINERS, Supernet, build_space
from exitnas.search_space._supernet import _key


def _space(combine: str):  # type: ignore[no-untyped-def]
    return build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 1.0), heads=("linear",), combine=combine)


def _net(combine: str) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(_space(combine))
    for p in net.combiners.parameters():  # a cascade starts at zero; make it do something
        torch.nn.init.normal_(p, std=0.3)
    return net


def _raw_heads(net: Supernet, x: torch.Tensor, arch) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """f_k: each head on its own features, no combining (the ``none`` supernet with the same weights)."""
    plain = Supernet(_space("none"))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("combiners.")})
    return plain.train(net.training)(x, arch)


def test_boost_adds_the_previous_exits_logits_and_passes_them_no_gradient() -> None:
    net = _net("boost").eval()
    arch = net.space.largest()
    x = torch.randn(4, 1, 8, 8)
    outs, raw = net(x, arch), _raw_heads(net, x, arch)
    torch.testing.assert_close(outs[0], raw[0])
    for k in range(1, len(outs)):
        torch.testing.assert_close(outs[k], raw[k] + outs[k - 1])  # F_k = f_k + F_{k-1}
    # Exit 2's loss trains exit 2's head, not exit 1's: the boosted term is detached.
    y = torch.randint(0, 10, (4,))
    F.cross_entropy(outs[2], y).backward()
    prev_head = net.heads[_key(*arch.exits[1])]["linear"].fc
    own_head = net.heads[_key(*arch.exits[2])]["linear"].fc
    assert prev_head.weight.grad is None or bool((prev_head.weight.grad == 0).all())
    assert float(own_head.weight.grad.abs().sum()) > 0


def test_ztw_cascade_starts_as_independent_exits_and_learns_a_detached_mix() -> None:
    torch.manual_seed(0)
    fresh = Supernet(_space("ztw")).eval()
    arch = fresh.space.largest()
    x = torch.randn(4, 1, 8, 8)
    for a, b in zip(fresh(x, arch), _raw_heads(fresh, x, arch)):
        torch.testing.assert_close(a, b)  # W_k = 0 at first
    net = _net("ztw").train()
    outs = net(x, arch)
    y = torch.randint(0, 10, (4,))
    F.cross_entropy(outs[1], y).backward()
    first_head = net.heads[_key(*arch.exits[0])]["linear"].fc
    mix = net.combiners[_key(*arch.exits[1])].mix
    assert first_head.weight.grad is None or bool((first_head.weight.grad == 0).all())
    assert float(mix.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("combine", sorted(COMBINERS))
def test_static_form_and_early_exit_runtime_match_the_supernet(combine: str) -> None:
    from exitnas.runtime import EarlyExitModel

    net = _net(combine).eval()
    arch = net.space.largest()
    static = net.to_static(arch).eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        for a, b in zip(net(x, arch), static(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        thresholds = torch.full([arch.num_exits - 1], 0.15)
        logits, exits = static.early_exit(x, thresholds)
        every = static(x)
        for i in range(len(x)):
            # The exit each sample left at, with the logits of that exit, combined as in forward.
            torch.testing.assert_close(logits[i], every[int(exits[i])][i], atol=1e-5, rtol=1e-5)
            one, at = static.early_exit(x[i : i + 1], thresholds)  # batch size 1 really stops
            assert int(at) == int(exits[i])
            torch.testing.assert_close(one[0], logits[i], atol=1e-5, rtol=1e-5)
        scripted = torch.jit.script(EarlyExitModel(static, thresholds.tolist(), [0.0], [1.0], "maxprob"))
        s_logits, s_exits = scripted(x)
        torch.testing.assert_close(s_logits, logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(s_exits, exits)


def test_cascade_is_counted_in_the_exit_cost_and_none_adds_no_weights() -> None:
    arch = _space("none").largest()
    plain = exit_costs(Supernet(_space("none")).to_static(arch), (1, 8, 8))
    ztw = exit_costs(Supernet(_space("ztw")).to_static(arch), (1, 8, 8))
    assert ztw.head_macs[0] == plain.head_macs[0]
    assert [z - p for z, p in zip(ztw.head_macs[1:], plain.head_macs[1:])] == [10 * 10] * (arch.num_exits - 1)
    # Spaces without a learned combiner keep the supernet's weights (old checkpoints load).
    assert not any(k.startswith("combiners.") for k in Supernet(_space("boost")).state_dict())
