"""The budgeted oracle: exact (brute force on tiny caches), by hand, and above every policy."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from exitnas.evaluators import ExitCache, ExitPolicy, accuracy_at, budgeted_oracle, oracle


def _brute_force(cache: ExitCache, budget: float) -> float:
    """Best accuracy over every assignment of images to exits whose mean cost fits ``budget``."""
    k, n = cache.correct.shape
    cost = cache.macs[:, None] + (np.zeros((k, n)) if cache.extra_macs is None else cache.extra_macs)
    best = -1.0
    for exits in itertools.product(range(k), repeat=n):
        idx = (np.array(exits), np.arange(n))
        if cost[idx].mean() <= budget + 1e-12:
            best = max(best, float(cache.correct[idx].mean()))
    return best


def test_by_hand(hand_cache: ExitCache) -> None:
    # First right exits: 0, 1, 1, 0, 0, never (MACs 1, 2, 4). Everyone at exit 0: 3/6 right at
    # cost 1; images 1 and 2 each add 1 MAC (exit 1 costs 2).
    pts = budgeted_oracle(hand_cache)
    assert [(p.macs, p.accuracy) for p in pts] == [(1.0, 0.5), (7 / 6, 4 / 6), (8 / 6, 5 / 6)]
    # Its last point is the oracle's accuracy, cheaper: the never-right image leaves at exit 0.
    assert pts[-1].accuracy == oracle(hand_cache).accuracy
    assert pts[-1].macs < oracle(hand_cache).macs
    assert accuracy_at(pts, 1.1) == 0.5 and accuracy_at(pts, 0.9) is None


@pytest.mark.parametrize("seed", range(6))
def test_exact_against_brute_force(random_cache: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cache = random_cache(rng, 3, 6)
    if seed % 2:  # per-image extra MACs (gated nets): the cheapest exit is then per image
        cache = ExitCache(cache.arch, cache.confidence, cache.correct, cache.macs,
                          extra_macs=rng.integers(0, 50, size=cache.correct.shape).astype(np.float64))
    pts = budgeted_oracle(cache)
    budgets = np.unique(np.concatenate([[p.macs for p in pts], np.linspace(0, cache.macs[-1] + 60, 25)]))
    for b in budgets:
        got = accuracy_at(pts, float(b))
        want = _brute_force(cache, float(b))
        assert (got if got is not None else -1.0) == pytest.approx(want), b


def test_above_every_threshold_vector_and_thinned(random_cache: Any) -> None:
    rng = np.random.default_rng(7)
    cache = random_cache(rng, 4, 300)
    pts = budgeted_oracle(cache)
    assert all(a.macs < b.macs and a.accuracy < b.accuracy for a, b in zip(pts, pts[1:]))
    res = ExitPolicy(cache).evaluate(rng.random((200, 3)))
    for acc, cost in zip(res.accuracy, res.expected_cost):
        assert accuracy_at(pts, float(cost)) >= acc - 1e-12
    thin = budgeted_oracle(cache, max_points=10)
    assert len(thin) <= 10 and thin[0] == pts[0] and thin[-1] == pts[-1]
