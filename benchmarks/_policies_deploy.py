"""bench_policies' deployment half: each policy's batch-1 latency in the exported runtime, and
the page of curves (threshold, every policy, the budgeted oracle) per arch."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from exitnas.evaluators import POLICIES, Evaluator, ExitCache, fit_policy
from exitnas.runtime import deploy_early_exit
from exitnas.search_space import ArchConfig

ROUNDS = 15  # interleaved timing rounds per arch; the median round is reported
IMAGES = 40  # test images per round, one at a time


def policy_latency(ev: Evaluator, arch: ArchConfig, val: ExitCache, test_x: torch.Tensor) -> dict[str, Any]:
    """Per policy (fit on ``val``), the deployed TorchScript model's ms per image at batch size 1.

    ``passing``: thresholds +inf, so every image passes every exit and the model makes all K-1
    decisions (the policy's whole overhead; the same work otherwise, so its ratio to the
    threshold model is the policy's cost). ``chosen``: the setting chosen on val at the middle
    budget (the images leave where that policy sends them: a different amount of work). The
    models of one arch are timed in interleaved rounds, one thread.
    """
    net = ev.subnet(arch).eval()
    mid = float(val.exit_macs()[0] + 0.5 * (val.exit_macs()[-1] - val.exit_macs()[0]))
    models: dict[str, dict[str, Any]] = {}
    for name in POLICIES:
        fitted = fit_policy(name, val)
        i = fitted.choose(mid)
        params = {**fitted.policy.state(), **(fitted.params[i] if i is not None else {})}
        thr = fitted.thresholds[i].tolist() if i is not None else [math.inf] * (arch.num_exits - 1)
        models[name] = {
            "passing": deploy_early_exit(net, [math.inf] * (arch.num_exits - 1), ev.kind, ev.splits.mean, ev.splits.std,
                                         policy=name, params=params),
            "chosen": deploy_early_exit(net, thr, ev.kind, ev.splits.mean, ev.splits.std, policy=name, params=params)}
    x = test_x[:IMAGES].float() / 255
    times: dict[str, dict[str, list[float]]] = {n: {"passing": [], "chosen": []} for n in models}
    with torch.no_grad():
        for _ in range(3):  # warm-up: the profiling executor specialises on the first calls
            for m in models.values():
                for model in m.values():
                    for n in range(4):
                        model(x[n : n + 1])
        for _ in range(ROUNDS):
            for name, m in models.items():
                for kind, model in m.items():
                    t0 = time.perf_counter()
                    for n in range(len(x)):
                        model(x[n : n + 1])
                    times[name][kind].append((time.perf_counter() - t0) * 1e3 / len(x))
    out = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    for n in out:
        out[n]["passing_ratio"] = out[n]["passing"] / out["threshold"]["passing"]
    return out


def write_page(rows: dict[str, Any], path: Path, title: str) -> Path:
    """One plotly page: per arch, test accuracy against the val budget of the threshold policy,
    every other policy and the budgeted oracle (works offline: plotly.js is inlined)."""
    fig = make_subplots(rows=len(rows), cols=1, subplot_titles=list(rows), vertical_spacing=0.08)
    colours = {"oracle": "gray", "threshold": "black", "temperature": "#1f77b4", "patience": "#2ca02c",
               "decider": "#d62728", "ensemble": "#9467bd"}
    for r, (arch, row) in enumerate(rows.items(), start=1):
        budgets = row["budgets_mmacs"]
        for name, acc in row["accuracy"].items():
            pts = [(b, a) for b, a in zip(budgets, acc) if a is not None]
            label = "budgeted oracle (ceiling of the exits' own answers)" if name == "oracle" else name
            dash = "dot" if name == "oracle" else ("dash" if "oracle" in name or "ceiling" in name else None)
            fig.add_trace(go.Scatter(x=[b for b, _ in pts], y=[a for _, a in pts], mode="lines+markers", name=label,
                                     legendgroup=name, showlegend=r == 1,
                                     line={"color": colours.get(name), "dash": dash}),
                          row=r, col=1)
        fig.update_xaxes(title_text="budget: expected MMACs on val", row=r, col=1)
        fig.update_yaxes(title_text="test accuracy", row=r, col=1)
    fig.update_layout(title=title, height=380 * len(rows), template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)
    return path


def budget_grid(val: ExitCache, n: int) -> np.ndarray:
    """``n`` budgets from the first exit's val MACs to the final exit's."""
    return np.linspace(float(val.exit_macs()[0]), float(val.exit_macs()[-1]), n)
