"""The deployed runtime runs every exit policy as the evaluators score it: the same scores per
exit (float32 against the evaluators' float64), the same exits at batch size 1, in a batch, and
scripted and frozen."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from exitnas._confidence import confidence
from exitnas.evaluators import POLICIES, ExitCache
from exitnas.runtime import DEPLOYED_POLICIES, EarlyExitRuntime, ExitScorer, GraphedEarlyExit, deploy_early_exit
from exitnas.search_space import ArchConfig, Supernet, build_space

K = 4


@pytest.fixture(scope="module")
def net():  # type: ignore[no-untyped-def]
    space = build_space("msr-resnet", in_channels=3, num_classes=5, channels=(8, 16), depths=(1, 3),
                        widths=(1.0,), ratios=(0.0,), heads=("linear",))
    torch.manual_seed(0)
    arch = ArchConfig("msr-resnet", (1, 3), (1.0, 1.0), ((0.0,), (0.0, 0.0, 0.0)),
                      ((0, 0), (1, 0), (1, 1), (1, 2)), ("linear",) * K)
    net = Supernet(space).eval().to_static(space.validate(arch)).eval()
    with torch.no_grad():  # heads that depend on the input, so exits differ across images
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 2.0)
                m.bias.zero_()
    return net


def _cache(net, seed: int, n: int = 240) -> tuple[torch.Tensor, ExitCache]:  # type: ignore[no-untyped-def]
    """Images and their float32 exit cache; labels agree with the final exit on about 70% of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    with torch.no_grad():
        outs = torch.stack(net(x))
    y = torch.where(torch.rand(n, generator=g) < 0.7, outs[-1].argmax(-1), torch.randint(0, 5, (n,), generator=g))
    cache = ExitCache(None, torch.stack([confidence(z) for z in outs]).numpy(),  # type: ignore[arg-type]
                      (outs.argmax(-1) == y).numpy(), np.arange(1.0, K + 1), "maxprob", None,
                      outs.numpy(), y.numpy())
    return x, cache


def _fitted(name: str, net) -> tuple[dict, np.ndarray, torch.Tensor, ExitCache]:  # type: ignore[no-untyped-def]
    _, val = _cache(net, 0)
    x, test = _cache(net, 1)
    policy = POLICIES.get(name)()
    policy.fit(val)
    return policy.state(), policy.scores(test), x, test


def _thresholds(name: str, scores: np.ndarray) -> np.ndarray:
    """Thresholds that let about half of the images reaching each exit leave there (patience: k = 2).
    An exit whose answer is no better than its prior (the ensemble may weigh it 0: one score for
    every image) is closed, or every image would leave there."""
    if name == "patience":
        return np.full(K - 1, 1.5 / K)
    return np.where(scores.std(axis=1) > 1e-6, np.median(scores, axis=1), 1.0)


@pytest.mark.parametrize("name", DEPLOYED_POLICIES)
def test_scores_match_the_evaluators(net, name: str) -> None:  # type: ignore[no-untyped-def]
    params, want, _, test = _fitted(name, net)
    scorer = ExitScorer(name, K, "maxprob", params)
    logits = torch.from_numpy(test.logits)
    state = scorer.start(test.num_samples, logits)
    answers = scorer.start_answers(test.num_samples, logits)
    for k in range(K - 1):
        z, answers = scorer.answer(k, logits[k], answers)
        got, state = scorer(k, z, state)
        np.testing.assert_allclose(got.numpy(), want[k], atol=2e-6, rtol=0)
    assert want.std() > 1e-3  # scores that vary: the comparison means something
    if name == "threshold":  # the runtime compares the confidence tensor itself
        return
    if name == "ensemble":
        _check_ensemble_one(scorer, logits, want)
        return
    for n in range(40):  # the batch-of-one form, in Python floats
        one = scorer.start_one()
        for k in range(K - 1):
            score, one = scorer.one(k, logits[k, n : n + 1], one)
            assert score == pytest.approx(want[k, n], abs=1e-6)


@pytest.mark.parametrize("name", DEPLOYED_POLICIES)
def test_the_runtime_leaves_where_the_evaluators_do(net, name: str) -> None:  # type: ignore[no-untyped-def]
    params, scores, x, _ = _fitted(name, net)
    thr = _thresholds(name, scores)
    passed = scores >= thr[:, None]
    want = np.where(passed.any(0), passed.argmax(0), K - 1)
    close = (np.abs(scores - thr[:, None]) < 1e-5).any(0)  # float32 against float64 at the threshold
    assert len(set(want.tolist())) > 1 and close.sum() <= len(x) // 20
    rt = EarlyExitRuntime(net, thr.tolist(), "maxprob", name, params).eval()
    deployed = deploy_early_exit(net, thr.tolist(), "maxprob", policy=name, params=params)
    with torch.no_grad():
        answers, outs = rt.scorer.start_answers(len(x), x), []
        for k, z in enumerate(net(x)):  # what each exit answers
            z, answers = rt.scorer.answer(k, z, answers)
            outs.append(z)
        batch_logits, batch_exits = rt._run(x)
    assert (batch_exits.numpy() == want)[~close].all()
    for n in np.flatnonzero(~close)[:60]:
        one, e = rt._run(x[n : n + 1])
        assert int(e) == want[n] == int(deployed(x[n : n + 1])[1])
        torch.testing.assert_close(one[0], outs[want[n]][n])
        torch.testing.assert_close(batch_logits[n], outs[want[n]][n])


def _check_ensemble_one(scorer: ExitScorer, logits: torch.Tensor, want: np.ndarray) -> None:
    """The ensemble's batch-of-one form (Python floats, scripted) gives the tensor form's answer and
    the evaluators' score, under both confidences."""
    for kind in ("maxprob", "entropy"):
        scorer.kind = kind
        scripted = torch.jit.script(scorer)
        tensor_answers = []
        answers = scorer.start_answers(logits.shape[1], logits)
        for k in range(K):
            z, answers = scorer.answer(k, logits[k], answers)
            tensor_answers.append(z)
        for n in range(40):
            hist: list[float] = []
            for k in range(K):
                # The scripted method gets a copy of the list (its appends stay inside); the eager one grows ``hist``.
                ans, score = scripted.answer_one(k, logits[k, n : n + 1], list(hist))
                eager_ans, eager_score = scorer.answer_one(k, logits[k, n : n + 1], hist)
                assert eager_ans == pytest.approx(ans, abs=1e-9) and eager_score == pytest.approx(score, abs=1e-9)
                np.testing.assert_allclose(ans, tensor_answers[k][n].numpy(), atol=1e-5)
                assert score == pytest.approx(float(confidence(tensor_answers[k][n : n + 1], kind)[0]), abs=1e-5)
                if kind == "maxprob" and k < K - 1:
                    assert score == pytest.approx(want[k, n], abs=1e-5)
    scorer.kind = "maxprob"


def test_the_scorer_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="unknown exit policy"):
        ExitScorer("oracle", K)
    with pytest.raises(ValueError, match="temperatures have shape"):
        ExitScorer("temperature", K, params={"temperatures": [1.0, 2.0]})
    with pytest.raises(ValueError, match="ensemble weights have shape"):
        ExitScorer("ensemble", K, params={"weight": [[1.0]], "bias": [[0.0] * 5] * K})
    with pytest.raises(ValueError, match="ensemble bias has shape"):
        ExitScorer("ensemble", K, params={"weight": np.eye(K).tolist(), "bias": [0.0] * 5})


@pytest.mark.parametrize("name", DEPLOYED_POLICIES)
def test_the_graphed_steps_carry_the_policy_state(net, name: str) -> None:  # type: ignore[no-untyped-def]
    """The CUDA-graphs runtime's steps (here as plain calls through the same buffers) leave where
    the TorchScript runtime does, under every policy: the state goes from step to step."""
    params, scores, x, _ = _fitted(name, net)
    thr = _thresholds(name, scores)
    rt = EarlyExitRuntime(net, thr.tolist(), "maxprob", name, params).eval()
    graphed = GraphedEarlyExit(net, thr.tolist(), (3, 16, 16), policy=name, params=params, graphs=False)
    exits = []
    for n in range(40):
        want_logits, want_exit = rt._run(x[n : n + 1])
        logits, k = graphed(x[n : n + 1])
        assert k == int(want_exit)
        torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
        exits.append(k)
    assert len(set(exits)) > 1


@pytest.mark.gpu
@pytest.mark.parametrize("name", DEPLOYED_POLICIES)
def test_cuda_graphs_run_every_policy(net, name: str) -> None:  # type: ignore[no-untyped-def]
    """Recorded CUDA graphs, the policy's state in their buffers, leave where the TorchScript
    runtime does on the same GPU (images away from a threshold: TF32 may move a score a hair)."""
    params, scores, x, _ = _fitted(name, net)
    thr = _thresholds(name, scores)
    cuda = copy.deepcopy(net).cuda()
    rt = EarlyExitRuntime(cuda, thr.tolist(), "maxprob", name, params).eval().cuda()
    graphed = GraphedEarlyExit(cuda, thr.tolist(), (3, 16, 16), policy=name, params=params, graphs=True)
    assert len(graphed.recorded) == K
    close = (np.abs(scores - thr[:, None]) < 1e-3).any(0)
    checked = 0
    for n in np.flatnonzero(~close)[:40]:
        xn = x[n : n + 1].cuda()
        _, want_exit = rt._run(xn)
        _, k = graphed(xn)
        assert k == int(want_exit)
        checked += 1
    assert checked >= 20


def test_extreme_decider_weights_give_a_score_not_an_overflow() -> None:
    for sign in (1.0, -1.0):
        model = [0.0] * 9 + [1.0] * 9 + [sign * 1e4] * 9 + [0.0]
        scorer = ExitScorer("decider", 2, params={"models": [model]})
        score, _ = scorer.one(0, torch.tensor([[5.0, 0.0, -5.0]]), scorer.start_one())
        assert 0.0 <= score <= 1.0 and (score > 0.5) == (sign > 0)
