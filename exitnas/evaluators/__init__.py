"""Measuring archs: BN recalibration, exit caches, costs, threshold policy, other exit policies and protocols."""

from __future__ import annotations

from exitnas.evaluators._cache import ExitCache, ExitCacheStore, build_exit_cache
from exitnas.evaluators._cost import ExitCosts, count_macs, exit_costs
from exitnas.evaluators._evaluator import TRAIN_CACHE_IMAGES, Evaluator, fit_subnet_ensemble, weights_digest
from exitnas.evaluators._latency import LatencyTable, profile_space
from exitnas.evaluators._policies import (
    CURVE_BUDGETS,
    POLICIES,
    FittedPolicy,
    Policy,
    agreement_runs,
    candidate_result,
    decide,
    decision_macs,
    exit_features,
    fit_policy,
    fit_searched,
    leave_targets,
    policy_curve,
)
from exitnas.evaluators._policy import ExitPolicy, PolicyResult, check_thresholds, read_thresholds
from exitnas.evaluators._protocols import (
    CLOSED,
    DEFAULT_P_SWEEP,
    CurvePoint,
    accuracy_at,
    anytime,
    budgeted_batch,
    budgeted_oracle,
    fit_budgeted_thresholds,
    fit_to_budget,
    oracle,
    target_shares,
)
from exitnas.evaluators._recalibrate import recalibrate_bn, recalibrated_subnet
from exitnas.evaluators._rules import (
    BOF_BETA_RANGE,
    EXIT_RULES,
    POLICY_RULES,
    bof_thresholds,
    drop_exits,
    fit_bof_beta,
    leaving_exits,
    share_thresholds,
)
from exitnas.runtime import GraphedEarlyExit  # re-exported: the README documents it here

__all__ = [
    "TRAIN_CACHE_IMAGES",
    "fit_subnet_ensemble",
    "POLICIES",
    "FittedPolicy",
    "Policy",
    "agreement_runs",
    "CURVE_BUDGETS",
    "candidate_result",
    "decide",
    "decision_macs",
    "exit_features",
    "fit_policy",
    "fit_searched",
    "leave_targets",
    "policy_curve",
    "BOF_BETA_RANGE",
    "EXIT_RULES",
    "POLICY_RULES",
    "bof_thresholds",
    "drop_exits",
    "fit_bof_beta",
    "CLOSED",
    "leaving_exits",
    "share_thresholds",
    "DEFAULT_P_SWEEP",
    "CurvePoint",
    "Evaluator",
    "ExitCache",
    "ExitCacheStore",
    "ExitCosts",
    "ExitPolicy",
    "GraphedEarlyExit",
    "LatencyTable",
    "PolicyResult",
    "accuracy_at",
    "anytime",
    "budgeted_batch",
    "budgeted_oracle",
    "build_exit_cache",
    "check_thresholds",
    "count_macs",
    "exit_costs",
    "fit_budgeted_thresholds",
    "fit_to_budget",
    "oracle",
    "profile_space",
    "read_thresholds",
    "recalibrate_bn",
    "recalibrated_subnet",
    "target_shares",
    "weights_digest",
]
