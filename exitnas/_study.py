"""Opening an exitnas study: create it once with its metadata, or load it and check it matches.

Shared by the search (which writes trials) and its workers; the report reads studies through
``results`` and never through this module's callers' memory.
"""

from __future__ import annotations

import warnings

import optuna
import torch
from optuna.trial import TrialState

from exitnas._errors import UserError
from exitnas._samplers import make_sampler
from exitnas._storage import open_storage
from exitnas.experiment import COST_UNITS, Experiment

__all__ = ["DIRECTIONS", "METRIC_NAMES", "LATENCY_METRIC_NAMES", "completed", "create_or_load_study",
           "metric_names"]

DIRECTIONS = ["maximize", "minimize"]
METRIC_NAMES = ["val_accuracy", COST_UNITS["macs"].metric]
LATENCY_METRIC_NAMES = ["val_accuracy", COST_UNITS["latency"].metric]


def metric_names(objective: str) -> list[str]:
    """The study's metric names for ``search.objective`` (what optuna-dashboard shows)."""
    return ["val_accuracy", COST_UNITS[objective].metric]


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def create_or_load_study(exp: Experiment, seed_offset: int = 0) -> optuna.Study:
    """Open the study named in ``search``, creating it once; a resumed study must match the experiment."""
    sc = exp.cfg.search
    sampler = make_sampler(sc.sampler, sc.seed + seed_offset)  # a bad name fails before a database is made
    storage = open_storage(sc.storage)
    try:
        study = optuna.load_study(study_name=sc.study, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(storage=storage, study_name=sc.study, directions=DIRECTIONS, sampler=sampler,
                                    load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(sc.objective))
        for key, value in _study_attrs(exp).items():
            study.set_user_attr(key, value)
        return study
    _check_same_study(study, exp)
    return study


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
    rule = study.user_attrs.get("exit_rule", "threshold")
    if rule != sc.exit_rule:
        raise UserError(f"{where} searched with exit rule {rule!r}, not {sc.exit_rule!r}; choose another study name")
