"""The field's early-exit protocols (Huang et al. 2018): anytime, budgeted batch, oracle; and the
budgeted oracle, the ceiling of every policy at every budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exitnas.evaluators._cache import ExitCache
from exitnas.evaluators._policy import ExitPolicy, PolicyResult

__all__ = ["CLOSED", "DEFAULT_P_SWEEP", "CurvePoint", "accuracy_at", "anytime", "budgeted_batch", "budgeted_oracle",
           "fit_budgeted_thresholds", "fit_to_budget", "oracle", "target_shares"]

#: The threshold of a closed exit: no confidence (all lie in [0, 1]) reaches it.
CLOSED = float("inf")
#: Huang et al. sweep p over (0, 2]; p < 1 sends more samples to early exits.
DEFAULT_P_SWEEP: tuple[float, ...] = tuple(np.round(np.linspace(0.05, 2.0, 40), 4))


@dataclass(frozen=True)
class CurvePoint:
    """One point of a cost/accuracy curve."""

    macs: float
    accuracy: float
    param: float | None = None  # exit index (anytime) or p (budgeted batch)
    thresholds: tuple[float, ...] = ()
    histogram: tuple[int, ...] = ()


def anytime(cache: ExitCache) -> list[CurvePoint]:
    """Accuracy of exit k against its cumulative MACs (every sample leaves at exit k)."""
    acc, macs = cache.exit_accuracy(), cache.exit_macs()
    return [CurvePoint(float(macs[k]), float(acc[k]), k) for k in range(cache.num_exits)]


def target_shares(p: float, num_exits: int) -> np.ndarray:
    """q_k ∝ p^k, normalised to sum 1 (Huang et al.'s geometric exit distribution)."""
    q = np.power(float(p), np.arange(num_exits, dtype=np.float64))
    return q / q.sum()


def fit_budgeted_thresholds(val: ExitCache, p: float) -> np.ndarray:
    """Thresholds that send ⌊N·q_k⌋ validation samples out at exit k, exit by exit, as MSDNet's
    dynamic evaluation fits them (``dynamic_eval_find_threshold``, Huang et al. 2018).

    At exit k the samples not yet placed are sorted by confidence and the ⌊N·q_k⌋-th one's
    confidence is the threshold; every unplaced sample at or above it leaves (ties may let a
    few more leave) and is removed from those still to place. An exit whose quota is 0, or
    larger than the samples left (after ties at earlier exits), is *closed*: its threshold is
    :data:`CLOSED` (+inf), so no sample leaves there, on val or on any other split, whatever its
    confidence (a sample at confidence 1.0 included). MSDNet writes 1e8 for the same purpose.
    """
    n, k = val.num_samples, val.num_exits
    q = target_shares(p, k)
    placed = np.zeros(n, dtype=bool)
    thresholds = np.full(k - 1, CLOSED)
    for j in range(k - 1):
        want = int(np.floor(n * q[j]))
        unplaced = np.flatnonzero(~placed)
        if want <= 0 or want > unplaced.size:
            continue  # closed: MSDNet's count never reaches its quota, its threshold stays 1e8
        conf = val.confidence[j]
        order = unplaced[np.argsort(-conf[unplaced], kind="stable")]
        thresholds[j] = float(conf[order[want - 1]])
        placed |= conf >= thresholds[j]
    return thresholds


def budgeted_batch(val: ExitCache, test: ExitCache, p_sweep: tuple[float, ...] = DEFAULT_P_SWEEP) -> list[CurvePoint]:
    """For each p: fit thresholds on ``val``, apply them to ``test`` → (expected MACs, accuracy)."""
    if val.arch != test.arch:
        raise ValueError("val and test caches are of different archs")
    thresholds = np.stack([fit_budgeted_thresholds(val, p) for p in p_sweep])
    res = ExitPolicy(test).evaluate(thresholds)
    return [_point(res, i, p, thresholds[i]) for i, p in enumerate(p_sweep)]


def fit_to_budget(val: ExitCache, budget: float, p_sweep: tuple[float, ...] = DEFAULT_P_SWEEP) -> CurvePoint | None:
    """Budgeted batch at one budget: of the sweep's budgeted-batch fits on ``val``, the most
    accurate whose expected cost on ``val`` is at most ``budget`` (the first of the sweep on a tie).

    Returns:
        That fit's point on ``val`` (its p, thresholds and histogram), or None when no p fits.
    """
    thresholds = np.stack([fit_budgeted_thresholds(val, p) for p in p_sweep])
    res = ExitPolicy(val).evaluate(thresholds)
    fits = np.flatnonzero(res.expected_cost <= budget)
    if not len(fits):
        return None
    i = int(fits[np.argmax(res.accuracy[fits])])
    return _point(res, i, p_sweep[i], thresholds[i])


def _point(res: PolicyResult, i: int, p: float, thresholds: np.ndarray) -> CurvePoint:
    return CurvePoint(float(res.expected_cost[i]), float(res.accuracy[i]), float(p),
                      tuple(float(v) for v in thresholds), tuple(int(v) for v in res.histogram[i]))


def oracle(cache: ExitCache) -> CurvePoint:
    """Each sample leaves at its first correct exit (else the last): no threshold rule beats it."""
    ok = cache.correct
    any_ok = ok.any(axis=0)
    first = np.where(any_ok, ok.argmax(axis=0), cache.num_exits - 1)
    hist = np.bincount(first, minlength=cache.num_exits)
    macs = cache.macs[first]
    if cache.extra_macs is not None:
        macs = macs + cache.extra_macs[first, np.arange(cache.num_samples)]
    return CurvePoint(float(macs.mean()), float(any_ok.mean()), None, (),
                      tuple(int(v) for v in hist))


def budgeted_oracle(cache: ExitCache, max_points: int | None = None) -> list[CurvePoint]:
    """The best accuracy reachable at each expected cost with perfect knowledge of every exit's answer.

    An image can only be right where some exit is right; an image no exit gets right leaves at
    its cheapest exit. Costs are counted as everywhere else (cumulative MACs of the exit left at,
    plus the image's own extra MACs where the cache has them). Every right image is worth the
    same, so the most right images within a budget are those of smallest extra cost (cost of its
    cheapest right exit minus that of its cheapest exit), taken in that order: the curve is exact,
    not a greedy bound (checked against brute force on tiny caches).

    Args:
        cache: The exit cache (test, typically: the oracle fits nothing).
        max_points: Thin the curve to about this many points (its first and last kept); None: one
            point per distinct expected cost.

    Returns:
        Points of increasing cost and accuracy, cheapest first; ``param`` is the number of images
        sent to a right exit.
    """
    cost = np.broadcast_to(cache.macs[:, None], cache.correct.shape).astype(np.float64)
    if cache.extra_macs is not None:
        cost = cost + cache.extra_macs
    cheapest = cost.min(axis=0)
    right_cost = np.where(cache.correct, cost, np.inf).min(axis=0)
    extra = np.sort(right_cost[np.isfinite(right_cost)] - cheapest[np.isfinite(right_cost)])
    n = cache.num_samples
    costs = (cheapest.sum() + np.concatenate([[0.0], np.cumsum(extra)])) / n
    taken = np.arange(len(extra) + 1)
    last = np.r_[costs[1:] > costs[:-1], True]  # of images at the same cost, the point with all of them
    pick = np.flatnonzero(last)
    if max_points is not None and len(pick) > max_points:
        pick = pick[np.unique(np.linspace(0, len(pick) - 1, max_points).round().astype(int))]
    return [CurvePoint(float(costs[j]), float(taken[j] / n), float(taken[j])) for j in pick]


def accuracy_at(points: list[CurvePoint], budget: float) -> float | None:
    """The highest accuracy among ``points`` whose cost is at most ``budget`` (None if none is)."""
    fits = [p.accuracy for p in points if p.macs <= budget]
    return max(fits) if fits else None
