"""Test numbers of chosen trials, the protocol curves of one arch, and two baselines.

Thresholds come from the search (fit on val); test is only measured, never tuned on
(DESIGN §4). All arithmetic is on exit caches; the evaluator runs each arch once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exitnas._errors import UserError
from exitnas._trial_codec import decode_trial
from exitnas.evaluators import (
    POLICIES,
    CurvePoint,
    Evaluator,
    ExitCache,
    anytime,
    budgeted_batch,
    budgeted_oracle,
    candidate_result,
    oracle,
    policy_curve,
)
from exitnas.experiment import Experiment
from exitnas.results._front import FrontInfo, TrialRecord
from exitnas.search_space import ArchConfig, Candidate, Measured, SearchSpace

__all__ = [
    "CHOICE_RULE",
    "CurvesInfo",
    "HistogramInfo",
    "TestPoint",
    "choose_trial",
    "get_curves_info",
    "get_histogram_info",
    "get_test_info",
    "open_evaluator",
    "spread_points",
    "stage_exit_arch",
    "static_largest_arch",
    "trial_candidate",
]

MAX_POINTS = 12
#: Points of the budgeted oracle curve drawn in the report (one per image would be thousands).
ORACLE_POINTS = 200

CHOICE_RULE = ("the most accurate Pareto point (val) whose expected cost is at most the median of the "
               "front's distinct costs: the middle of the front, a balanced trade-off that a few very cheap or "
               "very costly points cannot move far")


# -- which trials ------------------------------------------------------------------------------
def choose_trial(front: FrontInfo, trial: int | None = None) -> int:
    """``trial`` if it is a complete trial of the study, else the default rule (:data:`CHOICE_RULE`)."""
    if trial is not None:
        return front.trial(trial).number
    points = front.pareto_trials
    if not points:
        raise UserError(f"study {front.study_name!r} has no feasible complete trial; choose one with --trial")
    # Over distinct costs: many trials tied at one point (thresholds that change nothing)
    # must not drag the median there.
    median = float(np.median(sorted({p.cost for p in points})))
    under = [p for p in points if p.cost <= median]
    return max(under, key=lambda p: (p.accuracy, -p.cost, -p.number)).number


def spread_points(front: FrontInfo, max_points: int = MAX_POINTS, include: tuple[int, ...] = ()) -> list[int]:
    """At most ``max_points`` Pareto trials evenly spread along the cost axis (cheapest and costliest
    kept), plus the trials in ``include``; cheapest first."""
    points = front.pareto_trials
    if len(points) > max_points:
        # Even steps in cost, each taking the nearest unused point: a front crowded at one
        # end still shows its whole range.
        costs = np.array([p.cost for p in points])
        picked: list[int] = []
        for target in np.linspace(costs[0], costs[-1], max_points):
            free = [i for i in range(len(points)) if i not in picked]
            picked.append(min(free, key=lambda i: (abs(costs[i] - target), i)))
        points = [points[i] for i in sorted(picked)]
    numbers = [p.number for p in points]
    numbers += [n for n in include if n not in numbers]
    return sorted(numbers, key=lambda n: (front.trial(n).cost, n))


# -- archs ---------------------------------------------------------------------------------------
def trial_candidate(front: FrontInfo, number: int, evaluator: Evaluator) -> Candidate:
    """The candidate trial ``number`` evaluated, decoded through the search's codec, checked
    against the evaluator's space, with its stored val accuracy and cost."""
    rec = front.trial(number)
    rule = front.study_user_attrs.get("exit_rule", "threshold")
    measured = Measured(rec.accuracy, rec.cost, front.cost_unit)
    cand = decode_trial(rec.number, rec.params, rec.user_attrs, evaluator.space, exit_rule=rule,
                        confidence=evaluator.kind, measured=measured)
    return cand


def static_largest_arch(space: SearchSpace) -> ArchConfig:
    """Baseline (a): the largest subnet, final exit only (a plain static network)."""
    return space.largest(all_exits=False)


def stage_exit_arch(space: SearchSpace) -> ArchConfig:
    """Baseline (b): the largest backbone with a linear exit at every stage end (MSDNet's layout)."""
    big = space.largest(all_exits=False)
    head = "linear" if "linear" in space.head_choices else space.head_choices[0]
    exits = tuple((s, space.max_depth - 1) for s in range(space.num_stages))
    return space.validate(big.replace(exits=exits, heads=(head,) * len(exits)))


# -- the evaluator -----------------------------------------------------------------------------
def open_evaluator(front: FrontInfo, checkpoint: str | Path | None, device: str | None = None) -> Evaluator:
    """The :class:`Evaluator` of the experiment the study searched (its data, recalibration,
    confidence and seed; ``checkpoint`` or the supernet the study recorded)."""
    return Experiment.from_study(front.study_user_attrs, front.study_name, checkpoint, device=device).evaluator


# -- test numbers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestPoint:
    """One trial's stored thresholds applied to test.

    Attributes:
        trial: Trial number.
        arch: Its architecture.
        thresholds: Its thresholds (one per non-final exit).
        val_accuracy: Stored validation accuracy.
        val_cost: Stored expected cost on validation, in the study's unit (MMACs or ms).
        val_accuracy_rerun: Validation accuracy measured again here (matches the stored one
            when the report measures as the search did; a gap means other weights or data).
        test_accuracy: Test accuracy with the stored thresholds.
        test_cost: Expected cost on test, in the study's unit (a latency study's trials store
            the ms of leaving at each exit, which weight the test exit shares).
        test_histogram: Test samples leaving at each exit.
        exit_mmacs: Cumulative MMACs of leaving at each exit.
        on_front: Whether the trial is on the Pareto front.
        policy: The exit policy its thresholds apply to (``evaluators.POLICIES``).
    """

    __test__ = False  # not a pytest class

    trial: int
    arch: ArchConfig
    thresholds: tuple[float, ...]
    val_accuracy: float
    val_cost: float
    val_accuracy_rerun: float
    test_accuracy: float
    test_cost: float
    test_histogram: tuple[int, ...]
    exit_mmacs: tuple[float, ...]
    on_front: bool
    policy: str = "threshold"

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["arch"] = self.arch.to_dict()
        return d


def get_test_info(front: FrontInfo, evaluator: Evaluator, trials: list[int]) -> list[TestPoint]:
    """Test numbers of ``trials`` (see :func:`spread_points`) with their stored thresholds."""
    out = []
    for n in trials:
        rec = front.trial(n)
        cand = trial_candidate(front, n, evaluator)
        arch, thr = cand.arch, np.asarray(cand.thresholds, dtype=np.float64)
        caches = evaluator.caches(arch, ("val", "test"))
        val = candidate_result(cand, caches["val"])
        test = candidate_result(cand, caches["test"], _exit_ms(rec))
        scale = 1.0 if "exit_ms" in rec.user_attrs else 1e-6
        out.append(TestPoint(n, arch, tuple(float(v) for v in thr), rec.accuracy, rec.cost,
                             float(val.accuracy[0]), float(test.accuracy[0]), float(test.expected_cost[0]) * scale,
                             tuple(int(v) for v in test.histogram[0]),
                             tuple(float(m) / 1e6 for m in caches["test"].exit_macs()), n in front.pareto,
                             cand.policy))
    return out


def _exit_ms(rec: TrialRecord) -> np.ndarray | None:
    """The costs a trial's objective weighted: its exits' ms after a latency search, else MACs (None)."""
    ms = rec.user_attrs.get("exit_ms")
    return None if ms is None else np.asarray(ms, dtype=np.float64)


# -- curves of one arch ------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvesInfo:
    """The field's protocols on test for the chosen trial's arch, and two baselines.

    Costs are in MACs (as in :class:`~exitnas.evaluators.CurvePoint`).

    Attributes:
        trial: The chosen trial.
        arch: Its architecture.
        budgeted_batch: Thresholds fit on val per p, applied to test.
        anytime: Every sample leaving at exit k, on test.
        oracle: Each test sample leaving at its first correct exit.
        searched: The trial's own (searched) thresholds on test.
        static_arch: Baseline (a), the largest subnet with its final exit only.
        static: Its test point.
        stage_arch: Baseline (b), the largest backbone with a linear exit per stage end.
        stage_budgeted_batch: Its budgeted-batch curve (fit on val, applied to test).
        stage_oracle: Its oracle point on test.
        budgeted_oracle: The chosen arch's budgeted oracle on test: the best accuracy any exit
            policy could reach at each expected cost (:func:`~exitnas.evaluators.budgeted_oracle`).
        policies: Per exit policy (``evaluators.POLICIES``), its budgeted curve on test: fit on
            val, the setting per budget chosen on val (:func:`~exitnas.evaluators.policy_curve`).
    """

    trial: int
    arch: ArchConfig
    budgeted_batch: tuple[CurvePoint, ...]
    anytime: tuple[CurvePoint, ...]
    oracle: CurvePoint
    searched: CurvePoint
    static_arch: ArchConfig
    static: CurvePoint
    stage_arch: ArchConfig
    stage_budgeted_batch: tuple[CurvePoint, ...]
    stage_oracle: CurvePoint
    budgeted_oracle: tuple[CurvePoint, ...] = ()
    policies: tuple[tuple[str, tuple[CurvePoint, ...]], ...] = ()


def get_curves_info(front: FrontInfo, evaluator: Evaluator, trial: int) -> CurvesInfo:
    """Budgeted-batch, anytime and oracle of ``trial``'s arch on test, with the baselines."""
    cand = trial_candidate(front, trial, evaluator)
    arch, thr = cand.arch, np.asarray(cand.thresholds, dtype=np.float64)
    c = evaluator.caches(arch, ("val", "test"))
    res = candidate_result(cand, c["test"])
    searched = CurvePoint(float(res.expected_cost[0]), float(res.accuracy[0]), None, tuple(float(v) for v in thr),
                          tuple(int(v) for v in res.histogram[0]))
    static_arch = static_largest_arch(evaluator.space)
    static_test = evaluator.cache(static_arch, "test")
    static = CurvePoint(float(static_test.exit_macs()[-1]), float(static_test.exit_accuracy()[-1]), 0, (),
                        (static_test.num_samples,))
    stage_arch = stage_exit_arch(evaluator.space)
    sc = evaluator.caches(stage_arch, ("val", "test"))
    return CurvesInfo(trial, arch, tuple(budgeted_batch(c["val"], c["test"])), tuple(anytime(c["test"])),
                      oracle(c["test"]), searched, static_arch, static, stage_arch,
                      tuple(budgeted_batch(sc["val"], sc["test"])), oracle(sc["test"]),
                      tuple(budgeted_oracle(c["test"], max_points=ORACLE_POINTS)), _policy_curves(c["val"], c["test"]))


def _policy_curves(val: ExitCache, test: ExitCache) -> tuple[tuple[str, tuple[CurvePoint, ...]], ...]:
    """Every exit policy's budgeted test curve (none for caches without logits, or one exit)."""
    if val.logits is None or test.logits is None or val.num_exits < 2:
        return ()
    return tuple((name, tuple(policy_curve(name, val, test))) for name in POLICIES)


# -- exit histogram ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HistogramInfo:
    """Where the chosen trial's samples leave, on test (measured) and val (stored).

    Attributes:
        trial: The trial.
        labels: One per exit: ``exit k (stage, block) head``.
        test_counts: Test samples leaving at each exit with the stored thresholds.
        val_counts: The stored validation histogram (empty if the trial stored none).
        exit_mmacs: Cumulative MMACs of leaving at each exit.
    """

    trial: int
    labels: tuple[str, ...]
    test_counts: tuple[int, ...]
    val_counts: tuple[int, ...]
    exit_mmacs: tuple[float, ...]


def get_histogram_info(front: FrontInfo, point: TestPoint) -> HistogramInfo:
    """The exit histogram of a measured trial (test) beside its stored one (val)."""
    arch = point.arch
    labels = tuple(f"exit {k} ({s},{b}) {h}" for k, ((s, b), h) in enumerate(zip(arch.exits, arch.heads)))
    val = front.trial(point.trial).user_attrs.get("exit_histogram") or []
    return HistogramInfo(point.trial, labels, point.test_histogram, tuple(int(v) for v in val), point.exit_mmacs)
