"""Results of a search: the Pareto front from the database, test numbers, curves, the HTML report."""

from __future__ import annotations

from exitnas.results._evaluate import (
    CHOICE_RULE,
    CurvesInfo,
    HistogramInfo,
    TestPoint,
    choose_trial,
    get_curves_info,
    get_histogram_info,
    get_test_info,
    open_evaluator,
    spread_points,
    stage_exit_arch,
    static_largest_arch,
)
from exitnas.results._evaluate_arch import evaluate_arch, read_arch
from exitnas.results._export import ExportResult, check_export_out, export_trial, load_trial, write_export
from exitnas.results._export_eval import (
    ExportCurves,
    ExportEvaluation,
    evaluate_export,
    refit_thresholds,
    split_metrics,
)
from exitnas.results._figures import (
    plot_curves,
    plot_front,
    plot_histogram,
    plot_progress,
)
from exitnas.results._front import FrontInfo, TrialRecord, load_front, open_study, pareto_mask
from exitnas.results._hypervolume import ProgressInfo, get_progress_info, hypervolume_2d
from exitnas.results._report import VAL_GAP_WARN, ReportResult, build_report, default_out_dir
from exitnas.results._retrain import RetrainResult, retrain_export, untrained_net
from exitnas.results._stats import kendall_tau
from exitnas.runtime import EarlyExitModel, load_export  # re-exported: the README documents them here

__all__ = [
    "CHOICE_RULE",
    "CurvesInfo",
    "EarlyExitModel",
    "ExportCurves",
    "ExportEvaluation",
    "ExportResult",
    "FrontInfo",
    "HistogramInfo",
    "ProgressInfo",
    "ReportResult",
    "RetrainResult",
    "TestPoint",
    "TrialRecord",
    "VAL_GAP_WARN",
    "build_report",
    "check_export_out",
    "choose_trial",
    "default_out_dir",
    "evaluate_arch",
    "evaluate_export",
    "export_trial",
    "get_curves_info",
    "get_histogram_info",
    "get_progress_info",
    "get_test_info",
    "hypervolume_2d",
    "kendall_tau",
    "load_export",
    "load_front",
    "load_trial",
    "open_study",
    "open_evaluator",
    "pareto_mask",
    "plot_curves",
    "plot_front",
    "plot_histogram",
    "plot_progress",
    "read_arch",
    "refit_thresholds",
    "retrain_export",
    "split_metrics",
    "spread_points",
    "stage_exit_arch",
    "static_largest_arch",
    "untrained_net",
    "write_export",
]
