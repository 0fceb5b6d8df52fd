"""The runtime runs the patience policy (PABEE) as the evaluators decide it: at batch size 1 it
stops where the last k exits agree, in a batch every sample takes that exit, deployed or not."""

from __future__ import annotations

import pytest
import torch

from exitnas.evaluators import POLICIES
from exitnas.runtime import EarlyExitRuntime, deploy_early_exit
from exitnas.search_space import ArchConfig, Supernet, build_space


def _expected_exits(outs: list[torch.Tensor], k: int) -> list[int]:
    preds = torch.stack([z.argmax(-1) for z in outs])
    out = []
    for n in range(preds.shape[1]):  # the rule, spelled out image by image
        run, leave = 0, len(outs) - 1
        for e in range(len(outs) - 1):
            run = run + 1 if e and preds[e, n] == preds[e - 1, n] else 1
            if run >= k:
                leave = e
                break
        out.append(leave)
    return out


def _thresholds(k: int) -> list[float]:
    """Patience k of 4 exits as the evaluators' threshold vector (``PatiencePolicy.thresholds``)."""
    return POLICIES.get("patience").thresholds(k, 4).tolist()


@pytest.fixture(scope="module")
def net():  # type: ignore[no-untyped-def]
    space = build_space("msr-resnet", in_channels=3, num_classes=3, channels=(8, 16), depths=(1, 3),
                        widths=(1.0,), ratios=(0.0,), heads=("linear",))
    torch.manual_seed(0)
    arch = ArchConfig("msr-resnet", (1, 3), (1.0, 1.0), ((0.0,), (0.0, 0.0, 0.0)),
                      ((0, 0), (1, 0), (1, 1), (1, 2)), ("linear",) * 4)
    net = Supernet(space).eval().to_static(space.validate(arch)).eval()
    with torch.no_grad():  # heads that depend on the input, so predictions differ across exits and images
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 3.0)
                m.bias.zero_()
    return net


@pytest.mark.parametrize("k", [2, 3])
def test_patience_exits_match_the_rule(net, k: int) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(48, 3, 16, 16)
    with torch.no_grad():
        outs = net(x)
    want = _expected_exits(outs, k)
    assert len(set(want)) > 1  # the images leave at different exits: the check means something
    rt = EarlyExitRuntime(net, _thresholds(k), policy="patience").eval()
    logits, exits = rt._run(x)  # the batch path
    assert exits.tolist() == want
    for n in range(len(x)):
        torch.testing.assert_close(logits[n], outs[want[n]][n])
    deployed = deploy_early_exit(net, _thresholds(k), policy="patience")
    for n in range(len(x)):  # batch size 1: the loop that stops
        one, e = rt._run(x[n : n + 1])
        assert int(e) == want[n]
        torch.testing.assert_close(one[0], outs[want[n]][n], atol=1e-5, rtol=1e-5)
        assert int(deployed(x[n : n + 1])[1]) == want[n]


def test_a_single_image_stops_where_patience_is_reached(net) -> None:  # type: ignore[no-untyped-def]
    calls = []
    hook = net.steps[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        x = torch.randn(32, 3, 16, 16)
        with torch.no_grad():
            want = _expected_exits(net(x), 2)
        calls.clear()
        rt = EarlyExitRuntime(net, _thresholds(2), policy="patience").eval()
        for n in range(len(x)):
            rt._run(x[n : n + 1])
        assert len(calls) == sum(1 for w in want if w == 3)  # the last step ran only for those leaving there
    finally:
        hook.remove()
