"""The Pareto front of (accuracy, cost) points: the one implementation every part uses."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["pareto_mask"]


def pareto_mask(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Non-dominated points for accuracy (max) and cost (min); equal points all stay.

    A point is dominated when another is at least as good in both and better in one.
    Sorting by cost makes this O(n log n): a point survives when it is the most accurate
    at its cost and more accurate than everything strictly cheaper.
    """
    acc, cost = np.asarray(accuracy, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    keep = np.zeros(len(acc), dtype=bool)
    order = np.lexsort((-acc, cost))
    best_cheaper = -math.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and cost[order[j]] == cost[order[i]]:
            j += 1
        group = order[i:j]
        top = acc[group].max()  # first of the group (sorted by accuracy, descending)
        if top > best_cheaper:
            keep[group[acc[group] == top]] = True
        best_cheaper = max(best_cheaper, top)
        i = j
    return keep
