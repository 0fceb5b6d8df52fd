"""Evaluating an exported (or retrained) early-exit network: exit caches, thresholds, metrics, curves.

An export is judged as the search judged its trial: one pass per split builds an
:class:`~exitnas.evaluators.ExitCache`, and everything after it (its thresholds, refit to a
budget or as given, the metrics written to ``arch.json``, the field's curves) is arithmetic on
those caches. ``exitnas retrain`` and the headline benchmark both call :func:`evaluate_export`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from exitnas.data import ImageSplits
from exitnas.evaluators import (
    DEFAULT_P_SWEEP,
    CurvePoint,
    ExitCache,
    ExitPolicy,
    anytime,
    budgeted_batch,
    build_exit_cache,
    fit_budgeted_thresholds,
    oracle,
)
from exitnas.search_space import ArchConfig, StaticNet

__all__ = ["ExportCurves", "ExportEvaluation", "evaluate_export", "refit_thresholds", "split_metrics"]


@dataclass(frozen=True)
class ExportCurves:
    """The field's three curves of one exported net (Huang et al. 2018), costs in MACs.

    Attributes:
        budgeted_batch: For each p of the sweep, thresholds fit on ``fit_on``, applied to ``split``.
        anytime: Accuracy of each exit on ``split`` if every sample left there.
        oracle: Each sample of ``split`` leaving at its first correct exit.
        split: Where the curves are measured.
        fit_on: Where the budgeted-batch thresholds are fit.
    """

    budgeted_batch: tuple[CurvePoint, ...]
    anytime: tuple[CurvePoint, ...]
    oracle: CurvePoint
    split: str
    fit_on: str


@dataclass(frozen=True)
class ExportEvaluation:
    """An exported net measured on its splits.

    Attributes:
        caches: Split name → exit cache of the net on that split.
        thresholds: The thresholds the metrics use (given, or refit to a budget on ``val``).
        metrics: Split name → ``accuracy``, ``expected_mmacs``, ``exit_histogram`` and
            ``exit_accuracy`` at those thresholds (the ``metrics`` of ``arch.json``).
    """

    caches: dict[str, ExitCache]
    thresholds: tuple[float, ...]
    metrics: dict[str, dict[str, Any]]

    def curves(self, split: str = "test", fit_on: str = "val") -> ExportCurves:
        """Budgeted batch (fit on ``fit_on``), anytime and oracle on ``split``."""
        on = self.caches[split]
        return ExportCurves(tuple(budgeted_batch(self.caches[fit_on], on)), tuple(anytime(on)), oracle(on),
                            split, fit_on)


def split_metrics(cache: ExitCache, thresholds: Sequence[float] | np.ndarray,
                  exit_ms: Sequence[float] | None = None) -> dict[str, Any]:
    """One split's metrics at ``thresholds``, as ``arch.json`` records them: expected MMACs, and
    expected ms too when the ms of leaving at each exit are given (after a latency search)."""
    t = np.asarray(thresholds, dtype=np.float64)
    r = ExitPolicy(cache).evaluate(t)
    out = {"accuracy": float(r.accuracy[0]), "expected_mmacs": float(r.expected_cost[0]) / 1e6,
           "exit_histogram": r.histogram[0].tolist(), "exit_accuracy": [float(a) for a in cache.exit_accuracy()]}
    if exit_ms is not None:
        out["expected_ms"] = float(ExitPolicy(cache, exit_ms).evaluate(t).expected_cost[0])
    return out


def refit_thresholds(val: ExitCache, budget_macs: float, n_random: int = 20000, seed: int = 0,
                     costs: Sequence[float] | None = None) -> np.ndarray:
    """The thresholds with the best val accuracy whose expected cost stays within ``budget_macs``.

    Candidates: MSDNet's budgeted-batch fits over the p sweep plus random vectors, all
    evaluated at once on the cache (no forward pass). Falls back to the cheapest candidate
    when none fits the budget. ``costs`` (e.g. the ms of leaving at each exit) replace the
    cache's MACs; the budget is then in their unit.
    """
    k = val.num_exits
    if k == 1:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    cands = np.concatenate([np.stack([fit_budgeted_thresholds(val, p) for p in DEFAULT_P_SWEEP]),
                            rng.random((n_random, k - 1))])
    r = ExitPolicy(val, costs).evaluate(cands)
    ok = r.expected_cost <= budget_macs * (1 + 1e-9)
    if not ok.any():
        return cands[int(np.argmin(r.expected_cost))]
    score = np.where(ok, r.accuracy, -1.0)
    best = np.flatnonzero(score == score.max())
    return cands[best[np.argmin(r.expected_cost[best])]]


def evaluate_export(net: StaticNet, arch: ArchConfig, splits: ImageSplits, macs: Sequence[float] | np.ndarray, *,
                    thresholds: Sequence[float] | None = None, budget_macs: float | None = None,
                    budget_ms: float | None = None, exit_ms: Sequence[float] | None = None,
                    kind: str = "maxprob", device: torch.device | str = "cpu", seed: int = 0,
                    on: Sequence[str] = ("val", "test")) -> ExportEvaluation:
    """Exit caches of ``net`` on the splits ``on``, its thresholds, and their metrics.

    Give exactly one of ``thresholds`` (used as they are, e.g. an export's own),
    ``budget_macs`` (refit on ``val`` by :func:`refit_thresholds`: the most accurate
    thresholds whose val expected MACs fit the budget, as ``exitnas retrain`` does) and
    ``budget_ms`` (the same in ms, for an export of a latency search: needs ``exit_ms``).

    Args:
        net: The exported net (BN statistics as they should be measured), already on ``device``.
        arch: Its architecture.
        splits: The experiment's data; ``on`` names its splits (``train``, ``val``, ``test``).
        macs: Cumulative MACs of leaving at each exit (an export's ``costs.macs``).
        thresholds: One per non-final exit.
        budget_macs: Expected-MACs budget on val for refitting the thresholds.
        budget_ms: Expected-ms budget on val for refitting the thresholds.
        exit_ms: Ms of leaving at each exit (a latency search's); adds ``expected_ms`` to the metrics.
        kind: Confidence measure of the thresholds (``maxprob`` or ``entropy``).
        device: Where the passes run.
        seed: Seed of the refit's random candidates.
        on: Splits to measure (``val`` must be among them to refit).

    Returns:
        The caches, the thresholds and each split's metrics.

    Raises:
        ValueError: Both or neither of ``thresholds`` and ``budget_macs``; a refit without ``val``.
    """
    given = [v is not None for v in (thresholds, budget_macs, budget_ms)]
    if sum(given) != 1:
        raise ValueError("evaluate_export takes either thresholds or budget_macs (or budget_ms), not both or neither")
    if budget_ms is not None and exit_ms is None:
        raise ValueError("a budget in ms needs the ms of leaving at each exit (exit_ms)")
    if not given[0] and "val" not in on:
        raise ValueError("refitting thresholds to a budget needs the val split")
    caches = {s: build_exit_cache(net, arch, getattr(splits, f"{s}_x"), getattr(splits, f"{s}_y"), splits.mean,
                                  splits.std, macs, kind, device=device) for s in on}
    if budget_macs is not None:
        chosen = refit_thresholds(caches["val"], budget_macs, seed=seed)
    elif budget_ms is not None:
        chosen = refit_thresholds(caches["val"], budget_ms, seed=seed, costs=exit_ms)
    else:
        chosen = np.asarray(thresholds, dtype=np.float64)
    return ExportEvaluation(caches, tuple(float(t) for t in chosen),
                            {s: split_metrics(c, chosen, exit_ms) for s, c in caches.items()})
