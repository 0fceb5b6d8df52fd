"""Evaluating an exported (or retrained) early-exit network: exit caches, thresholds, metrics, curves.

An export is judged as the search judged its trial: one pass per split builds an
:class:`~exitnas.evaluators.ExitCache`, and everything after it (its thresholds, refit to a
budget or as given, the metrics written to ``arch.json``, the field's curves) is arithmetic on
those caches. ``exitnas retrain`` and the headline benchmark both call :func:`evaluate_export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    decide,
    fit_budgeted_thresholds,
    fit_policy,
    oracle,
)
from exitnas.search_space import ArchConfig, StaticNet

__all__ = ["ExportCurves", "ExportEvaluation", "evaluate_export", "refit_policy", "refit_thresholds", "split_metrics"]


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
        params: The exit policy's fitted state (as given, or refit on ``val`` with the thresholds).
    """

    caches: dict[str, ExitCache]
    thresholds: tuple[float, ...]
    metrics: dict[str, dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)

    def curves(self, split: str = "test", fit_on: str = "val") -> ExportCurves:
        """Budgeted batch (fit on ``fit_on``), anytime and oracle on ``split``."""
        on = self.caches[split]
        return ExportCurves(tuple(budgeted_batch(self.caches[fit_on], on)), tuple(anytime(on)), oracle(on),
                            split, fit_on)


def split_metrics(cache: ExitCache, thresholds: Sequence[float] | np.ndarray,
                  exit_ms: Sequence[float] | None = None, policy: str = "threshold",
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One split's metrics at ``thresholds`` (on ``policy``'s scores with its fitted ``params``),
    as ``arch.json`` records them: expected MMACs (the policy's decisions included), and
    expected ms too when the ms of leaving at each exit are given (after a latency search)."""
    r = decide(cache, thresholds, policy, params)
    out = {"accuracy": float(r.accuracy[0]), "expected_mmacs": float(r.expected_cost[0]) / 1e6,
           "exit_histogram": r.histogram[0].tolist(), "exit_accuracy": [float(a) for a in cache.exit_accuracy()]}
    if exit_ms is not None:
        out["expected_ms"] = float(decide(cache, thresholds, policy, params, np.asarray(exit_ms)).expected_cost[0])
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
                    on: Sequence[str] = ("val", "test"), policy: str = "threshold",
                    params: dict[str, Any] | None = None) -> ExportEvaluation:
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
        policy: The exit policy the thresholds apply to (``evaluators.POLICIES``); another than
            ``threshold`` is refit on ``val`` with them (:func:`refit_policy`).
        params: The policy's fitted state, with given ``thresholds``.

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
    params = dict(params or {})
    budget, costs = (budget_macs, None) if budget_ms is None else (budget_ms, exit_ms)
    if thresholds is not None:
        chosen = np.asarray(thresholds, dtype=np.float64)
    elif policy != "threshold":
        chosen, params = refit_policy(caches["val"], policy, float(budget), costs)
    else:
        chosen = refit_thresholds(caches["val"], float(budget), seed=seed, costs=costs)
    return ExportEvaluation(caches, tuple(float(t) for t in chosen),
                            {s: split_metrics(c, chosen, exit_ms, policy, params) for s, c in caches.items()}, params)


def refit_policy(val: ExitCache, policy: str, budget: float,
                 costs: Sequence[float] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Exit policy ``policy`` fit on ``val`` (``evaluators.fit_policy``), and its setting most
    accurate on val (as the fit ranks them) whose val expected cost, as the deployed policy
    scores val, is within ``budget`` (the cheapest when none fits): its thresholds and the
    policy's state with that setting's parameters."""
    cost_arr = None if costs is None else np.asarray(costs, dtype=np.float64)
    fitted = fit_policy(policy, val, cost_arr)
    params = fitted.policy.state()
    # A learned policy ranks its settings on out-of-fold val scores; the budget must hold for the
    # scores the export records on val (the policy fit on all of val).
    cost = np.array([decide(val, t, policy, params, cost_arr).expected_cost[0] for t in fitted.thresholds])
    fits = np.flatnonzero(cost <= budget * (1 + 1e-9))
    if len(fits):
        best = fits[fitted.val.accuracy[fits] == fitted.val.accuracy[fits].max()]
        i = int(best[np.argmin(cost[best])])
    else:
        i = int(np.argmin(cost))
    return fitted.thresholds[i], {**params, **fitted.params[i]}
