"""Anytime, oracle and budgeted-batch protocols on hand-built and random caches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from exitnas.evaluators import (
    CLOSED,
    DEFAULT_P_SWEEP,
    ExitCache,
    ExitPolicy,
    anytime,
    budgeted_batch,
    fit_budgeted_thresholds,
    fit_to_budget,
    oracle,
    target_shares,
)

# The test cache is the hand cache of conftest.py (the one test_policy.py computes on).
# A different val cache, no ties inside an exit.
VAL_CONF = [
    [0.125, 0.875, 0.3125, 0.8125, 0.25, 0.375],
    [0.5, 0.9375, 0.625, 0.75, 0.3125, 0.1875],
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
]
VAL_CORRECT = [[1, 1, 1, 1, 1, 1]] * 3


@pytest.fixture
def test_cache(hand_cache: ExitCache) -> ExitCache:
    return hand_cache


@pytest.fixture
def val_cache(make_cache: Any) -> ExitCache:
    return make_cache(VAL_CONF, VAL_CORRECT, [1, 2, 4])


def test_anytime(test_cache: ExitCache) -> None:
    pts = anytime(test_cache)
    assert [p.macs for p in pts] == [1.0, 2.0, 4.0]
    assert [p.accuracy for p in pts] == pytest.approx([3 / 6, 3 / 6, 4 / 6])
    assert [p.param for p in pts] == [0, 1, 2]


def test_oracle_by_hand(test_cache: ExitCache) -> None:
    # first correct exits: 0, 1, 1, 0, 0, and sample 5 is never right → the last exit
    o = oracle(test_cache)
    assert o.histogram == (3, 2, 1)
    assert o.accuracy == pytest.approx(5 / 6)
    assert o.macs == pytest.approx((1 + 2 + 2 + 1 + 1 + 4) / 6)


@pytest.mark.parametrize("seed", range(4))
def test_oracle_beats_every_threshold_vector(random_cache: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cache = random_cache(rng, int(rng.integers(1, 6)), int(rng.integers(1, 150)))
    o = oracle(cache)
    th = rng.random((300, cache.num_exits - 1))
    th[0], th[1] = 0.0, 1.0
    res = ExitPolicy(cache).evaluate(th)
    assert np.all(res.accuracy <= o.accuracy + 1e-12)
    assert o.accuracy >= max(a.accuracy for a in anytime(cache)) - 1e-12
    assert sum(o.histogram) == cache.num_samples


@pytest.mark.parametrize("p", [0.05, 0.5, 1.0, 1.7, 2.0])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_target_shares(p: float, k: int) -> None:
    q = target_shares(p, k)
    assert q.sum() == pytest.approx(1.0)
    assert q.shape == (k,)
    assert np.allclose(q[1:] / q[:-1], p)


def test_fit_by_hand(val_cache: ExitCache) -> None:
    # p = 1: q = (1/3, 1/3, 1/3), two of six val samples leave at each exit.
    # exit 0: top two are 0.875, 0.8125 → t0 = 0.8125; left: samples 0, 2, 4, 5
    # exit 1: among those 0.5, 0.625, 0.3125, 0.1875 → top two 0.625, 0.5 → t1 = 0.5
    t = fit_budgeted_thresholds(val_cache, 1.0)
    assert t.tolist() == [0.8125, 0.5]
    assert ExitPolicy(val_cache).evaluate(t).histogram.tolist() == [[2, 2, 2]]


def test_budgeted_batch_applies_val_thresholds_to_test(val_cache: ExitCache, test_cache: ExitCache) -> None:
    (pt,) = budgeted_batch(val_cache, test_cache, (1.0,))
    assert pt.param == 1.0
    assert pt.thresholds == (0.8125, 0.5)
    # on test with (0.8125, 0.5): exits 0, 1, 1, 2, 0, 1 → right 1,1,1,1,1,0; MACs 1+2+2+4+1+2
    assert pt.histogram == (2, 3, 1)
    assert pt.accuracy == pytest.approx(5 / 6)
    assert pt.macs == pytest.approx(12 / 6)
    # not what the val cache itself would give
    assert ExitPolicy(val_cache).evaluate(pt.thresholds).histogram.tolist() == [[2, 2, 2]]


def test_budgeted_batch_sweep_matches_policy(random_cache: Any) -> None:
    rng = np.random.default_rng(3)
    val, test = random_cache(rng, 4, 300, ties=False), random_cache(rng, 4, 250)
    test = ExitCache(val.arch, test.confidence, test.correct, val.macs)
    pts = budgeted_batch(val, test)
    assert [p.param for p in pts] == [float(p) for p in DEFAULT_P_SWEEP]
    res = ExitPolicy(test).evaluate(np.array([p.thresholds for p in pts]), method="dense")
    assert [p.accuracy for p in pts] == pytest.approx(res.accuracy.tolist())
    assert [p.macs for p in pts] == pytest.approx(res.expected_cost.tolist())
    assert [list(p.histogram) for p in pts] == res.histogram.tolist()


@pytest.mark.parametrize("share", [0.0, 0.3, 0.6, 1.0])
def test_fit_to_budget_is_the_most_accurate_fit_within_the_budget(random_cache: Any, share: float) -> None:
    val = random_cache(np.random.default_rng(5), 4, 400)
    pts = budgeted_batch(val, val)  # every fit of the sweep, measured on val itself
    lo, hi = min(p.macs for p in pts), max(p.macs for p in pts)
    budget = lo + share * (hi - lo)
    fit = fit_to_budget(val, budget)
    assert fit is not None and fit.macs <= budget
    within = [p for p in pts if p.macs <= budget]
    assert fit.accuracy == max(p.accuracy for p in within)
    assert fit == next(p for p in within if p.accuracy == fit.accuracy)  # the first of the sweep on a tie
    assert fit_to_budget(val, lo * (1 - 1e-6)) is None  # below every fit's cost


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("n", [7, 64, 1000])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.8, 1.0, 1.6, 2.0])
def test_fit_hits_target_shares_without_ties(random_cache: Any, k: int, n: int, p: float) -> None:
    rng = np.random.default_rng(k * 7919 + n)
    val = random_cache(rng, k, n, ties=False)
    assert all(len(np.unique(row)) == n for row in val.confidence)  # no ties
    t = fit_budgeted_thresholds(val, p)
    want = np.floor(n * target_shares(p, k)).astype(int)
    # in [0, 1], except a closed exit (quota 0): +inf, which no confidence reaches
    assert t.shape == (k - 1,) and np.all(np.where(want[:-1] == 0, t == CLOSED, (t >= 0) & (t <= 1)))
    hist = ExitPolicy(val).evaluate(t).histogram[0]
    assert hist[:-1].tolist() == want[:-1].tolist()
    assert hist[-1] == n - want[:-1].sum()


def test_fit_when_an_exit_should_take_nobody(make_cache: Any) -> None:
    # p = 2, K = 4, N = 6: q = (1, 2, 4, 8)/15 → ⌊6q⌋ = (0, 0, 1, 3): exits 0 and 1 stay empty
    conf = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
            [0.15, 0.25, 0.35, 0.45, 0.55, 0.65], [0.5] * 6]
    val = make_cache(conf, np.ones((4, 6)), [1, 2, 3, 4])
    t = fit_budgeted_thresholds(val, 2.0)
    assert t[0] > 0.6 and t[1] > 0.6
    assert ExitPolicy(val).evaluate(t).histogram.tolist() == [[0, 0, 1, 5]]


def test_budgeted_batch_rejects_different_archs(val_cache: ExitCache, make_cache: Any, chain_arch: Any) -> None:
    other = make_cache(np.zeros((3, 6)), np.zeros((3, 6)), [1, 2, 4],
                       arch=chain_arch(3).replace(widths=(0.5,)))
    with pytest.raises(ValueError, match="different archs"):
        budgeted_batch(val_cache, other)


# -- MSDNet's protocol at its edges (dynamic_eval_find_threshold / dynamic_eval_with_threshold) ----------


def test_a_closed_exit_takes_no_image_on_val_or_test(make_cache: Any) -> None:
    # p = 2, K = 3, N = 4: q = (1, 2, 4)/7 → ⌊4q⌋ = (0, 1, 2): exit 0 is closed
    val = make_cache([[0.875, 0.75, 0.625, 0.5], [0.125, 0.25, 0.375, 0.5], [0.5] * 4], np.ones((3, 4)), [1, 2, 4])
    t = fit_budgeted_thresholds(val, 2.0)
    assert t.tolist() == [CLOSED, 0.5]
    assert ExitPolicy(val).evaluate(t).histogram.tolist() == [[0, 1, 3]]
    # test images far above anything val saw at exit 0, even certain ones, still do not leave there
    test = make_cache([[1.0, 1.0, 0.99, 0.95], [0.5, 0.75, 0.25, 0.125], [0.5] * 4], np.ones((3, 4)), [1, 2, 4],
                      arch=val.arch)
    (pt,) = budgeted_batch(val, test, (2.0,))
    assert pt.histogram == (0, 2, 2)
    assert pt.macs == pytest.approx((2 + 2 + 4 + 4) / 4)


def test_images_at_confidence_one_stay_at_a_closed_exit(make_cache: Any) -> None:
    # ⌊4q_0⌋ = 0 at p = 2, and every val image is certain at exit 0: none may leave there
    val = make_cache([[1.0] * 4, [1.0, 0.25, 0.375, 0.5], [0.5] * 4], np.ones((3, 4)), [1, 2, 4])
    t = fit_budgeted_thresholds(val, 2.0)
    assert t[0] == CLOSED and t[1] == 1.0  # exit 1's quota of 1 is the image at 1.0
    assert ExitPolicy(val).evaluate(t).histogram.tolist() == [[0, 1, 3]]


def test_images_at_confidence_one_are_placed_like_any_other(make_cache: Any) -> None:
    # p = 1, K = 3, N = 6: quotas (2, 2); at exit 0 three images tie at 1.0: all three leave
    # (MSDNet's ≥ threshold), and exit 1 fills its quota from the three left, not from all six
    conf = [[1.0, 1.0, 1.0, 0.5, 0.375, 0.25], [1.0, 1.0, 1.0, 0.125, 0.875, 0.75], [0.5] * 6]
    val = make_cache(conf, np.ones((3, 6)), [1, 2, 4])
    t = fit_budgeted_thresholds(val, 1.0)
    assert t.tolist() == [1.0, 0.75]
    assert ExitPolicy(val).evaluate(t).histogram.tolist() == [[3, 2, 1]]


def test_images_that_left_are_removed_from_those_to_place(make_cache: Any) -> None:
    # quotas (2, 2) of N = 6; the two most confident at exit 1 (0.9375, 0.875) already left at
    # exit 0, so exit 1's threshold is the 2nd highest among the four still there (0.5), not 0.875
    conf = [[0.875, 0.75, 0.125, 0.25, 0.375, 0.5], [0.9375, 0.875, 0.5, 0.625, 0.125, 0.25], [0.5] * 6]
    val = make_cache(conf, np.ones((3, 6)), [1, 2, 4])
    t = fit_budgeted_thresholds(val, 1.0)
    assert t.tolist() == [0.75, 0.5]
    assert ExitPolicy(val).evaluate(t).histogram.tolist() == [[2, 2, 2]]


def test_an_exit_whose_quota_ties_used_up_is_closed(make_cache: Any) -> None:
    # p = 1, K = 3, N = 3: quotas (1, 1); all three tie at exit 0, so all leave there and exit 1
    # has no image left to reach its quota: MSDNet leaves its threshold at 1e8 (closed)
    val = make_cache([[0.75] * 3, [0.875, 0.75, 0.625], [0.5] * 3], np.ones((3, 3)), [1, 2, 4])
    t = fit_budgeted_thresholds(val, 1.0)
    assert t.tolist() == [0.75, CLOSED]
    test = make_cache([[0.125] * 3, [1.0, 0.875, 0.75], [0.5] * 3], np.ones((3, 3)), [1, 2, 4], arch=val.arch)
    assert ExitPolicy(test).evaluate(t).histogram.tolist() == [[0, 0, 3]]


def test_closed_thresholds_are_accepted_and_work_in_every_method(random_cache: Any) -> None:
    from exitnas.evaluators import check_thresholds, read_thresholds

    cache = random_cache(np.random.default_rng(0), 3, 200)
    t = np.array([[CLOSED, 0.5]] * 70 + [[0.5, CLOSED]] * 70)
    dense, bitset = (ExitPolicy(cache).evaluate(t, method=m) for m in ("dense", "bitset"))
    assert dense.histogram.tolist() == bitset.histogram.tolist()
    assert (dense.histogram[:70, 0] == 0).all() and (dense.histogram[70:, 1] == 0).all()
    assert read_thresholds("inf,0.5", 3).tolist() == [CLOSED, 0.5]
    with pytest.raises(ValueError, match=r"\[0, 1\] \(or be inf"):
        check_thresholds([1.5, 0.5], 3)
    with pytest.raises(ValueError):
        check_thresholds([-np.inf, 0.5], 3)
