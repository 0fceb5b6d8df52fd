"""The ``evaluate`` step of ``benchmarks/headline.py``: test numbers, curves, hypervolumes, targets.

Compute, then draw: :func:`collect` gathers every number from the steps' JSON files, the
studies and the exit caches; :func:`targets`, :func:`render_markdown` and :func:`render_html`
only read what it returns.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from _env import environment_line, write_section
from _headline_harness import NSGA2_STUDY, RANDOM_STUDY, SECTION, STEPS, load_json, point_json, save_json

from exitnas._io import atomic_write_bytes

#: The issue's reference: ResNet-18 on an H100, same data, 172 epochs in about 5.5 minutes.
RESNET18_REFERENCE = {"test_accuracy": 0.914, "epochs": 172, "minutes": 5.5, "mmacs": 555.0, "device": "H100"}
#: Targets: accuracy drop and MAC share against the largest subnet; MMACs at ResNet-18's accuracy.
TARGET_DROP, TARGET_SHARE, TARGET_RESNET_MMACS = 0.005, 0.35, 30.0

#: Budgets (shares of the largest subnet's MACs) at which the curves are compared in the table.
SHARES = (0.05, 0.1, 0.2, 0.35, 0.5, 1.0)


# -- the step ----------------------------------------------------------------------------------------------
def evaluate(run: Any) -> None:
    """Measure, check the targets, and write the report, ``headline.{json,md,html}`` and RESULTS.md."""
    t0 = time.perf_counter()
    info = collect(run)
    info["targets"] = targets(info)
    info["evaluate_wall_s"] = time.perf_counter() - t0
    md = render_markdown(info)
    save_json(run.out / "headline.json", info)
    atomic_write_bytes(run.out / "headline.md", (SECTION + "\n\n" + md).encode())
    atomic_write_bytes(run.out / "headline.html", render_html(info, md).encode())
    save_json(run.out / "evaluate.json", {"step": "evaluate", "status": "done", "wall_s": info["evaluate_wall_s"],
                                            "device": run.env["device"], "date": run.env["date"]})
    for t in info["targets"]:
        print(f"  {t['verdict']:<4} {t['target']}: {t['figure']}")
    print(f"[evaluate] wrote {run.out / 'headline.md'}, {run.out / 'headline.html'}, {info['report_html']} "
          f"({info['evaluate_wall_s']:.0f} s)")
    if not run.s.smoke:
        write_section(SECTION, md)


# -- numbers ---------------------------------------------------------------------------------------------
def _point(p: Any) -> dict[str, Any]:
    return {"trial": p.trial, "val_accuracy": p.val_accuracy, "val_mmacs": p.val_cost,
            "test_accuracy": p.test_accuracy, "test_mmacs": p.test_cost, "exits": p.arch.num_exits,
            "test_histogram": list(p.test_histogram), "on_front": p.on_front}


def _curve(points: Any) -> list[dict[str, Any]]:
    return [point_json(p) for p in points]


def _front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated points (accuracy up, MMACs down; equal points all stay), cheapest first."""
    from exitnas.results import pareto_mask

    keep = pareto_mask(np.array([p["accuracy"] for p in points]), np.array([p["mmacs"] for p in points]))
    return sorted((p for p, k in zip(points, keep) if k), key=lambda p: (p["mmacs"], -p["accuracy"]))


def _hv(points: list[tuple[float, float]], ref_mmacs: float) -> float:
    """Hypervolume of (accuracy, MMACs) points in the plane (1 − accuracy, MMACs / ref), reference (1, 1)."""
    from exitnas.results import hypervolume_2d

    return hypervolume_2d([(1.0 - a, m / ref_mmacs) for a, m in points], (1.0, 1.0))


def collect(run: Any) -> dict[str, Any]:
    """Every number of the headline, from the steps' files, the two studies and the exit caches."""
    import optuna
    import plotly

    from exitnas.evaluators import oracle
    from exitnas.results import (
        build_report,
        choose_trial,
        get_curves_info,
        get_test_info,
        load_front,
        open_evaluator,
    )

    steps = {s: load_json(run.out / f"{s}.json") for s in STEPS if s != "evaluate"}
    front = load_front(run.storage, NSGA2_STUDY)
    print(f"[evaluate] {len(front.pareto)} Pareto trials of {len(front.trials)}: measuring them on test")
    report = build_report(run.storage, NSGA2_STUDY, run.checkpoint, run.out / "report", device=str(run.device),
                          max_points=max(1, len(front.pareto)))
    front_r = load_front(run.storage, RANDOM_STUDY)
    ev = open_evaluator(front_r, run.checkpoint, str(run.device))
    tests_r = get_test_info(front_r, ev, list(front_r.pareto))
    chosen_r = choose_trial(front_r)
    curves_r = get_curves_info(front_r, ev, chosen_r)
    curves = report.curves

    # The oracle curve: each distinct arch of the front with its samples leaving at their first
    # correct exit; the non-dominated ones. No threshold rule on these archs does better.
    archs = {p.arch: p.trial for p in report.tests if p.on_front}
    oracle_pts = [dict(point_json(oracle(ev.cache(a, "test"))), trial=n) for a, n in archs.items()]

    hand = steps["baselines"]["hand_placed"]
    static = hand["static_largest"]
    ref = 1.1 * static["mmacs"]
    searched = [_point(p) for p in report.tests if p.on_front]
    random_pts = [_point(p) for p in tests_r]
    stage_bb = hand["stage_exits"]["budgeted_batch_test"]
    hv = {
        "reference": {"accuracy": 0.0, "mmacs": ref, "note": "1.1 x the largest subnet's MMACs; MMACs / reference"},
        "test": {
            "searched front (nsga2)": _hv([(p["test_accuracy"], p["test_mmacs"]) for p in searched], ref),
            "random search front": _hv([(p["test_accuracy"], p["test_mmacs"]) for p in random_pts], ref),
            "stage-end exits, budgeted batch": _hv([(p["accuracy"], p["mmacs"]) for p in stage_bb], ref),
            "largest subnet": _hv([(static["test_accuracy"], static["mmacs"])], ref),
            "oracle (front archs)": _hv([(p["accuracy"], p["mmacs"]) for p in oracle_pts], ref),
        },
        "val": {
            "searched front (nsga2)": _hv([(t.accuracy, t.cost) for t in front.pareto_trials], ref),
            "random search front": _hv([(t.accuracy, t.cost) for t in front_r.pareto_trials], ref),
            "stage-end exits, budgeted batch": _hv([(p["accuracy"], p["mmacs"])
                                                    for p in hand["stage_exits"]["budgeted_batch_val"]], ref),
            "largest subnet": _hv([(static["val_accuracy"], static["mmacs"])], ref),
        },
    }
    train, resnet = steps["train"], steps["resnet18"]
    retrain, kendall = steps["retrain"], steps["kendall"]
    splits = run.splits()
    return {
        "smoke": run.s.smoke,
        "note": "SMOKE RUN: tiny data and budgets on a CPU; not a measurement" if run.s.smoke else None,
        "settings": asdict(run.s),
        "environment": {**run.env, "optuna": optuna.__version__, "plotly": plotly.__version__},
        "data": {"name": "cifar10-jpeg", "train": len(splits.train_y), "val": len(splits.val_y),
                 "test": len(splits.test_y)},
        "space": run.cfg().space.options(),
        "steps": {s: _step_time(d) for s, d in steps.items()},
        "train": {k: train.get(k) for k in ("epochs", "total_steps", "steps_per_s_measured", "budget_minutes",
                                            "batch_size", "last_loss", "checkpoint_mb")},
        "static_largest": static,
        "front_test": searched,
        "chosen": {"trial": report.chosen_trial, "arch": curves.arch.to_dict(),
                   "searched_test": point_json(curves.searched), "budgeted_batch_test": _curve(curves.budgeted_batch),
                   "anytime_test": _curve(curves.anytime), "oracle_test": point_json(curves.oracle)},
        "random_front_test": random_pts,
        "random_chosen": {"trial": chosen_r, "arch": curves_r.arch.to_dict(),
                          "budgeted_batch_test": _curve(curves_r.budgeted_batch)},
        "stage_exits": hand["stage_exits"],
        "oracle_points_test": oracle_pts,
        "oracle_curve_test": _front(oracle_pts),
        "hypervolume": hv,
        "val_gap": report.val_gap,
        "resnet18": resnet if resnet and resnet["status"] == "done" else None,
        "retrain": retrain if retrain and retrain["status"] == "done" else None,
        "kendall": kendall if kendall and kendall["status"] == "done" else None,
        "report_html": str(report.html),
        "trials": {"nsga2": len(front.trials), "random": len(front_r.trials)},
    }


def _step_time(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    devices = sorted({i["device"] for i in d.get("invocations", [])})
    return {"status": d["status"], "minutes": d["wall_s"] / 60, "commands": len(d.get("invocations", [])),
            "devices": devices}


def cheapest_at(points: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The cheapest front point (test) with at least ``accuracy``."""
    ok = [p for p in points if p["test_accuracy"] >= accuracy - 1e-12]
    return min(ok, key=lambda p: (p["test_mmacs"], -p["test_accuracy"])) if ok else None


def best_within(curve: list[dict[str, Any]], mmacs: float, acc: str = "accuracy", cost: str = "mmacs") -> float | None:
    """Best accuracy of a curve's points costing at most ``mmacs`` (no interpolation)."""
    ok = [p[acc] for p in curve if p[cost] <= mmacs * (1 + 1e-9)]
    return max(ok) if ok else None


def targets(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's four targets, each with its figure and PASS/MISS."""
    static = info["static_largest"]
    front = info["front_test"]
    out = []

    want = static["test_accuracy"] - TARGET_DROP
    c = cheapest_at(front, want)
    share = c["test_mmacs"] / static["mmacs"] if c else None
    out.append({
        "target": "front reaches the largest subnet's test accuracy − 0.5 points at ≤ 35 % of its MACs",
        "figure": (f"largest subnet {static['test_accuracy']:.4f} at {static['mmacs']:.1f} MMACs; cheapest front point "
                   f"with ≥ {want:.4f}: " + (f"trial {c['trial']}, {c['test_accuracy']:.4f} at {c['test_mmacs']:.2f} "
                                             f"MMACs = {100 * share:.1f} %" if c else "none")),
        "verdict": "PASS" if share is not None and share <= TARGET_SHARE else "MISS"})

    hv = info["hypervolume"]["test"]
    mine = hv["searched front (nsga2)"]
    others = {k: hv[k] for k in ("stage-end exits, budgeted batch", "random search front")}
    out.append({
        "target": "hypervolume (test) beats hand-placed exits and random search",
        "figure": f"searched {mine:.4f}; " + "; ".join(f"{k} {v:.4f}" for k, v in others.items()),
        "verdict": "PASS" if all(mine > v for v in others.values()) else "MISS"})

    r = info["resnet18"]
    if r is not None:
        r_acc, where = r["test_accuracy"], (f"ResNet-18 measured here: {r['test_accuracy']:.4f} after "
                                            f"{r['epochs']:.1f} epochs in {r['wall_s'] / 60:.1f} min, "
                                            f"{r['mmacs']:.0f} MMACs")
    else:
        ref = _reference()
        r_acc = ref["test_accuracy"]
        where = (f"ResNet-18 not run here; the issue's reference {ref['test_accuracy']:.3f} "
                 f"({ref['device']}, {ref['epochs']} epochs)")
    out.append({
        "target": "largest subnet ≥ ResNet-18 test accuracy (same data, same wall time)",
        "figure": f"largest subnet {static['test_accuracy']:.4f}; {where}",
        "verdict": "PASS" if static["test_accuracy"] >= r_acc else "MISS"})

    c = cheapest_at(front, r_acc)
    out.append({
        "target": "front reaches ResNet-18's test accuracy at ≤ 30 expected MMACs",
        "figure": (f"cheapest front point with ≥ {r_acc:.4f}: " +
                   (f"trial {c['trial']}, {c['test_accuracy']:.4f} at {c['test_mmacs']:.2f} MMACs" if c else "none")),
        "verdict": "PASS" if c is not None and c["test_mmacs"] <= TARGET_RESNET_MMACS else "MISS"})
    return out


def _reference() -> dict[str, Any]:
    return RESNET18_REFERENCE


# -- drawing ------------------------------------------------------------------------------------------------
def _curves_for_table(info: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, points with 'accuracy' and 'mmacs') of every curve on test."""
    front = [{"accuracy": p["test_accuracy"], "mmacs": p["test_mmacs"]} for p in info["front_test"]]
    rnd = [{"accuracy": p["test_accuracy"], "mmacs": p["test_mmacs"]} for p in info["random_front_test"]]
    rows = [
        ("searched front, searched thresholds", front),
        (f"chosen arch (trial {info['chosen']['trial']}), budgeted batch", info["chosen"]["budgeted_batch_test"]),
        ("random search front", rnd),
        (f"random search's chosen arch (trial {info['random_chosen']['trial']}), budgeted batch",
         info["random_chosen"]["budgeted_batch_test"]),
        ("stage-end exits (largest backbone), budgeted batch", info["stage_exits"]["budgeted_batch_test"]),
        ("largest subnet, final exit only", [{"accuracy": info["static_largest"]["test_accuracy"],
                                              "mmacs": info["static_largest"]["mmacs"]}]),
        ("oracle over the front's archs", info["oracle_curve_test"]),
    ]
    if info["retrain"]:
        rows.append(("chosen arch retrained from scratch, budgeted batch",
                     info["retrain"]["curves"]["budgeted_batch_test"]))
    return rows


def _f(v: float | None, fmt: str = ".4f") -> str:
    return "–" if v is None else f"{v:{fmt}}"


def render_markdown(info: dict[str, Any]) -> str:
    env, s, static = info["environment"], info["settings"], info["static_largest"]
    lines = []
    if info["smoke"]:
        lines += ["**SMOKE RUN — tiny data (a few hundred images), CPU-sized budgets: NOT A MEASUREMENT.**", ""]
    lines += [
        (f"- device: {env['device']}; torch {env['torch']}, optuna {env['optuna']}, plotly {env['plotly']}, "
         f"numpy {env['numpy']}, python {env['python']}"),
        f"- commit {env['commit']}, evaluated {env['date']}",
        (f"- data: cifar10-jpeg, {info['data']['train']} train / {info['data']['val']} val (held out of train) / "
         f"{info['data']['test']} test; search and thresholds saw val only, test is reported"),
        f"- space: {json.dumps(info['space'])}",
        (f"- supernet: {s['train_minutes']} min budget → {info['train']['epochs']:.1f} epochs "
         f"({info['train']['total_steps']} steps of batch {info['train']['batch_size']}, measured "
         f"{info['train']['steps_per_s_measured']:.2f} steps/s)"),
        (f"- search: NSGA-II, {info['trials']['nsga2']} trials; random search {info['trials']['random']} trials "
         "(same supernet weights and sampler seed: both start from the same random trials, NSGA-II's first "
         f"generation); report: `{info['report_html']}`"),
        "",
        "Minutes per step (wall clock of the step's commands on the device named; GPU minutes on a GPU):",
        "",
        "| step | status | minutes | commands | device |",
        "|---|---|---:|---:|---|",
    ]
    for name, t in info["steps"].items():
        if t is None:
            lines.append(f"| {name} | not run | – | – | – |")
        else:
            lines.append(f"| {name} | {t['status']} | {t['minutes']:.2f} | {t['commands']} | "
                         f"{', '.join(t['devices'])} |")
    lines.append(f"| evaluate | done | {info['evaluate_wall_s'] / 60:.2f} | 1 | {env['device']} |")
    lines += ["", "### Targets", "", "| target | figure | result |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['figure']} | **{t['verdict']}** |" for t in info["targets"]]

    lines += ["", f"### Best test accuracy within a MAC budget (largest subnet: {static['mmacs']:.1f} MMACs)", "",
              "Each curve's most accurate point costing at most the budget (expected MMACs on test; "
              "no interpolation).", ""]
    budgets = [sh * static["mmacs"] for sh in SHARES] + [30.0]
    lines.append("| curve | " + " | ".join(f"≤ {100 * sh:.0f} % ({b:.1f})" for sh, b in zip(SHARES, budgets))
                 + " | ≤ 30 MMACs |")
    lines.append("|---|" + "---:|" * len(budgets))
    for name, pts in _curves_for_table(info):
        lines.append(f"| {name} | " + " | ".join(_f(best_within(pts, b)) for b in budgets) + " |")

    hv_note = (f"Plane (1 − accuracy, MMACs / {info['hypervolume']['reference']['mmacs']:.2f}), reference (1, 1) = "
               "accuracy 0 at 1.1 × the largest subnet's MMACs; larger is better. Val: the searches' own numbers "
               "(stage-end thresholds fit and measured on val); test: the same thresholds on test.")
    lines += ["", "### Hypervolume", "", hv_note, "", "| set | val | test |", "|---|---:|---:|"]
    for k, v in info["hypervolume"]["test"].items():
        lines.append(f"| {k} | {_f(info['hypervolume']['val'].get(k))} | {v:.4f} |")

    lines += ["", f"### The searched front on test ({len(info['front_test'])} Pareto trials)", "",
              "| trial | val acc | val MMACs | test acc | test MMACs | exits |", "|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(info["front_test"], key=lambda p: p["val_mmacs"]):
        mark = " (chosen)" if p["trial"] == info["chosen"]["trial"] else ""
        lines.append(f"| {p['trial']}{mark} | {p['val_accuracy']:.4f} | {p['val_mmacs']:.2f} | {p['test_accuracy']:.4f}"
                     f" | {p['test_mmacs']:.2f} | {p['exits']} |")
    o = info["chosen"]["oracle_test"]
    chosen = (f"Chosen trial {info['chosen']['trial']}: searched thresholds "
              f"{info['chosen']['searched_test']['accuracy']:.4f} at {info['chosen']['searched_test']['mmacs']:.2f} "
              f"MMACs; its oracle {o['accuracy']:.4f} at {o['mmacs']:.2f}. Largest val accuracy gap between the "
              f"search and the report's re-measurement: {info['val_gap']:.4f}.")
    lines += ["", chosen]

    lines += ["", "### Retraining and the reference network", ""]
    r = info["retrain"]
    if r:
        rr, inh = r["retrained"], r["inherited"]
        lines.append(f"- chosen trial {r['trial']} retrained from scratch: {rr['epochs']:.1f} epochs "
                     f"({r['budget_minutes']} min budget, {rr['seconds'] / 60:.1f} min with evaluation), thresholds "
                     f"refit on val for the inherited val MMACs: test {rr['test_accuracy']:.4f} at "
                     f"{rr['test_mmacs']:.2f} MMACs (inherited weights: {inh['test_accuracy']:.4f} at "
                     f"{inh['test_mmacs']:.2f})")
    else:
        lines.append("- retraining of the chosen arch: not run")
    rn = info["resnet18"]
    ref = _reference()
    if rn:
        lines.append(f"- ResNet-18 (torchvision layout, 3×3 stem, no max-pool): test {rn['test_accuracy']:.4f} after "
                     f"{rn['epochs']:.1f} epochs in {rn['wall_s'] / 60:.1f} min, {rn['mmacs']:.1f} MMACs "
                     f"(issue's reference on an {ref['device']}: {ref['test_accuracy']:.3f}, {ref['epochs']} epochs, "
                     f"~{ref['minutes']} min, {ref['mmacs']:.0f} MMACs)")
    else:
        lines.append(f"- ResNet-18: not run here; the targets use the issue's reference {ref['test_accuracy']:.3f}")
    k = info["kendall"]
    if k:
        tau = k["tau"]
        lines.append(f"- Kendall τ over {len(k['trials'])} archs of the front retrained from scratch for "
                     f"{k['epochs']} epochs each: search's val accuracy vs retrained test accuracy "
                     f"{tau['search_val_vs_retrained_test']:.3f}; inherited vs retrained test accuracy "
                     f"{tau['inherited_test_vs_retrained_test']:.3f}; final exit only "
                     f"{tau['final_exit_inherited_vs_retrained']:.3f}")
    else:
        lines.append("- Kendall τ: not run")
    lines += ["", f"Environment: {environment_line({k: v for k, v in env.items() if k != 'load'})}"]
    return "\n".join(lines) + "\n"


def render_html(info: dict[str, Any], md: str) -> str:
    """One offline page: every test curve in one figure, and the markdown summary."""
    import plotly.graph_objects as go
    import plotly.io as pio

    fig = go.Figure()
    for name, pts in _curves_for_table(info):
        pts = sorted(pts, key=lambda p: p["mmacs"])
        fronts = ("searched front", "random search front")
        mode = "markers" if len(pts) == 1 or name.startswith(fronts) else "lines+markers"
        fig.add_trace(go.Scatter(x=[p["mmacs"] for p in pts], y=[p["accuracy"] for p in pts], mode=mode, name=name))
    rn = info["resnet18"] or _reference()
    label = "ResNet-18 (measured)" if info["resnet18"] else "ResNet-18 (issue's reference)"
    fig.add_trace(go.Scatter(x=[rn["mmacs"]], y=[rn["test_accuracy"]], mode="markers", name=label,
                             marker={"symbol": "star", "size": 12}))
    fig.update_layout(title="Test accuracy against expected MMACs", xaxis_title="expected MMACs (log)",
                      xaxis_type="log", yaxis_title="test accuracy", template="plotly_white", height=600,
                      legend={"orientation": "h", "y": -0.25})
    e = html.escape
    banner = f"<p style='color:#b00'><b>{e(info['note'])}</b></p>" if info["smoke"] else ""
    return "\n".join([
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>exitnas headline benchmark</title></head>",
        "<body style='font-family:sans-serif;max-width:1200px;margin:auto'>",
        "<h1>exitnas headline: CIFAR-10, searched exits against hand-placed exits</h1>", banner,
        pio.to_html(fig, include_plotlyjs=True, full_html=False),
        f"<p>Full exitnas report of the search: <code>{e(info['report_html'])}</code></p>",
        f"<pre style='white-space:pre-wrap'>{e(md)}</pre>", "</body></html>"])

