"""Opening an exitnas study: create it once with its metadata, or load it and check it matches.

Shared by the search (which writes trials) and its workers; the report reads studies through
``results`` and never through this module's callers' memory. Each worker opens the study with
its own sampler seed (:class:`WorkerSampler`), so that N workers draw N different streams.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from exitnas._errors import UserError
from exitnas._samplers import SAMPLERS, make_sampler
from exitnas._storage import open_storage, retry_creation_race
from exitnas.experiment import COST_UNITS, Experiment

__all__ = ["DIRECTIONS", "METRIC_NAMES", "LATENCY_METRIC_NAMES", "WorkerSampler", "completed",
           "create_or_load_study", "metric_names", "worker_seed"]

DIRECTIONS = ["maximize", "minimize"]
METRIC_NAMES = ["val_accuracy", COST_UNITS["macs"].metric]
LATENCY_METRIC_NAMES = ["val_accuracy", COST_UNITS["latency"].metric]


def metric_names(objective: str) -> list[str]:
    """The study's metric names for ``search.objective`` (what optuna-dashboard shows)."""
    return ["val_accuracy", COST_UNITS[objective].metric]


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def worker_seed(seed: int, worker: int) -> int:
    """The sampler seed of worker ``worker`` of a study seeded ``seed``.

    Worker 0 keeps the study seed (a one-process search draws what it always drew); the others
    get a SeedSequence draw of ``(seed, worker)``, so no two workers' streams coincide (with
    ``seed + worker``, worker 1 of seed 0 would replay worker 0 of seed 1).
    """
    if worker == 0:
        return seed
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])


class WorkerSampler(BaseSampler):
    """The study's sampler (``search.sampler``) seeded for one worker (:func:`worker_seed`).

    A worker not told its identity (``worker=None``: a plain ``exitnas search`` process) takes
    the number of the first trial it creates or pops: the storage numbers trials one by one, so
    N processes started at once on one study get N different identities without being told,
    and a resumed study gives a rerun an identity (and a stream) of its own. The sampler is
    built in :meth:`before_trial`, which Optuna calls once the trial exists and before anything
    is sampled.
    """

    def __init__(self, name: str, seed: int, worker: int | None = None) -> None:
        SAMPLERS.get(name)  # a bad name fails here, before a database is made
        self.name, self.study_seed, self.worker = name, seed, worker
        self._base = None if worker is None else make_sampler(name, self.seed)
        self.current: int | None = None  # storage id of the trial this worker runs now

    @property
    def seed(self) -> int | None:
        """This worker's seed (None until its identity is known)."""
        return None if self.worker is None else worker_seed(self.study_seed, self.worker)

    @property
    def base(self) -> BaseSampler:
        if self._base is None:
            raise RuntimeError("WorkerSampler: no trial yet, so no identity and no sampler")
        return self._base

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.current = trial._trial_id
        if self._base is None:
            self.worker = trial.number
            self._base = make_sampler(self.name, self.seed)
        self._base.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def create_or_load_study(exp: Experiment, worker: int | None = None) -> optuna.Study:
    """Open the study named in ``search``, creating it once; a resumed study must match the experiment.

    Safe when N processes start at one instant on a fresh database: the losers of the creation
    race load the winner's study (:func:`~exitnas._storage.retry_creation_race`).

    Args:
        exp: The experiment.
        worker: This worker's identity, which seeds its sampler (:class:`WorkerSampler`); None:
            the number of the first trial it runs.
    """
    sc = exp.cfg.search
    sampler = WorkerSampler(sc.sampler, sc.seed, worker)
    storage = open_storage(sc.storage)
    study, created = retry_creation_race(lambda: _create_or_load(storage, sc.study, sampler))
    if created:
        retry_creation_race(lambda: _describe(study, exp))
    else:
        _check_same_study(study, exp)
    return study


def _create_or_load(storage: optuna.storages.BaseStorage, name: str,
                    sampler: BaseSampler) -> tuple[optuna.Study, bool]:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler), False
    except KeyError:
        pass
    try:
        return optuna.create_study(storage=storage, study_name=name, directions=DIRECTIONS, sampler=sampler), True
    except optuna.exceptions.DuplicatedStudyError:  # another process created it meanwhile
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler), False


def _describe(study: optuna.Study, exp: Experiment) -> None:
    """Metric names (what optuna-dashboard shows) and what a resumed study is checked against."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names(exp.cfg.search.objective))
    for key, value in _study_attrs(exp).items():
        study.set_user_attr(key, value)


def _study_attrs(exp: Experiment) -> dict[str, object]:
    sc = exp.cfg.search
    return {"exitnas_space": exp.space.to_dict(), "objective": sc.objective, "exit_rule": sc.exit_rule,
            "checkpoint": str(exp.checkpoint.resolve()), "config": exp.cfg.to_dict(),
            "classes": list(exp.splits.classes), "threads": torch.get_num_threads()}


def _check_same_study(study: optuna.Study, exp: Experiment) -> None:
    sc = exp.cfg.search
    where = f"study {study.study_name!r} in {sc.storage}"
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names
    if directions != DIRECTIONS or (names is not None and list(names) != metric_names(sc.objective)):
        raise UserError(f"{where} has other objectives ({names or directions}); choose another study name")
    theirs = study.user_attrs.get("exitnas_space")
    if theirs is not None and not exp.space.matches(theirs):
        raise UserError(f"{where} searched another search space; choose another study name")
    # A study another process has just created may not carry its attributes yet: nothing to check.
    rule = study.user_attrs.get("exit_rule", "threshold")
    if theirs is not None and rule != sc.exit_rule:
        raise UserError(f"{where} searched with exit rule {rule!r}, not {sc.exit_rule!r}; choose another study name")
