"""A failing trial is recorded, not fatal; a run of failures stops the worker with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas._errors import UserError
from exitnas._objective import ArchObjective
from exitnas._workers import MAX_FAILS_IN_A_ROW, run_worker
from exitnas.experiment import Experiment


def _failing_every(monkeypatch: pytest.MonkeyPatch, pick: Callable[[int], bool]) -> None:
    real = ArchObjective.__call__

    def call(self: ArchObjective, trial: optuna.Trial) -> tuple[float, float]:
        if pick(trial.number):
            raise RuntimeError(f"boom in trial {trial.number}")
        return real(self, trial)

    monkeypatch.setattr(ArchObjective, "__call__", call)


def test_failed_trials_are_recorded_and_the_search_goes_on(trained: Any, make_cfg: Callable[..., Any],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(f"sqlite:///{tmp_path / 's.db'}", trials=6, sampler="random")
    _failing_every(monkeypatch, lambda n: n % 3 == 1)  # trials 1, 4, 7: never five in a row
    run_worker(cfg, trained.checkpoint, 0, None, exp=Experiment(cfg, trained.checkpoint))
    trials = optuna.load_study(study_name="test", storage=cfg.search.storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 6 and [t.number for t in failed] == [1, 4, 7]
    assert all("RuntimeError: boom in trial" in t.user_attrs["error"] for t in failed)


def test_failures_in_a_row_stop_with_one_line_naming_the_first(trained: Any, make_cfg: Callable[..., Any],
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(f"sqlite:///{tmp_path / 's.db'}", trials=50, sampler="random")
    _failing_every(monkeypatch, lambda n: n >= 2)
    with pytest.raises(UserError) as e:
        run_worker(cfg, trained.checkpoint, 0, None, exp=Experiment(cfg, trained.checkpoint))
    assert str(e.value).startswith(f"{MAX_FAILS_IN_A_ROW} trials in a row failed, the first with trial 2: "
                                   "RuntimeError: boom in trial 2")
    assert "\n" not in str(e.value)
    trials = optuna.load_study(study_name="test", storage=cfg.search.storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * MAX_FAILS_IN_A_ROW
