"""Bag-of-features exit rule (Passalis et al. 2020): one hyperparameter for every exit.

A sample leaves exit k when its confidence exceeds ``β × (mean confidence of exit k on
training images)``. The means come from the subnet's exit cache on training images (the
recalibration subset, never validation or test); ``β`` is the only knob, searched or fit
to a budget on validation.
"""

from __future__ import annotations

import numpy as np

from exitnas._registry import Registry
from exitnas.evaluators._cache import ExitCache
from exitnas.evaluators._policy import ExitPolicy

__all__ = ["BOF_BETA_RANGE", "EXIT_RULES", "bof_thresholds", "fit_bof_beta"]

#: Exit rules by name (``search.exit_rule``): what a trial suggests for the exits' thresholds.
EXIT_RULES: Registry[str] = Registry("exit rule")
EXIT_RULES.register("threshold", "a confidence threshold per exit, each searched (default)")("threshold")
EXIT_RULES.register("bof", "bag-of-features rule: one searched beta; leave when confidence >= "
                           "beta x the exit's mean confidence on training images")("bof")
#: The searched range of the bag-of-features rule's beta.
BOF_BETA_RANGE = (0.5, 1.5)


def bof_thresholds(train_cache: ExitCache, beta: float | np.ndarray) -> np.ndarray:
    """Thresholds of the non-final exits: ``β`` × each exit's mean training confidence.

    Capped at 1 (confidences lie in [0, 1]; exitnas's rule is "confidence ≥ threshold", so
    a capped exit still lets out the samples it is certain of).
    """
    means = train_cache.confidence.mean(axis=1)[:-1].astype(np.float64)
    return np.minimum(1.0, np.asarray(beta, dtype=np.float64) * means)


def fit_bof_beta(train_cache: ExitCache, val_cache: ExitCache, budget_macs: float,
                 betas: np.ndarray | None = None) -> float:
    """The smallest ``β`` (earliest exits) whose expected MACs on ``val_cache`` fit ``budget_macs``.

    Expected MACs fall as ``β`` falls, so this is the most accurate setting within the budget
    up to the grid (``betas``, default 0.50…2.00 in steps of 0.005). If none fits, the
    smallest ``β`` of the grid is returned.
    """
    betas = np.arange(0.5, 2.0001, 0.005) if betas is None else np.asarray(betas, dtype=np.float64)
    thr = bof_thresholds(train_cache, betas[:, None])  # B × (exits − 1)
    res = ExitPolicy(val_cache).evaluate(thr)
    fits = np.flatnonzero(res.expected_cost <= budget_macs)
    return float(betas[fits[-1]]) if len(fits) else float(betas[0])
