"""Plotly figures drawn from the info objects (compute, then draw: no numbers are made here)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from exitnas.evaluators import CurvePoint
from exitnas.results._evaluate import CurvesInfo, HistogramInfo, TestPoint
from exitnas.results._front import FrontInfo
from exitnas.results._hypervolume import ProgressInfo

__all__ = ["plot_curves", "plot_front", "plot_histogram", "plot_progress"]

_HEIGHT = 480


def _layout(fig: go.Figure, title: str, x: str, y: str, log_x: bool = False) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=_HEIGHT, template="plotly_white",
                      legend={"orientation": "h", "y": -0.2}, hovermode="closest")
    if log_x:  # costs span decades (the smallest subnet to the largest): linear squeezes the front
        fig.update_xaxes(type="log")
    return fig


def _curve(points: Sequence[CurvePoint], name: str, **kw: object) -> go.Scatter:
    pts = sorted(points, key=lambda p: p.macs)
    return go.Scatter(x=[p.macs / 1e6 for p in pts], y=[p.accuracy for p in pts], name=name, **kw)


def plot_front(front: FrontInfo, tests: Sequence[TestPoint], curves: CurvesInfo | None = None) -> go.Figure:
    """All trials and the Pareto front (val, stored), the measured front points (test) and the baselines.

    The cost axis is the study's (MMACs, or ms after a latency search); the baselines are
    measured in MACs, so they are drawn only on a MACs front (the curves figure has them).
    """
    fig = go.Figure()
    unit = front.cost_unit
    hover = "%{text}<br>%{x:.3f} " + unit + ", %{y:.4f}"
    others = [t for t in front.trials if t.number not in front.pareto]
    fig.add_trace(go.Scatter(
        x=[t.cost for t in others], y=[t.accuracy for t in others], mode="markers", name="trials (val)",
        marker={"color": "lightgray", "symbol": ["circle" if t.feasible else "x" for t in others]},
        text=[f"trial {t.number}" for t in others], hovertemplate=hover))
    pareto = front.pareto_trials
    fig.add_trace(go.Scatter(
        x=[t.cost for t in pareto], y=[t.accuracy for t in pareto], mode="lines+markers",
        line={"shape": "hv"}, name="Pareto front (val)", text=[f"trial {t.number}" for t in pareto],
        hovertemplate=hover))
    tests = sorted(tests, key=lambda p: p.test_cost)
    fig.add_trace(go.Scatter(
        x=[p.test_cost for p in tests], y=[p.test_accuracy for p in tests], mode="markers",
        marker={"symbol": "diamond", "size": 9}, name="same thresholds (test)",
        text=[f"trial {p.trial} ({p.policy})" for p in tests], hovertemplate=hover))
    if curves is not None and unit == "MMACs":
        fig.add_trace(_curve([curves.static], "largest subnet, final exit (test)", mode="markers",
                             marker={"symbol": "star", "size": 12}))
        fig.add_trace(_curve(curves.stage_budgeted_batch, "stage-end exits, budgeted batch (test)",
                             mode="lines", line={"dash": "dot"}))
    return _layout(fig, f"Pareto front of study {front.study_name}", f"expected {unit} (log scale)", "accuracy",
                   log_x=True)


def plot_curves(curves: CurvesInfo) -> go.Figure:
    """Budgeted-batch, anytime, the exit policies' curves, budgeted oracle and oracle of the chosen
    arch on test, with both baselines (policies other than threshold and decider start hidden:
    click their legend entries)."""
    fig = go.Figure()
    if curves.budgeted_oracle:
        fig.add_trace(_curve(curves.budgeted_oracle, "budgeted oracle (ceiling of any policy that keeps the exits' "
                             "answers)", mode="lines", line={"shape": "hv", "color": "gray"}))
    fig.add_trace(_curve(curves.budgeted_batch, "budgeted batch (fit on val)", mode="lines+markers",
                         customdata=[p.param for p in sorted(curves.budgeted_batch, key=lambda p: p.macs)],
                         hovertemplate="p=%{customdata}<br>%{x:.3f} MMACs, %{y:.4f}"))
    fig.add_trace(_curve(curves.anytime, "anytime (exit k)", mode="lines+markers", line={"dash": "dash"}))
    for name, points in curves.policies:  # each exit policy, its setting per budget chosen on val
        if points:
            label = "thresholds, chosen per budget on val" if name == "threshold" else f"{name} policy"
            fig.add_trace(_curve(points, label, mode="lines", line={"dash": "dashdot", "width": 1.5},
                                 visible=True if name in ("threshold", "decider") else "legendonly"))
    fig.add_trace(_curve([curves.oracle], "oracle", mode="markers", marker={"symbol": "triangle-up", "size": 11}))
    fig.add_trace(_curve([curves.searched], f"trial {curves.trial} thresholds", mode="markers",
                         marker={"symbol": "diamond", "size": 11}))
    fig.add_trace(_curve([curves.static], "largest subnet, final exit", mode="markers",
                         marker={"symbol": "star", "size": 12}))
    fig.add_trace(_curve(curves.stage_budgeted_batch, "stage-end exits, budgeted batch", mode="lines",
                         line={"dash": "dot"}))
    return _layout(fig, f"Trial {curves.trial} on test: protocols and baselines", "expected MMACs (log scale)",
                   "accuracy", log_x=True)


def plot_progress(progress: ProgressInfo, unit: str = "MMACs") -> go.Figure:
    """Hypervolume of the validation front against trial number."""
    fig = go.Figure(go.Scatter(
        x=list(progress.trial_numbers), y=list(progress.hypervolume), mode="lines", line={"shape": "hv"},
        name="hypervolume", customdata=list(progress.front_size),
        hovertemplate="trial %{x}: %{y:.4f} (front of %{customdata})"))
    ref = f"reference (1 - acc, {unit}) = (1.0, {progress.reference[1]:.3f})"
    return _layout(fig, f"Search progress: hypervolume of the val front<br><sup>{ref}</sup>",
                   "trial", "hypervolume")


def plot_histogram(hist: HistogramInfo) -> go.Figure:
    """Share of samples leaving at each exit of the chosen trial: test (measured), val (stored)."""
    fig = go.Figure()
    for counts, name in ((hist.test_counts, "test"), (hist.val_counts, "val (stored)")):
        if counts:
            total = sum(counts) or 1
            fig.add_trace(go.Bar(x=list(hist.labels), y=[c / total for c in counts], name=name,
                                 customdata=list(counts), hovertemplate="%{x}: %{y:.1%} (%{customdata})"))
    fig.update_layout(barmode="group", yaxis_tickformat=".0%")
    return _layout(fig, f"Trial {hist.trial}: where samples leave", "exit", "share of samples")
