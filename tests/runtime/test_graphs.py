"""CUDA graphs per segment: one image steps through static buffers, leaves where the plain
early exit leaves it, with the same logits; nets whose exits carry state are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exitnas._errors import UserError
from exitnas.runtime import GraphedEarlyExit
from exitnas.search_space import ArchConfig, Supernet, build_space

TOL = {"atol": 1e-4, "rtol": 1e-4}
# On a GPU the reference runs 48 images at once and the runtime one at a time: other cuDNN
# algorithms, in TF32 by default (10-bit mantissa). An H200 run differed by 1.3e-4 with every
# exit the same; a wrong step or buffer differs by whole units.
TOL_CUDA = {"atol": 2e-3, "rtol": 2e-3}
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _space(**kw):  # type: ignore[no-untyped-def]
    return build_space("msr-resnet", in_channels=3, num_classes=10, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 0.5, 1.0), heads=("linear", "msdnet", "bof"), **kw)


def _arch() -> ArchConfig:
    return ArchConfig("msr-resnet", (2, 2), (1.0, 0.5), ((0.5, 1.0), (0.0, 0.5)),
                      ((0, 0), (0, 1), (1, 0), (1, 1)), ("linear", "msdnet", "bof", "msdnet"))


def _net(space, device: str = "cpu"):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    sup = Supernet(space).eval()
    with torch.no_grad():  # BN far from identity, so the folded steps must fold it right
        for m in sup.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return sup.to_static(space.validate(_arch())).eval().to(device)


def _reference(net, x: torch.Tensor, mid_gap):  # type: ignore[no-untyped-def]
    """Thresholds about half pass at each exit, and the plain early exit's answer per image."""
    xn = (x - torch.tensor(MEAN, device=x.device).view(1, -1, 1, 1)) / torch.tensor(STD, device=x.device).view(-1, 1, 1)
    with torch.no_grad():
        conf = torch.stack([torch.softmax(z, -1).max(-1).values for z in net(xn)])
        thresholds = [float(mid_gap(c)) for c in conf[:-1]]
        logits, exits = net.early_exit(xn, torch.tensor(thresholds, device=x.device))
    return thresholds, logits, exits


def _check(runtime: GraphedEarlyExit, x: torch.Tensor, logits: torch.Tensor, exits: torch.Tensor) -> None:
    got = [runtime(x[i : i + 1]) for i in range(len(x))]
    assert [k for _, k in got] == exits.tolist()
    torch.testing.assert_close(torch.cat([z for z, _ in got]), logits, **(TOL_CUDA if x.is_cuda else TOL))


def test_steps_through_static_buffers_like_the_plain_early_exit(mid_gap) -> None:  # type: ignore[no-untyped-def]
    net = _net(_space())
    x = torch.rand(48, 3, 16, 16)
    thresholds, logits, exits = _reference(net, x, mid_gap)
    assert len(set(exits.tolist())) == 4  # every exit is used
    runtime = GraphedEarlyExit(net, thresholds, (3, 16, 16), mean=MEAN, std=STD, graphs=False)
    _check(runtime, x, logits, exits)
    # The last step has no decision (freezing folds it away); the others do.
    assert "softmax" not in runtime.steps[-1].code and "softmax" in runtime.steps[0].code
    # The returned logits are a copy: the next image does not overwrite them.
    first, _ = runtime(x[:1])
    kept = first.clone()
    runtime(x[1:2])
    assert torch.equal(first, kept)


def test_from_an_exported_model(mid_gap) -> None:  # type: ignore[no-untyped-def]
    from exitnas.results import EarlyExitModel

    net = _net(_space())
    x = torch.rand(24, 3, 16, 16)
    thresholds, _, _ = _reference(net, x, mid_gap)
    model = EarlyExitModel(net, thresholds, MEAN, STD).eval()
    runtime = GraphedEarlyExit.from_model(model, (3, 16, 16), graphs=False)
    with torch.no_grad():
        logits, exits = model(x)
    _check(runtime, x, logits, exits)


def test_bad_input_is_one_clear_error(mid_gap) -> None:  # type: ignore[no-untyped-def]
    net = _net(_space())
    with pytest.raises(UserError, match="CUDA device"):
        GraphedEarlyExit(net, [0.5] * 3, (3, 16, 16), graphs=True)
    with pytest.raises(UserError, match="one per non-final exit"):
        GraphedEarlyExit(net, [0.5], (3, 16, 16), graphs=False)
    with pytest.raises(UserError, match="unknown confidence"):
        GraphedEarlyExit(net, [0.5] * 3, (3, 16, 16), kind="margin", graphs=False)
    runtime = GraphedEarlyExit(net, [0.5] * 3, (3, 16, 16), graphs=False)
    with pytest.raises(UserError, match="one image"):
        runtime(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("option", [{"combine": "boost"}, {"combine": "ztw", "ensemble": "geometric"},
                                    {"gate": "emg"}])
def test_exits_with_state_or_gates_are_refused(option: dict[str, str]) -> None:
    net = _net(_space(**option))
    with pytest.raises(UserError, match="plain exits"):
        GraphedEarlyExit(net, [0.5] * 3, (3, 16, 16), graphs=False)


@pytest.mark.gpu
def test_cuda_graphs_leave_where_the_plain_early_exit_leaves(mid_gap) -> None:  # type: ignore[no-untyped-def]
    net = _net(_space(), "cuda")
    x = torch.rand(48, 3, 16, 16, device="cuda")
    thresholds, logits, exits = _reference(net, x, mid_gap)
    runtime = GraphedEarlyExit(net, thresholds, (3, 16, 16), mean=MEAN, std=STD, graphs=True)
    assert len(runtime.recorded) == 4
    _check(runtime, x, logits, exits)
    _check(runtime, x.flip(0), logits.flip(0), exits.flip(0))  # replays do not depend on the order
