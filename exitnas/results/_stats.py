"""Rank statistics for comparing two orderings of the same archs (e.g. search against retraining)."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["kendall_tau"]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b of two rankings of the same items; ties in either ranking are handled.

    A pair tied in both rankings counts in neither the numerator nor the denominator; a pair
    tied in one only counts in that ranking's term of the denominator (τ-b's correction).

    Args:
        a: One score per item.
        b: Another score per item, in the same order.

    Returns:
        τ-b in [-1, 1]; nan when undefined (fewer than two items, or one ranking all ties).

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs two scores per item; got {len(a)} and {len(b)}")
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = _sign(a[i] - a[j]), _sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom else float("nan")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)
