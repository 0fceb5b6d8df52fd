"""ExitPolicy: a hand-built cache with answers worked out on paper, and dense/bitset against
a plain-Python loop on random caches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from exitnas._errors import UserError
from exitnas.evaluators import ExitCache, ExitPolicy, check_thresholds

# The hand cache (conftest.py): confidences, by exit then sample —
#   exit 0: 0.875 0.25  0.625  0.5    0.9375 0.125     right: 1 0 0 1 1 0
#   exit 1: 0.375 0.75  0.6875 0.4375 1.0    0.5       right: 0 1 1 0 1 0
#   exit 2: 0.5   0.875 0.8125 0.625  1.0    0.6875    right: 1 1 0 1 1 0   MACs 1, 2, 4

# thresholds → (exit of each sample, histogram, right answers, sum of MACs), all by hand.
HAND = [
    ((0.5, 0.5), [0, 1, 0, 0, 0, 1], [4, 2, 0], 4, 8),  # 0.5 ≥ 0.5 leaves (samples 3 and 5)
    ((1.0, 1.0), [2, 2, 2, 2, 1, 2], [0, 1, 5], 4, 22),  # confidence 1.0 reaches threshold 1.0
    ((0.0, 0.3), [0, 0, 0, 0, 0, 0], [6, 0, 0], 3, 6),  # threshold 0: everybody leaves at once
    ((0.9, 0.75), [2, 1, 2, 2, 0, 2], [1, 1, 4], 4, 19),
    ((0.625, 0.9375), [0, 2, 0, 2, 0, 2], [3, 0, 3], 4, 15),
]


@pytest.fixture
def hand(hand_cache: ExitCache) -> ExitCache:
    return hand_cache


def reference(cache: ExitCache, t: np.ndarray) -> np.ndarray:
    """Exit of every sample, the slow obvious way."""
    k, n = cache.confidence.shape
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = k - 1
        for j in range(k - 1):
            if float(cache.confidence[j, i]) >= float(t[j]):
                out[i] = j
                break
    return out


@pytest.mark.parametrize("t,exits,hist,right,mac_sum", HAND)
@pytest.mark.parametrize("method", ["dense", "bitset"])
def test_hand_cache(hand: ExitCache, method: str, t: tuple[float, float], exits: list[int], hist: list[int],
                    right: int, mac_sum: int) -> None:
    policy = ExitPolicy(hand)
    assert policy.exits(t).tolist() == exits
    r = policy.evaluate([t], method=method)
    assert r.histogram.tolist() == [hist]
    assert r.accuracy.tolist() == pytest.approx([right / 6])
    assert r.expected_cost.tolist() == pytest.approx([mac_sum / 6])


@pytest.mark.parametrize("method", ["dense", "bitset", "auto"])
def test_many_vectors_at_once(hand: ExitCache, method: str) -> None:
    t = np.array([h[0] for h in HAND] * 20)  # 100 vectors: auto picks the bitset
    r = ExitPolicy(hand).evaluate(t, method=method)
    assert r.histogram.shape == (100, 3)
    assert r.histogram[:5].tolist() == [h[2] for h in HAND]
    assert r.accuracy[:5] * 6 == pytest.approx([h[3] for h in HAND])
    assert r.expected_cost[:5] * 6 == pytest.approx([h[4] for h in HAND])
    assert np.array_equal(r.histogram[5:], np.tile(r.histogram[:5], (19, 1)))


def _random_thresholds(rng: np.random.Generator, cache: ExitCache, t: int) -> np.ndarray:
    """Uniform thresholds, half of them replaced by confidence values themselves, plus 0 and 1."""
    k, n = cache.confidence.shape
    th = rng.random((t, k - 1))
    if k > 1:
        pick = rng.random((t, k - 1)) < 0.5
        cols = rng.integers(0, n, size=(t, k - 1))
        exact = cache.confidence[np.arange(k - 1)[None, :], cols].astype(np.float64)
        th[pick] = exact[pick]
        th[0], th[1] = 0.0, 1.0
    return th


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("ties", [True, False])
def test_dense_bitset_and_reference_agree(random_cache: Any, k: int, n: int, ties: bool) -> None:
    rng = np.random.default_rng(1000 * k + n + ties)
    cache = random_cache(rng, k, n, ties=ties)
    th = _random_thresholds(rng, cache, 40)
    policy = ExitPolicy(cache)
    dense = policy.evaluate(th, method="dense")
    bits = policy.evaluate(th, method="bitset")
    for i, t in enumerate(th):
        ex = reference(cache, t)
        assert np.array_equal(policy.exits(t), ex)
        hist = np.bincount(ex, minlength=k)
        right = cache.correct[ex, np.arange(n)].sum()
        for r in (dense, bits):
            assert r.histogram[i].tolist() == hist.tolist()
            assert r.accuracy[i] == pytest.approx(right / n)
            assert r.expected_cost[i] == pytest.approx(cache.macs[ex].mean())
    assert np.array_equal(dense.accuracy, bits.accuracy)
    assert np.array_equal(dense.expected_cost, bits.expected_cost)


def test_bitset_tables_are_reused(random_cache: Any) -> None:
    rng = np.random.default_rng(7)
    cache = random_cache(rng, 4, 130)
    policy = ExitPolicy(cache)
    a = policy.evaluate(_random_thresholds(rng, cache, 70), method="bitset")
    tables = policy._tables
    th = _random_thresholds(rng, cache, 70)
    b = policy.evaluate(th, method="bitset")
    assert policy._tables is tables
    assert np.array_equal(b.histogram, policy.evaluate(th, method="dense").histogram)
    assert a.histogram.sum(1).tolist() == [130] * 70


@pytest.mark.parametrize("seed", range(5))
def test_raising_thresholds_never_lowers_expected_macs(random_cache: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    cache = random_cache(rng, k, int(rng.integers(1, 300)), ties=bool(seed % 2))
    lo = _random_thresholds(rng, cache, 200)
    hi = np.minimum(1.0, lo + rng.random(lo.shape) * rng.random((200, 1)))  # t ≤ t' elementwise
    hi[::4] = lo[::4]  # equal vectors too
    policy = ExitPolicy(cache)
    for method in ("dense", "bitset"):
        a, b = policy.evaluate(lo, method=method), policy.evaluate(hi, method=method)
        assert np.all(b.expected_cost >= a.expected_cost)
    for t, u in zip(lo[:20], hi[:20]):  # and each sample on its own leaves no earlier
        assert np.all(policy.exits(u) >= policy.exits(t))


def test_unknown_method(hand: ExitCache) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        ExitPolicy(hand).evaluate([(0.5, 0.5)], method="magic")


# -- check_thresholds ------------------------------------------------------------------------
def test_check_thresholds_shapes() -> None:
    assert check_thresholds([0.1, 0.2], 3).shape == (1, 2)
    assert check_thresholds(np.zeros((7, 2)), 3).shape == (7, 2)
    assert check_thresholds([], 1).shape == (1, 0)
    assert check_thresholds([0, 1], 3).dtype == np.float64


@pytest.mark.parametrize("bad,pattern", [
    ([0.5], "got 1 thresholds for an arch with 3 exits"),
    ([0.5, 0.5, 0.5], "got 3 thresholds"),
    (np.zeros((4, 3)), "got 3 thresholds"),
    ([], "got 0 thresholds"),
    ([0.5, -0.01], r"\[0, 1\]"),
    ([1.5, 0.5], r"\[0, 1\]"),
    ([float("nan"), 0.5], r"\[0, 1\]"),
])
def test_check_thresholds_errors(bad: Any, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern) as e:
        check_thresholds(bad, 3)
    assert "\n" not in str(e.value)


def test_policy_rejects_bad_thresholds(hand: ExitCache) -> None:
    with pytest.raises(UserError):
        ExitPolicy(hand).exits([0.5])
    with pytest.raises(UserError):
        ExitPolicy(hand).evaluate([[0.5, 2.0]], method="bitset")
