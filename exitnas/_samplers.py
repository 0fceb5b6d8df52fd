"""Optuna samplers by name (``search.sampler``); each factory takes a seed."""

from __future__ import annotations

from typing import Callable

import optuna

from exitnas._registry import Registry

__all__ = ["SAMPLERS", "make_sampler"]

#: Samplers by name; each factory takes a seed.
SAMPLERS: Registry[Callable[[int], optuna.samplers.BaseSampler]] = Registry("sampler")
SAMPLERS.register("nsga2", "NSGA-II, evolutionary multi-objective (default)")(
    lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=20))
SAMPLERS.register("tpe", "multivariate TPE")(
    lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10))
SAMPLERS.register("gp", "Gaussian-process Bayesian optimisation")(
    lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=10))
SAMPLERS.register("random", "uniform random search (a baseline)")(
    lambda seed: optuna.samplers.RandomSampler(seed=seed))


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS.get(name)(seed)
