"""One search worker: ``study.optimize`` against the shared storage until the study has its trials.

The local backend runs one in this process; the Ray backend runs N of them as Ray tasks. A
worker tags its trials, so that the trial a dead worker leaves RUNNING can be failed and
retried (:func:`retry_lost_trials`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from exitnas._config import ExperimentConfig
from exitnas._objective import ArchObjective
from exitnas._storage import open_storage
from exitnas._study import completed, create_or_load_study
from exitnas._trial_errors import recording_errors
from exitnas.experiment import Experiment

__all__ = ["retry_lost_trials", "run_worker"]


def run_worker(cfg: ExperimentConfig, checkpoint: str | Path, worker: int, n_trials: int | None,
               progress: bool = False, token: str | None = None, exp: Experiment | None = None,
               timeout: float | None = None) -> int:
    """Run trials of the study against its shared storage until it has ``search.trials``.

    Args:
        cfg: The experiment.
        checkpoint: Its supernet.
        worker: This worker's index (its sampler's seed is ``search.seed + worker``).
        n_trials: At most this many trials here (None: until the study has its trials or ``timeout``).
        progress: Show a progress bar.
        token: Tags this worker's trials (user attribute ``worker``) for :func:`retry_lost_trials`.
        exp: An already opened experiment (data and supernet loaded) to use instead of opening one.
        timeout: Stop starting trials after this many seconds.

    Returns:
        The number of trials this worker completed (other workers' trials not counted).
    """
    exp = exp or Experiment(cfg, checkpoint)
    objective = ArchObjective.for_experiment(exp, token)
    study = create_or_load_study(exp, seed_offset=worker)
    mine = [0]

    def _count(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        mine[0] += trial.state == TrialState.COMPLETE

    callbacks: list[Any] = [optuna.study.MaxTrialsCallback(cfg.search.trials, states=(TrialState.COMPLETE,)), _count]
    bar = _progress_bar(study, cfg.search.trials, objective.unit.unit) if progress else None
    if bar is not None:
        callbacks.append(bar)
    # A trial's error: its full text in the trial's record (the log says one line, see _trial_errors).
    study.optimize(recording_errors(objective), n_trials=n_trials, timeout=timeout, callbacks=callbacks,
                   gc_after_trial=False)
    if bar is not None:
        bar.close()
    return mine[0]


class _progress_bar:  # noqa: N801 - a callback, named as the function it stands in for
    """A tqdm bar ticked by each finished trial, showing its objectives."""

    def __init__(self, study: optuna.Study, total: int, unit: str) -> None:
        from tqdm.auto import tqdm

        self.unit = unit
        self.bar = tqdm(total=total, initial=completed(study), desc="search", unit="trial", dynamic_ncols=True)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.bar.update(1)
        if trial.values:
            self.bar.set_postfix({"acc": f"{trial.values[0]:.4f}", self.unit: f"{trial.values[1]:.2f}"})

    def close(self) -> None:
        self.bar.close()


def retry_lost_trials(cfg: ExperimentConfig, token: str) -> int:
    """Fail the RUNNING trials of a dead worker (tagged ``token``) and enqueue their params again.

    RDB storages do this themselves through heartbeats; Optuna's journal file has none, so
    the Ray driver calls this when a worker dies. Returns how many trials were retried.
    """
    storage = open_storage(cfg.search.storage, heartbeat=False)
    study = optuna.load_study(study_name=cfg.search.study, storage=storage)
    lost = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == token]
    for t in lost:
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return len(lost)


def stored_completed(cfg: ExperimentConfig) -> int:
    """Complete trials of the config's study, read from the database."""
    return completed(optuna.load_study(study_name=cfg.search.study,
                                       storage=open_storage(cfg.search.storage, heartbeat=False)))
