"""Zero Time Waste's geometric ensemble: a weighted product of the exits so far, fitted on training data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exitnas.evaluators import exit_costs
from exitnas.runtime import deploy_early_exit
from exitnas.search_space import GeometricEnsemble, Supernet, build_space
from exitnas.search_space._ensemble import fit_ensemble


def _space(**kw):  # type: ignore[no-untyped-def]
    opts = dict(channels=(8, 16), depths=(1, 2), widths=(1.0,), ratios=(0.0,), heads=("linear",),
                combine="ztw", ensemble="geometric")
    opts.update(kw)
    return build_space("msr-resnet", in_channels=3, num_classes=10, **opts)


def test_ensemble_is_the_weighted_sum_of_log_probabilities() -> None:
    torch.manual_seed(0)
    ens = GeometricEnsemble(3, 4)
    with torch.no_grad():
        ens.weight.copy_(torch.tensor([[1.0, 0, 0], [0.5, 2.0, 0], [0.25, 0.0, 3.0]]))
        ens.bias.normal_()
    z = [torch.randn(5, 4) for _ in range(3)]
    lp = [F.log_softmax(v, 1) for v in z]
    torch.testing.assert_close(ens(lp, 2), 0.25 * lp[0] + 3.0 * lp[2] + ens.bias[2])
    torch.testing.assert_close(ens(lp, 1), 0.5 * lp[0] + 2.0 * lp[1] + ens.bias[1])
    # As the identity it starts at, each exit's ensemble has the exit's own probabilities.
    ident = GeometricEnsemble(3, 4)
    for k in range(3):
        torch.testing.assert_close(F.softmax(ident(lp, k), 1), F.softmax(z[k], 1))


def test_fit_lowers_the_training_loss_and_keeps_weights_valid() -> None:
    torch.manual_seed(0)
    n, c = 400, 5
    y = torch.randint(0, c, (n,))
    signal = F.one_hot(y, c).float()
    # Two noisy exits: together they know more than the second alone.
    logits = [2.0 * signal + 2.0 * torch.randn(n, c), 2.0 * signal + 2.0 * torch.randn(n, c)]
    ens = GeometricEnsemble(2, c)
    before = [float(F.cross_entropy(z, y)) for z in logits]
    after = fit_ensemble(ens, logits, y)
    assert after[0] < before[0] and after[1] < before[1] - 0.05
    assert bool((ens.weight >= 0).all()) and float(ens.weight.detach()[0, 1]) == 0.0  # no look-ahead
    assert float(ens.weight.detach()[1, 0]) > 0.1  # exit 1 uses exit 0's prediction


def test_static_net_ensembles_in_forward_early_exit_and_deployment(mid_gap) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    space = _space()
    net = Supernet(space).to_static(space.largest()).eval()
    assert net.ensemble is not None
    with torch.no_grad():
        net.ensemble.weight.copy_(torch.tril(torch.rand(net.num_exits, net.num_exits)))
        net.ensemble.bias.normal_()
    x = torch.randn(12, 3, 16, 16)
    with torch.no_grad():
        raw = net(x, ensemble=False)  # the exits before the ensemble
        outs = net(x)
        lp = [F.log_softmax(z, 1) for z in raw]
        for k, out in enumerate(outs):
            torch.testing.assert_close(out, net.ensemble(lp, k))
        conf = [F.softmax(z, 1).max(1).values for z in outs]
        thr = [float(mid_gap(c)) for c in conf[:-1]]
        logits, exits = net.early_exit(x, torch.tensor(thr))
        for i in range(len(x)):
            torch.testing.assert_close(logits[i], outs[int(exits[i])][i])
            first = next((k for k in range(net.num_exits - 1) if conf[k][i] >= thr[k]), net.num_exits - 1)
            assert int(exits[i]) == first
        deployed = deploy_early_exit(net, thr)
        got_logits, got_exits = deployed(x)
        assert torch.equal(got_exits, exits)
        torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)


def test_ensemble_macs_are_counted() -> None:
    space = _space()
    arch = space.largest()
    with_ens = exit_costs(Supernet(space).to_static(arch), (3, 16, 16))
    plain = _space(ensemble="none")
    without = exit_costs(Supernet(plain).to_static(arch), (3, 16, 16))
    # exit k adds (k + 1) · C multiply-adds for its weighted sum of log-probabilities
    extra = [sum((j + 1) * 10 for j in range(k + 1)) for k in range(arch.num_exits)]
    assert [a - b for a, b in zip(with_ens.macs, without.macs)] == extra


def test_unknown_ensemble_is_refused() -> None:
    from exitnas._errors import UserError

    with pytest.raises(UserError, match="exit ensemble"):
        _space(ensemble="arithmetic")
