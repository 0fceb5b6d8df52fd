"""The front read from the database: Pareto set, constraints, the chosen trial, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import pytest

from exitnas._errors import UserError
from exitnas.results import FrontInfo, TrialRecord, choose_trial, load_front, pareto_mask, spread_points

MakeStudy = Callable[..., tuple[str, optuna.Study]]


def _brute_pareto(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    ge = (acc[None, :] >= acc[:, None]) & (cost[None, :] <= cost[:, None])
    gt = (acc[None, :] > acc[:, None]) | (cost[None, :] < cost[:, None])
    return ~(ge & gt).any(axis=1)


def test_pareto_mask_by_hand() -> None:
    acc = np.array([0.5, 0.6, 0.6, 0.4, 0.7, 0.6])
    cost = np.array([1.0, 2.0, 2.0, 1.0, 5.0, 3.0])
    # 3 is dominated by 0 (same cost, less accurate); 1 and 2 are equal and both stay; 5 is dominated by 1
    assert pareto_mask(acc, cost).tolist() == [True, True, True, False, True, False]


@pytest.mark.parametrize("seed", range(4))
def test_pareto_mask_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    acc, cost = np.round(rng.random(200), 1), np.round(rng.random(200) * 5, 1)  # many ties
    assert pareto_mask(acc, cost).tolist() == _brute_pareto(acc, cost).tolist()


def test_front_is_read_from_the_database(make_study: MakeStudy) -> None:
    values = [(0.5, 1.0), (0.6, 2.0), (0.4, 1.5), (0.7, 5.0), (0.6, 2.0), (0.65, 6.0)]
    url, study = make_study(values)
    study.enqueue_trial({})  # a WAITING trial: counted, never on the front
    front = load_front(url, "s")
    assert [(t.number, t.accuracy, t.cost) for t in front.trials] == [(i, a, m) for i, (a, m) in enumerate(values)]
    assert [t.user_attrs["tag"] for t in front.trials] == list(range(len(values)))
    assert front.pareto == (0, 1, 4, 3)  # cheapest first; equal points both stay
    assert set(front.pareto) == {t.number for t in optuna.load_study(study_name="s", storage=url).best_trials}
    assert front.num_trials == len(values) + 1 and not front.has_constraints
    assert front.trial(3).params == {"thr_0_0": 0.5}


def test_infeasible_trials_leave_the_front(make_study: MakeStudy) -> None:
    url, _ = make_study([(0.5, 1.0), (0.9, 2.0), (0.7, 3.0)], constraints=[0.0, 0.5, -1.0])
    front = load_front(url, "s")
    assert front.has_constraints
    assert [t.feasible for t in front.trials] == [True, False, True]
    assert front.pareto == (0, 2)


def test_journal_storage(make_study: MakeStudy, fast_tmp: Path) -> None:
    url = f"journal:///{fast_tmp / 'study.log'}"
    make_study([(0.5, 1.0), (0.6, 2.0)], url=url)
    assert load_front(url).pareto == (0, 1)  # the only study needs no name


def _records(values: list[tuple[float, float]]) -> FrontInfo:
    trials = tuple(TrialRecord(i, a, m, True) for i, (a, m) in enumerate(values))
    mask = pareto_mask(np.array([a for a, _ in values]), np.array([m for _, m in values]))
    pareto = tuple(sorted((t.number for t, k in zip(trials, mask) if k), key=lambda n: values[n][1]))
    return FrontInfo("sqlite:///x.db", "s", ("val_accuracy", "expected_MMACs"), trials, pareto, False, len(trials))


def test_default_choice_is_the_most_accurate_at_or_below_the_median_cost() -> None:
    front = _records([(0.5, 1.0), (0.6, 2.0), (0.7, 3.0), (0.8, 4.0), (0.3, 9.0)])
    assert choose_trial(front) == 1  # front costs 1, 2, 3, 4: median 2.5
    front = _records([(0.5, 1.0), (0.6, 2.0), (0.7, 3.0)])
    assert choose_trial(front) == 1  # median 2
    assert choose_trial(_records([(0.5, 1.0)])) == 0
    assert choose_trial(front, 2) == 2 and choose_trial(_records([(0.5, 1.0), (0.4, 2.0)]), 1) == 1


def test_a_trial_not_in_the_study_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"trial 7 is not a complete trial .* \(complete: 0-2\)"):
        choose_trial(_records([(0.5, 1.0), (0.6, 2.0), (0.7, 3.0)]), 7)


def test_spread_points_caps_and_covers_the_range() -> None:
    values = [(0.5 + i / 100, 1.0 + i**2) for i in range(30)]  # 30 Pareto points, crowded when cheap
    front = _records(values)
    picked = spread_points(front, 12, include=(5,))
    assert len(picked) == 13 and 5 in picked
    assert picked[0] == 0 and picked[-1] == 29
    assert picked == sorted(picked, key=lambda n: values[n][1])
    assert spread_points(_records(values[:4]), 12) == [0, 1, 2, 3]


def test_bad_input(make_study: MakeStudy, fast_tmp: Path) -> None:
    missing = fast_tmp / "nope.db"
    with pytest.raises(UserError, match="does not exist"):
        load_front(f"sqlite:///{missing}", "s")
    assert not missing.exists()  # reading never creates a database
    with pytest.raises(UserError, match="not a storage URL"):
        load_front("mysql://x/y", "s")
    url, _ = make_study([])
    with pytest.raises(UserError, match="has no complete trial"):
        load_front(url, "s")
    with pytest.raises(UserError, match=r"'other' is not in .* \(studies there: s\)"):
        load_front(url, "other")
    optuna.create_study(storage=url, study_name="single", direction="maximize")
    with pytest.raises(UserError, match="not an exitnas search"):
        load_front(url, "single")
    with pytest.raises(UserError, match="holds 2 studies"):
        load_front(url)
