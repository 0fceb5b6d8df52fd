"""The search objective: a trial → a :class:`Candidate` measured on val → (accuracy, expected cost).

It knows how to turn a trial into a candidate (through the codec) and which numbers to return;
how accuracy and cost are measured is the :class:`~exitnas.evaluators.Evaluator`'s business.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import numpy as np
import optuna

from exitnas._trial_codec import suggest_arch, trial_policy, write_candidate
from exitnas.evaluators import (
    EXIT_RULES,
    Evaluator,
    ExitCache,
    LatencyTable,
    bof_thresholds,
    candidate_result,
    drop_exits,
    fit_searched,
    leaving_exits,
    share_thresholds,
)
from exitnas.experiment import COST_UNITS, CostUnit, Experiment
from exitnas.search_space import ArchConfig, Candidate, Measured

__all__ = ["ArchObjective"]


class ArchObjective:
    """Trial → (validation accuracy, expected MMACs or ms), with the breakdown as user attributes.

    Args:
        evaluator: Measures archs (its confidence measure is the candidates').
        budget_mmacs: A constraint on expected MMACs (val), if any.
        latency: A latency table: the second objective is then expected ms.
        worker: Tag of this worker on its trials (default ``host:pid``).
        exit_rule: ``threshold``, ``share``, ``bof``, a policy's rule, or ``policy`` (the policy
            searched per trial) (``search.exit_rule``).
    """

    def __init__(self, evaluator: Evaluator, budget_mmacs: float | None = None,
                 latency: LatencyTable | None = None, worker: str | None = None,
                 exit_rule: str = "threshold") -> None:
        self.evaluator = evaluator
        self.exit_rule = EXIT_RULES.get(exit_rule)
        self.space = evaluator.space
        self.budget_mmacs = budget_mmacs
        self.latency = latency
        self.unit: CostUnit = COST_UNITS["latency" if latency is not None else "macs"]
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def for_experiment(cls, exp: Experiment, worker: str | None = None) -> ArchObjective:
        sc = exp.cfg.search
        return cls(exp.evaluator, sc.budget_mmacs, exp.latency, worker, sc.exit_rule)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        # Tagged before any work, so a trial left RUNNING by a dead worker can be found.
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("worker_pid", os.getpid())
        before = self.evaluator.forward_passes
        cand = self._decide(trial)
        arch, cache = cand.arch, self.evaluator.cache(cand.arch, "val")
        res = candidate_result(cand, cache)
        acc, mmacs = float(res.accuracy[0]), float(res.expected_cost[0]) / 1e6
        cost = mmacs
        if self.latency is not None:
            exit_ms = self.latency.exit_latency(self.space, arch, cand.policy)
            cost = float(candidate_result(cand, cache, np.asarray(exit_ms)).expected_cost[0])
            trial.set_user_attr("exit_ms", exit_ms)
            trial.set_user_attr("expected_MMACs", mmacs)
        write_candidate(trial, dataclasses.replace(cand, measured=Measured(acc, cost, self.unit.unit)))
        self._breakdown(trial, arch, cache, res.histogram[0].tolist())
        trial.set_user_attr("cache_reused", self.evaluator.forward_passes == before)
        if self.budget_mmacs is not None:
            trial.set_constraint("mmacs_over_budget", mmacs - self.budget_mmacs)
        return acc, cost

    def _decide(self, trial: optuna.Trial) -> Candidate:
        """The trial's candidate (arch, thresholds, policy) under the study's exit rule, not yet measured."""
        arch, thresholds = suggest_arch(trial, self.space, self.exit_rule)
        policy, params = trial_policy(trial.params, self.exit_rule), {}
        if self.exit_rule == "bof":
            caches = self.evaluator.caches(arch, ("train", "val"))
            thresholds = bof_thresholds(caches["train"], trial.params["beta"])
            trial.set_user_attr("train_confidence", caches["train"].confidence.mean(axis=1).round(6).tolist())
        elif self.exit_rule == "share":
            thresholds = share_thresholds(self.evaluator.cache(arch, "val"), thresholds)
            keep = leaving_exits(self.evaluator.cache(arch, "val"), thresholds)
            if not keep.all():
                # The exits no val image leaves at go, heads and all: the candidate is the smaller
                # arch, measured on its own cache (an exit combiner may make its outputs differ).
                trial.set_user_attr("dropped_exits", [list(p) for p, k in zip(arch.exits, keep) if not k])
                arch, thresholds = drop_exits(arch, keep), thresholds[keep[:-1]]
        elif policy != "threshold":
            thresholds, params = fit_searched(policy, thresholds, self.evaluator.cache(arch, "val"))
        return Candidate(arch, tuple(float(t) for t in thresholds), self.evaluator.kind, self.exit_rule, None,
                         policy, params)

    def _breakdown(self, trial: optuna.Trial, arch: ArchConfig, cache: ExitCache, histogram: list[int]) -> None:
        """Per-exit numbers for the dashboard and the report."""
        costs = self.evaluator.costs(arch)
        trial.set_user_attr("exit_accuracy", [round(float(a), 6) for a in cache.exit_accuracy()])
        trial.set_user_attr("exit_histogram", histogram)
        trial.set_user_attr("exit_mmacs", [m / 1e6 for m in cache.exit_macs()])
        trial.set_user_attr("head_mmacs", [m / 1e6 for m in costs.head_macs])
        trial.set_user_attr("params", list(costs.params))
