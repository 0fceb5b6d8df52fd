"""``StaticNet`` as exit steps: one forward for every routing, and exports of the older layout."""

from __future__ import annotations

import re

import torch

from exitnas.search_space import ExitStep, Supernet, build_space


def _net():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    space = build_space("msr-resnet", in_channels=3, num_classes=10, channels=(8, 16), depths=(1, 2),
                        widths=(1.0,), ratios=(0.0, 0.5), heads=("linear", "msdnet"), combine="ztw",
                        ensemble="geometric")
    return space, Supernet(space).to_static(space.largest()).eval()


def test_net_is_its_exit_steps() -> None:
    _, net = _net()
    assert all(isinstance(s, ExitStep) for s in net.steps) and net.num_exits == len(net.steps) == 4
    assert [s.first for s in net.steps] == [True, False, False, False]
    assert [s.final for s in net.steps] == [False, False, False, True]
    assert net.segments[1] is net.steps[1].segment and net.heads[2] is net.steps[2].head
    assert net.combiners[0] is net.steps[0].combiner


def test_every_routing_and_the_scripted_net_give_the_same_logits() -> None:
    _, net = _net()
    with torch.no_grad():
        net.ensemble.bias.normal_()  # type: ignore[union-attr]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
        scripted = torch.jit.script(net)
        for a, b in zip(ref, net(x, "dfs", 0.3)):
            torch.testing.assert_close(a, b)
        for a, b in zip(ref, scripted(x)):
            torch.testing.assert_close(a, b)
        raw = net(x, ensemble=False)
        for a, b in zip(raw, scripted(x, "shared", 0.5, False)):
            torch.testing.assert_close(a, b)
    assert not torch.allclose(ref[0], raw[0])  # the ensemble's bias moved exit 0


def test_a_state_dict_of_the_older_layout_loads() -> None:
    """Exports written before exit steps name the parts ``segments.k``, ``heads.k``, ``combiners.k``."""
    space, net = _net()
    parts = {"segment": "segments", "head": "heads", "combiner": "combiners"}
    old = {re.sub(r"^steps\.(\d+)\.(segment|head|combiner)\.", lambda m: f"{parts[m[2]]}.{m[1]}.", k): v
           for k, v in net.state_dict().items()}
    assert any(k.startswith("segments.0.") for k in old) and not any(k.startswith("steps.") for k in old)
    fresh = Supernet(space).to_static(space.largest()).eval()
    fresh.load_state_dict(old, strict=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(net(x), fresh(x)):
            torch.testing.assert_close(a, b)
