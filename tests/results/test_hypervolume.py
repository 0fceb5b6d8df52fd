"""2-D hypervolume on hand-made fronts, and the search-progress curve built from it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from exitnas.results import FrontInfo, TrialRecord, get_progress_info, hypervolume_2d


def _brute_force(points: np.ndarray, ref: tuple[float, float]) -> float:
    """Exact area of the union of the boxes [x, rx] × [y, ry] by coordinate compression."""
    xs = np.unique(np.concatenate([points[:, 0], [ref[0]]]))
    ys = np.unique(np.concatenate([points[:, 1], [ref[1]]]))
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs[:-1], xs[1:]), zip(ys[:-1], ys[1:])):
        if x1 > ref[0] or y1 > ref[1]:
            continue
        if np.any((points[:, 0] <= x0) & (points[:, 1] <= y0)):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_no_point_is_zero() -> None:
    assert hypervolume_2d([], (1.0, 1.0)) == 0.0


def test_one_point_is_its_box() -> None:
    assert hypervolume_2d([(0.2, 1.0)], (1.0, 2.0)) == pytest.approx(0.8)


def test_staircase_of_two_points() -> None:
    # (0.1, 3) adds 0.9 × 1; (0.5, 1) adds 0.5 × 2 below it
    assert hypervolume_2d([(0.5, 1.0), (0.1, 3.0)], (1.0, 4.0)) == pytest.approx(1.9)


def test_dominated_and_duplicate_points_add_nothing() -> None:
    front = [(0.1, 3.0), (0.5, 1.0)]
    base = hypervolume_2d(front, (1.0, 4.0))
    assert hypervolume_2d(front + [(0.6, 3.5), (0.5, 1.0), (0.1, 3.0), (0.5, 3.0)], (1.0, 4.0)) == pytest.approx(base)


def test_points_outside_or_on_the_reference_add_nothing() -> None:
    assert hypervolume_2d([(1.0, 0.5), (0.5, 2.0), (2.0, -1.0)], (1.0, 2.0)) == 0.0
    assert hypervolume_2d([(0.5, 0.5), (1.5, 0.1)], (1.0, 1.0)) == pytest.approx(0.25)


def test_unit_square_corner() -> None:
    assert hypervolume_2d([(0.0, 0.0)], (1.0, 1.0)) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_random_sets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pts = np.round(rng.random((25, 2)) * np.array([1.0, 3.0]), 2)  # rounding makes ties
    ref = (1.0, 3.3)
    got = hypervolume_2d(pts, ref)
    assert got == pytest.approx(_brute_force(pts, ref))
    assert got == pytest.approx(hypervolume_2d(pts[rng.permutation(len(pts))], ref))


def _front(values: list[tuple[float, float]], feasible: list[bool] | None = None) -> FrontInfo:
    feasible = feasible or [True] * len(values)
    trials = tuple(TrialRecord(i, a, m, f) for i, ((a, m), f) in enumerate(zip(values, feasible)))
    return FrontInfo("sqlite:///x.db", "s", ("val_accuracy", "expected_MMACs"), trials, (), not all(feasible),
                     len(trials))


def test_progress_is_monotone_and_ends_at_the_whole_front() -> None:
    values = [(0.3, 2.0), (0.5, 4.0), (0.2, 1.0), (0.6, 10.0), (0.55, 3.0), (0.1, 0.5), (0.4, 8.0)]
    info = get_progress_info(_front(values))
    assert info.trial_numbers == tuple(range(len(values)))
    assert info.reference == (1.0, pytest.approx(11.0))
    assert all(b >= a for a, b in zip(info.hypervolume, info.hypervolume[1:]))
    whole = hypervolume_2d([(1 - a, m) for a, m in values], info.reference)
    assert info.hypervolume[-1] == pytest.approx(whole)
    assert info.hypervolume[0] == pytest.approx((1.0 - (1 - 0.3)) * (11.0 - 2.0))
    assert info.hypervolume[6] == info.hypervolume[5]  # trial 6 is dominated by trial 4
    # the front after all trials: (0.1, .5), (0.2, 1), (0.3, 2), (0.55, 3), (0.6, 10)
    assert info.front_size[-1] == 5


def test_progress_skips_infeasible_trials() -> None:
    info = get_progress_info(_front([(0.3, 2.0), (0.9, 1.0)], feasible=[True, False]))
    assert info.hypervolume[1] == info.hypervolume[0]
    assert info.reference[1] == pytest.approx(2.2)  # max MMACs of any complete trial
