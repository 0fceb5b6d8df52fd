"""Exit policies beside thresholds: each checked on caches where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from exitnas.evaluators import (
    POLICIES,
    ExitCache,
    ExitPolicy,
    agreement_runs,
    budgeted_batch,
    decide,
    exit_features,
    fit_policy,
    leave_targets,
)
from exitnas.evaluators._policies import softmax
from exitnas.search_space import ArchConfig


def _arch(k: int) -> ArchConfig:
    return ArchConfig("msr-resnet", (k,), (1.0,), ((0.0,) * k,), tuple((0, b) for b in range(k)), ("linear",) * k)


def _cache(logits: np.ndarray, labels: np.ndarray, macs: list[float] | None = None) -> ExitCache:
    """A cache as ``build_exit_cache`` makes it, from K×N×C logits."""
    k = logits.shape[0]
    p = softmax(logits)
    return ExitCache(_arch(k), p.max(-1).astype(np.float32), p.argmax(-1) == labels[None],
                     np.asarray(macs or np.arange(1, k + 1) * 1e5, dtype=np.float64), "maxprob",
                     None, logits.astype(np.float16), labels)


def _one_hot_logits(preds: list[list[int]], classes: int = 3, scale: float = 2.0) -> np.ndarray:
    return scale * np.eye(classes)[np.asarray(preds)]


def test_patience_leaves_when_the_last_k_exits_agree() -> None:
    # 4 exits × 4 images; predicted classes per exit (rows) and image (columns).
    preds = [[0, 0, 1, 2],
             [0, 1, 1, 0],
             [0, 1, 2, 1],
             [1, 1, 2, 2]]
    labels = np.array([0, 1, 2, 2])
    cache = _cache(_one_hot_logits(preds), labels)
    assert agreement_runs(cache).tolist() == [[1, 1, 1, 1], [2, 1, 2, 1], [3, 2, 1, 1], [1, 3, 2, 1]]
    fitted = fit_policy("patience", cache)
    assert [p["k"] for p in fitted.params] == [2, 3, 4]
    # k=2: image 0 at exit 1 (right), 1 at exit 2 (right), 2 at exit 1 (wrong: class 1), 3 never (final, right).
    assert fitted.val.histogram[0].tolist() == [0, 2, 1, 1]
    assert fitted.val.accuracy[0] == 0.75
    # k=3: image 0 at exit 2, image 1 at exit 3, images 2 and 3 at the final exit: all right.
    assert fitted.val.histogram[1].tolist() == [0, 0, 1, 3]
    assert fitted.val.accuracy[1] == 1.0
    assert fitted.val.expected_cost[1] == pytest.approx((3 + 4 * 3) / 4 * 1e5)
    assert fitted.val.histogram[2].tolist() == [0, 0, 0, 4]  # k=4 = K: only the final exit


def test_temperature_recovers_the_temperature_that_made_the_logits() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 2, size=(2, 4000, 5))
    labels = np.array([rng.choice(5, p=q) for q in softmax(base[1])])  # calibrated at T=1 for exit 1
    cache = _cache(np.stack([base[0] * 3.0, base[1] * 3.0]), labels)  # logits 3× too sharp
    fitted = fit_policy("temperature", cache)
    assert fitted.policy.temperatures[1] == pytest.approx(3.0, rel=0.1)
    # Calibrated scores are the max-softmax at T_k (exit 0 has its own temperature).
    t0 = fitted.policy.temperatures[0]
    np.testing.assert_allclose(fitted.policy.scores(cache)[0], softmax(base[0] * 3.0 / t0).max(-1), rtol=1e-2)


def test_leave_targets_by_hand() -> None:
    correct = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=bool)
    cache = ExitCache(_arch(3), np.zeros((3, 4), np.float32), correct, np.array([1.0, 2.0, 3.0]))
    # Leaving loses nothing where the exit is right or no later exit is (image 3: never right;
    # image 0 at exit 1: exit 2 is wrong too).
    assert leave_targets(cache).tolist() == [[True, False, False, True], [True, True, False, True]]


def test_features_by_hand() -> None:
    cache = _cache(_one_hot_logits([[0, 1], [0, 0]], classes=2, scale=np.log(3.0)), np.array([0, 0]))
    f = exit_features(cache)
    assert f.shape == (2, 2, 9)
    # (logits are stored as float16: ln 3 to about 1e-4)
    np.testing.assert_allclose(f[0, :, 0], [0.75, 0.75], rtol=1e-4)  # softmax of (ln 3, 0): 3/4
    np.testing.assert_allclose(f[0, :, 1], [0.5, 0.5], rtol=1e-4)
    np.testing.assert_allclose(f[1, :, 3], [1.0, 0.0])  # agreement with exit 0
    np.testing.assert_allclose(f[1, :, 8], [0.75, 0.25], rtol=1e-4)  # exit 1's probability of exit 0's class
    np.testing.assert_allclose(f[1, :, 6], [0.75, 0.75], rtol=1e-4)  # best max probability before exit 1


def test_decider_learns_what_confidence_does_not_show() -> None:
    # Exit 1 is right exactly when it agrees with exit 0, and its confidence (random scale) says
    # nothing about it. The decider sees agreement; a confidence threshold cannot.
    rng = np.random.default_rng(1)
    n = 3000
    labels = rng.integers(0, 4, n)
    p0 = np.where(rng.random(n) < 0.5, labels, (labels + 1) % 4)  # exit 0 right half the time
    agree = rng.random(n) < 0.5
    p1 = np.where(agree, p0, (p0 + 2) % 4)
    p1 = np.where(agree & (p0 != labels), labels, p1)  # agreeing ⇒ exit 1 right (sets p1 = label)
    p1 = np.where(~agree & ((p1) == labels), (labels + 3) % 4, p1)  # disagreeing ⇒ wrong
    z = np.stack([np.eye(4)[p0] * rng.uniform(0.5, 3, (n, 1)), np.eye(4)[p1] * rng.uniform(0.5, 3, (n, 1)),
                  np.eye(4)[labels] * 3.0])
    cache = _cache(z, labels)
    half = np.arange(n) < n // 2
    val, test = (ExitCache(cache.arch, cache.confidence[:, m], cache.correct[:, m], cache.macs, "maxprob", None,
                           cache.logits[:, m], labels[m]) for m in (half, ~half))
    dec, thr = fit_policy("decider", val), fit_policy("threshold", val)
    budget = float(val.macs[1] + 0.25 * (val.macs[2] - val.macs[1]))
    d_acc = dec.apply(test).accuracy[dec.choose(budget)]
    t_acc = thr.apply(test).accuracy[thr.choose(budget)]
    assert d_acc > t_acc + 0.1


def test_threshold_policy_contains_the_budgeted_batch_curve(random_cache: object) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, size=(3, 400, 4))
    labels = rng.integers(0, 4, 400)
    val, test = _cache(z[:, :200], labels[:200]), _cache(z[:, 200:], labels[200:])
    fitted = fit_policy("threshold", val)
    res = fitted.apply(test)
    bb = budgeted_batch(val, test)
    assert [(p.macs, p.accuracy) for p in bb] == [(float(c), float(a)) for c, a in
                                                 zip(res.expected_cost[:len(bb)], res.accuracy[:len(bb)])]
    # Choosing is on val only: the chosen setting fits the budget on val and is the most accurate there.
    for budget in np.linspace(1e5, 3e5, 9):
        i = fitted.choose(float(budget))
        assert i is not None and fitted.val.expected_cost[i] <= budget
        assert fitted.val.accuracy[i] == fitted.val.accuracy[fitted.val.expected_cost <= budget].max()
    assert fitted.choose(5e4) is None
    curve = fitted.budget_curve(res, [5e4, 2e5])
    assert curve[0] is None and curve[1].accuracy == res.accuracy[fitted.choose(2e5)]


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_fits_on_val_and_applies_to_test(name: str) -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, size=(4, 300, 5))
    labels = rng.integers(0, 5, 300)
    val, test = _cache(z[:, :150], labels[:150]), _cache(z[:, 150:], labels[150:])
    fitted = fit_policy(name, val)
    res = fitted.apply(test)
    assert res.histogram.sum(1).tolist() == [150] * len(fitted.params)
    assert ((res.accuracy >= 0) & (res.accuracy <= 1)).all()
    assert POLICIES.get(name)().decision_macs(10, 4) < 100  # ≪ any exit's MACs
    # The policy's own MACs are paid once per exit passed (the final exit decides nothing).
    per = POLICIES.get(name)().decision_macs(5, 4)
    base = ExitPolicy(val).evaluate(np.ones(3)).expected_cost[0]  # everyone to the final exit
    assert fitted.val.expected_cost.max() <= base + 3 * per + 1e-6
    everyone_first = decide(val, np.zeros(3), name, fitted.policy.state())
    assert everyone_first.histogram[0, 0] == 150 and everyone_first.expected_cost[0] == val.macs[0] + per


def test_a_cache_without_logits_is_refused(hand_cache: ExitCache) -> None:
    with pytest.raises(ValueError, match="no logits"):
        fit_policy("patience", hand_cache)
    assert ExitPolicy(hand_cache).evaluate([0.5, 0.5]).accuracy.shape == (1,)
