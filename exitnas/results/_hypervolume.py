"""Search progress: the 2-D hypervolume of the (validation) front after each trial.

Both objectives are turned into costs to minimise, ``(1 - accuracy, cost)``, and the
hypervolume is the area they dominate below a reference point. The reference is
``(1.0, 1.1 × the largest cost of any complete trial)``: every trial lies inside it, so
every trial that is on the front adds area, and one study's curve is comparable along
its own trials (not across studies with other reference points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from exitnas.results._front import FrontInfo

__all__ = ["ProgressInfo", "get_progress_info", "hypervolume_2d", "REFERENCE_MMACS_FACTOR"]

REFERENCE_MMACS_FACTOR = 1.1


def hypervolume_2d(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by ``points`` (both coordinates minimised) and bounded by ``reference``.

    Points not strictly better than the reference in both coordinates add nothing;
    dominated points and duplicates add nothing either.

    Args:
        points: ``(x, y)`` pairs, e.g. ``(1 - accuracy, cost)``.
        reference: ``(rx, ry)``, worse than every point that should count.

    Returns:
        The area (0.0 for no point inside the reference box).
    """
    rx, ry = float(reference[0]), float(reference[1])
    p = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
    p = p[(p[:, 0] < rx) & (p[:, 1] < ry)]
    if len(p) == 0:
        return 0.0
    # Sweep in increasing x: each point that lowers the best y so far adds the strip
    # between its y and that best y, reaching from its x to the reference.
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    area, best_y = 0.0, ry
    for x, y in p:
        if y < best_y:
            area += (rx - x) * (best_y - y)
            best_y = y
    return float(area)


@dataclass(frozen=True)
class ProgressInfo:
    """Hypervolume of the feasible validation front after each complete trial.

    Attributes:
        trial_numbers: Complete trials in increasing number.
        hypervolume: Hypervolume of the front of trials with a number up to each of them.
        front_size: Size of that front.
        reference: ``(1 - accuracy, cost)`` reference point.
    """

    trial_numbers: tuple[int, ...]
    hypervolume: tuple[float, ...]
    front_size: tuple[int, ...]
    reference: tuple[float, float]


def get_progress_info(front: FrontInfo) -> ProgressInfo:
    """The hypervolume curve of a study, from its stored trial values."""
    trials = sorted(front.trials, key=lambda t: t.number)
    reference = (1.0, REFERENCE_MMACS_FACTOR * max(t.cost for t in trials))
    numbers, volumes, sizes = [], [], []
    current: list[tuple[float, float]] = []  # the non-dominated points so far
    for t in trials:
        if t.feasible:
            q = (1.0 - t.accuracy, t.cost)
            if not any(_weakly_dominates(c, q) for c in current):
                current = [c for c in current if not _weakly_dominates(q, c)] + [q]
        numbers.append(t.number)
        volumes.append(hypervolume_2d(current, reference))
        sizes.append(len(current))
    return ProgressInfo(tuple(numbers), tuple(volumes), tuple(sizes), reference)


def _weakly_dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] <= b[1]
