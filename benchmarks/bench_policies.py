"""Exit policies against confidence thresholds and the budgeted oracle (issue 17).

On the exit caches of a few archs of one trained supernet: every policy of ``POLICIES`` is fit
on val only (thresholds, temperatures, decider weights, the setting chosen per budget), then
measured on test; the budgeted oracle (perfect knowledge of every exit's answer) is the ceiling.
Reported per arch: the normalised area under the test accuracy–budget curve over a grid of
budgets from the first exit's cost to the final exit's, accuracy at three budgets, and the share
of the threshold→oracle gap each policy closes. A second part compares the ``threshold`` and
``share`` exit rules, the ``ensemble`` rule and the ``policy`` rule (the policy searched per
trial) as search spaces: NSGA-II searches of the same length on the same supernet, their val
fronts' hypervolume and their front points' test numbers (each under its own policy).

Two reduced recipes train a small space on this machine's CPU: ``--data digits`` (the built-in
8×8 digits, 30 epochs, under a minute) and ``--data cifar10-jpeg --data-root TAR`` (CIFAR-10
JPEG, 8 epochs, about 40 minutes on 2 cores). The deployed half times each policy's TorchScript
model at batch size 1 (every exit passed: the policy's whole overhead) and writes a page of
curves (``<out>/policies.html``). RESULTS.md gets one section per dataset.

Usage: ``python benchmarks/bench_policies.py [--data digits|cifar10-jpeg] [--data-root TAR] [--epochs E]
[--archs 2] [--trials 100] [--seeds 2] [--out runs/bench_policies-<data>]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment, environment_line, write_section  # noqa: E402
from _policies_deploy import policy_latency, write_page  # noqa: E402

from exitnas._config import load_config  # noqa: E402
from exitnas.evaluators import (  # noqa: E402
    POLICIES,
    Evaluator,
    ExitCache,
    accuracy_at,
    budgeted_oracle,
    candidate_result,
    fit_policy,
)
from exitnas.experiment import Experiment  # noqa: E402
from exitnas.results import hypervolume_2d  # noqa: E402
from exitnas.results._evaluate import stage_exit_arch  # noqa: E402
from exitnas.search import ArchObjective, create_or_load_study  # noqa: E402
from exitnas.search_space import ArchConfig, Candidate  # noqa: E402
from exitnas.training import train_supernet  # noqa: E402

#: The exit rules compared as search spaces (``--trials``): raw thresholds, shares of val, the
#: ensemble's thresholds, and the policy searched per trial.
RULES = ("threshold", "share", "ensemble", "policy")
HEADING = "## bench_policies: exit policies against thresholds and the budgeted oracle (issue 17)"
BUDGETS = 21  # grid from the first exit's val cost to the final exit's
AT = (0.25, 0.5, 0.75)
IN_SAMPLE = "decider fit on test (in-sample ceiling)"  # the three reported budgets, as fractions of that range
#: The budgeted oracle of the ensemble's answers (it changes what an exit answers, so the exits'
#: own oracle does not bound it).
OWN_ORACLE = "oracle of the ensemble's answers"


#: The reduced recipes: a small space trained on this machine's CPU (GPU runs use --device).
DATASETS = {
    "digits": {"label": "the built-in 8×8 digits (1,797 grayscale images, sklearn)", "epochs": 30.0,
               "over": ["data.name=digits", "data.val_size=0.3", "space.channels=[8, 16, 32]",
                        "space.depths=[1, 2, 3]", "train.batch_size=128"],
               "space": "channels 8/16/32, depths ≤ 3"},
    "cifar10-jpeg": {"label": "CIFAR-10 JPEG (45,000 train / 5,000 val / 10,000 test)", "epochs": 8.0,
                     "over": ["data.name=cifar10-jpeg", "data.val_size=5000", "space.channels=[16, 32, 64]",
                              "space.depths=[1, 2]", "train.batch_size=128"],
                     "space": "channels 16/32/64, depths ≤ 2"},
}


def recipe(data: str, data_root: str | None, epochs: float, out: Path) -> list[str]:
    over = DATASETS[data]["over"] + ["space.widths=[0.5, 1.0]", "space.ratios=[0.0, 0.5]", "space.heads=[linear]",
                                     f"train.epochs={epochs}", "train.device=cpu", "train.progress=false",
                                     f"train.out={out}"]
    return over + ([f"data.root={data_root}"] if data_root else [])


def archs(ev: Evaluator, n_random: int = 2) -> dict[str, ArchConfig]:
    """The largest net with an exit at every block, MSDNet's stage-end layout, ``n_random`` random
    archs with all exits."""
    space = ev.space
    rng = random.Random(0)
    out = {"largest, every block": space.largest(all_exits=True), "largest, stage ends": stage_exit_arch(space)}
    for i in range(n_random):
        out[f"random {i}, every block"] = space.with_all_exits(space.sample(rng), rng)
    return {k: a for k, a in out.items() if a.num_exits >= 2}


def measure(val: ExitCache, test: ExitCache) -> dict[str, Any]:
    """Per policy: the val-chosen test accuracy at each budget of the grid; the budgeted oracle's."""
    lo, hi = float(val.exit_macs()[0]), float(val.exit_macs()[-1])
    grid = np.linspace(lo, hi, BUDGETS)
    ceiling = budgeted_oracle(test)
    rows: dict[str, Any] = {"oracle": [accuracy_at(ceiling, float(b)) for b in grid]}
    for name in POLICIES:
        fitted = fit_policy(name, val)
        rows[name] = [None if p is None else p.accuracy for p in fitted.budget_curve(fitted.apply(test), grid)]
        if name == "ensemble":
            own = budgeted_oracle(fitted.policy.answers(test))
            rows[OWN_ORACLE] = [accuracy_at(own, float(b)) for b in grid]
    # A diagnostic, not a result: the decider fit, and its settings chosen, on test itself. What
    # its features could give at best: if this stays far from the oracle, more val data will not help.
    own = fit_policy("decider", test)
    rows[IN_SAMPLE] = [None if p is None else p.accuracy for p in own.budget_curve(own.apply(test), grid)]
    return {"budgets_mmacs": (grid / 1e6).tolist(), "accuracy": rows,
            "decision_macs": {n: POLICIES.get(n)().decision_macs(test.logits.shape[-1]) for n in POLICIES}}


def summarise(m: dict[str, Any]) -> dict[str, Any]:
    """Per policy, over the budgets both it and the threshold policy reach (``reach`` of them):
    area (mean test accuracy), the threshold's area there, gap closed (mean gain over thresholds /
    the oracle's mean gain over thresholds), worst difference; and accuracy at ``AT``."""
    acc = m["accuracy"]
    out: dict[str, Any] = {}
    for name, vals in acc.items():
        ok = [i for i in range(BUDGETS) if vals[i] is not None and acc["threshold"][i] is not None]
        v, thr, orc = (np.array([a[i] for i in ok], dtype=np.float64) for a in (vals, acc["threshold"], acc["oracle"]))
        gap = float((orc - thr).sum())
        out[name] = {"reach": len(ok), "area": float(v.mean()) if ok else None,
                     "threshold_area": float(thr.mean()) if ok else None,
                     "at": [vals[int(round(f * (BUDGETS - 1)))] for f in AT],
                     # The mean gain over the mean gap: a budget where the oracle is a hair above
                     # thresholds weighs its hair, not a ratio of two hairs.
                     "gap_closed": float((v - thr).sum()) / gap if ok and gap > 0 else (0.0 if ok else None),
                     "worst_vs_threshold": float((v - thr).min()) if ok else None}
    if "ensemble" in acc:  # the ensemble against the oracle of its own answers
        ok = [i for i in range(BUDGETS) if acc["ensemble"][i] is not None and acc["threshold"][i] is not None]
        v, thr, own = (np.array([a[i] for i in ok], dtype=np.float64)
                       for a in (acc["ensemble"], acc["threshold"], acc[OWN_ORACLE]))
        gap = float((own - thr).sum())
        out["ensemble"]["gap_closed_own"] = float((v - thr).sum()) / gap if ok and gap > 0 else None
    return out


def search_rules(checkpoint: Path, cfg_over: list[str], trials: int, seeds: int, out: Path) -> dict[str, Any]:
    """NSGA-II searches of ``trials`` under the threshold and share rules, per sampler seed: val
    hypervolume, the test numbers of the val front (its stored thresholds applied to test)."""
    runs: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES}
    for seed in range(seeds):
        for rule in runs:
            runs[rule].append(_search(checkpoint, cfg_over, rule, seed, trials, out))
    ref = (1.0, max(c for r in runs.values() for x in r for _, c in x["val"] + x["test"]) * 1.05)
    res: dict[str, Any] = {}
    for rule, rs in runs.items():
        for x in rs:
            x["val_hv"], x["test_hv"] = hypervolume_2d(x["val"], ref), hypervolume_2d(x["test"], ref)
        res[rule] = {k: float(np.mean([x[k] for x in rs])) for k in rs[0] if k not in ("val", "test")}
        res[rule]["runs"] = rs
    return res


def _search(checkpoint: Path, cfg_over: list[str], rule: str, seed: int, trials: int, out: Path) -> dict[str, Any]:
    url = f"sqlite:///{out / f'rule-{rule}-{seed}.db'}"
    cfg = load_config(None, cfg_over + [f"search.storage={url}", f"search.exit_rule={rule}", f"search.study={rule}",
                                        "search.progress=false", "search.recal_images=256", f"search.seed={seed}"])
    exp = Experiment(cfg, checkpoint)
    study = create_or_load_study(exp)
    t0 = time.perf_counter()
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    study.optimize(ArchObjective.for_experiment(exp), n_trials=max(0, trials - done))
    front = study.best_trials
    tests = []
    for t in front:
        cand = Candidate.from_dict(t.user_attrs["candidate"])
        r = candidate_result(cand, exp.evaluator.cache(cand.arch, "test"))  # its policy, as fit on val
        tests.append((1 - float(r.accuracy[0]), float(r.expected_cost[0]) / 1e6))
    hist = [t.user_attrs["exit_histogram"] for t in front]
    return {"seconds": time.perf_counter() - t0, "front": len(front),
            "front_cost_points": len({round(t.values[1], 6) for t in front}),
            "front_all_at_exit0": sum(1 for h in hist if h[0] == sum(h)),
            "dropped_exits": sum(len(t.user_attrs.get("dropped_exits", [])) for t in study.trials),
            "val": [(1 - t.values[0], t.values[1]) for t in front], "test": tests}


def report(rows: dict[str, Any], rules: dict[str, Any] | None, args: argparse.Namespace, env: dict[str, str],
           train_s: float | None) -> str:
    d = DATASETS[args.data]
    lines = [f"_{environment_line(env)}_", "",
             f"**Reduced CPU recipe: {d['label']}, val {args.val_n}, test {args.test_n} images; a small space "
             f"({d['space']}, widths 0.5/1, 5×5 shares 0/0.5, linear heads), {args.epochs:g} epochs "
             f"({_duration(train_s)}), trained on this machine's CPU; not the headline's GPU supernet.** "
             "Everything is fit on val (thresholds, temperatures, decider weights, the setting chosen per budget); "
             "numbers are test accuracy. Budgets: a grid of 21 from the first exit's val MMACs to the final exit's; "
             "*area* = mean test accuracy over the budgets both the policy and thresholds reach (*reach* of 21; "
             "*thr area* = the threshold policy's over the same budgets); accuracy at 25/50/75% of the range "
             "(— : the policy cannot meet that budget on val); *gap closed* = over those budgets, the policy's mean "
             "gain over thresholds / the budgeted oracle's mean gain over thresholds; *worst* = the policy's lowest "
             "(policy − threshold) over them, in points. A policy's own decision MACs are in its costs.", "",
             "| arch (exits) | policy | reach | area | thr area | acc @25% | acc @50% | acc @75% | gap closed "
             "| worst vs thr (pts) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arch, r in rows.items():
        lines += _arch_rows(arch, r)
    lines += _targets(rows, args)
    if rules:
        lines += _rules_table(rules, args)
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "trained before this run by `exitnas train` with the same config"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def _arch_rows(arch: str, r: dict[str, Any]) -> list[str]:
    s, mm = r["summary"], r["budgets_mmacs"]
    at_mm = "/".join(f"{mm[int(round(f * (BUDGETS - 1)))]:.3f}" for f in AT)
    out = []
    plain = ("threshold", "oracle", OWN_ORACLE)
    for n in [*POLICIES, "oracle", *([OWN_ORACLE] if OWN_ORACLE in s else [])]:
        at = " | ".join("—" if a is None else f"{a:.4f}" for a in s[n]["at"])
        gap = "" if n in plain else f"{s[n]['gap_closed']:.0%}"
        if s[n].get("gap_closed_own") is not None:
            gap += f" ({s[n]['gap_closed_own']:.0%} of its own)"
        worst = "" if n in plain else f"{100 * s[n]['worst_vs_threshold']:+.2f}"
        out.append(f"| {arch} ({r['exits']} exits; {at_mm} MMACs) | {n} | {s[n]['reach']} | {s[n]['area']:.4f} | "
                   f"{s[n]['threshold_area']:.4f} | {at} | {gap} | {worst} |")
    return out


def _targets(rows: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The issue's targets, PASS/MISS: gap closed, worst budget, decision cost, batch-1 latency."""
    means = {n: float(np.mean([r["summary"][n]["gap_closed"] for r in rows.values()])) for n in POLICIES
             if n != "threshold"}
    best = max(means, key=lambda n: means[n])
    worst = min(r["summary"][best]["worst_vs_threshold"] for r in rows.values())
    ceiling = float(np.mean([r["summary"][IN_SAMPLE]["gap_closed"] for r in rows.values()]))
    first = next(iter(rows.values()))
    dec = first["decision_macs"]
    share = max(dec.values()) / (first["exit0_mmacs"] * 1e6)
    lines = ["", "**Targets** (best policy = the one closing most of the gap, mean over the archs):", "",
             f"- gap closed ≥ 50%: {best} {means[best]:.0%} — {'PASS' if means[best] >= 0.5 else 'MISS'} "
             "(all: " + ", ".join(f"{n} {v:.0%}" for n, v in means.items()) + ")",
             f"- never more than 0.2 points below thresholds: {best}'s worst budget {100 * worst:+.2f} points — "
             f"{'PASS' if worst >= -0.002 else 'MISS'} (one test image is {100 / args.test_n:.2f} points)",
             *_ensemble_line(rows, best),
             f"- the policies that keep the exits' answers and only choose where to leave stay far below: the "
             f"decider closes {means['decider']:.0%}, and fit *and chosen on test itself* (an in-sample ceiling of "
             f"its features, not a result) {ceiling:.0%}. What an exit knows when it decides (its and earlier exits' "
             "outputs) does not tell which later exit will be right; the budgeted oracle's images right at some "
             "exit by chance stay out of their reach",
             f"- decision cost ≤ 1% of the cheapest exit's MACs: at most {max(dec.values())} MACs per exit ("
             + ", ".join(f"{n} {m}" for n, m in dec.items()) + f") against {first['exit0_mmacs'] * 1e6:,.0f}: "
             f"{share:.3%} — {'PASS' if share <= 0.01 else 'MISS'}"]
    lines += _per_budget(rows, best)
    lat = {a: r["latency"] for a, r in rows.items() if r.get("latency")}
    if lat:
        worst_ratio = max(v["passing_ratio"] for ls in lat.values() for v in ls.values())
        lines.append(f"- batch-1 latency with the policy within 5% of thresholds (deployed TorchScript, 1 thread, "
                     f"every exit passed): worst {worst_ratio - 1:+.1%} — {'PASS' if worst_ratio <= 1.05 else 'MISS'}")
        lines += ["", "| arch | policy | ms/image, every exit passed | × threshold | ms/image, setting at the 50% "
                      "budget |", "|---|---|---:|---:|---:|"]
        for a, ls in lat.items():
            lines += [f"| {a} | {n} | {v['passing']:.3f} | {v['passing_ratio']:.3f} | {v['chosen']:.3f} |"
                      for n, v in ls.items()]
    return lines


def _ensemble_line(rows: dict[str, Any], best: str) -> list[str]:
    if best != "ensemble":
        return []
    own = [r["summary"]["ensemble"].get("gap_closed_own") for r in rows.values()]
    own_mean = float(np.mean([v for v in own if v is not None])) if any(v is not None for v in own) else float("nan")
    return [f"- the ensemble changes what an exit answers (each exit's answer is recalibrated and combined with "
            f"the earlier exits'), so it can pass the exits' own oracle; against the budgeted oracle of its own "
            f"answers it closes {own_mean:.0%} of the gap"]


def _per_budget(rows: dict[str, Any], best: str) -> list[str]:
    """Per budget of the grid (as a share of each arch's range), means over the archs: thresholds,
    the best policy, the oracle, and the share of the gap closed there."""
    lines = ["", f"Per budget (the best policy, {best}; means over the {len(rows)} archs; the budget as a share of "
             "each arch's range from its first exit's val MMACs to its final exit's; — where a policy cannot meet "
             "the budget on val for some arch):", "",
             f"| budget | threshold | {best} | oracle | {best} − threshold (pts) | gap closed |",
             "|---:|---:|---:|---:|---:|---:|"]
    for i in range(BUDGETS):
        vals = {n: [r["accuracy"][n][i] for r in rows.values()] for n in ("threshold", best, "oracle")}
        if any(v is None for vs in vals.values() for v in vs):
            lines.append(f"| {i / (BUDGETS - 1):.0%} | — | — | — | — | — |")
            continue
        thr, pol, orc = (float(np.mean(vals[n])) for n in ("threshold", best, "oracle"))
        closed = f"{(pol - thr) / (orc - thr):.0%}" if orc - thr > 1e-9 else "—"
        lines.append(f"| {i / (BUDGETS - 1):.0%} | {thr:.4f} | {pol:.4f} | {orc:.4f} | {100 * (pol - thr):+.2f} | "
                     f"{closed} |")
    return lines + [""]


def _rules_table(rules: dict[str, Any], args: argparse.Namespace) -> list[str]:
    better = max(rules, key=lambda rule: rules[rule]["test_hv"])
    lines = ["", "Exit rule: mean test HV " + ", ".join(f"{rule} {r['test_hv']:.4f}" for rule, r in rules.items())
             + f": {better} is ahead here.", "",
             f"Exit rule as search space: NSGA-II, {args.trials} trials per search, sampler seeds "
             f"0…{args.seeds - 1}, same supernet; hypervolume of (1 − accuracy, MMACs) with one reference for "
             "all; means over seeds (per seed: val HV / test HV).", "",
             "| rule | val HV | test HV of the val front | per seed | front points | distinct costs | "
             "all at exit 0 | exits dropped (all trials) | s |", "|---|---|---|---|---|---|---|---|---|"]
    for rule, r in rules.items():
        per = ", ".join(f"{x['val_hv']:.4f}/{x['test_hv']:.4f}" for x in r["runs"])
        lines.append(f"| {rule} | {r['val_hv']:.4f} | {r['test_hv']:.4f} | {per} | {r['front']:.1f} | "
                     f"{r['front_cost_points']:.1f} | {r['front_all_at_exit0']:.1f} | {r['dropped_exits']:.1f} | "
                     f"{r['seconds']:.0f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=list(DATASETS), default="digits")
    ap.add_argument("--data-root", help="the CIFAR-10 JPEG tar (../shared/data/cifar10-jpeg.tar.xz)")
    ap.add_argument("--epochs", type=float, help="supernet epochs (default: the dataset's recipe)")
    ap.add_argument("--archs", type=int, default=2, help="random archs besides the two fixed ones")
    ap.add_argument("--trials", type=int, default=100, help="trials per exit-rule search (0: skip that part)")
    ap.add_argument("--seeds", type=int, default=2, help="sampler seeds per exit rule")
    ap.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency of the deployed policies")
    ap.add_argument("--out", help="run folder (default runs/bench_policies-<data>)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = ap.parse_args()
    args.epochs = DATASETS[args.data]["epochs"] if args.epochs is None else args.epochs
    if args.data == "cifar10-jpeg" and not args.data_root:
        ap.error("--data cifar10-jpeg needs --data-root (the CIFAR-10 JPEG tar)")
    torch.set_num_threads(1)
    out = Path(args.out or f"runs/bench_policies-{args.data}")
    over = recipe(args.data, args.data_root, args.epochs, out)
    cfg = load_config(None, over)
    trained_here = None
    if not (out / "supernet.pt").is_file():
        t0 = time.perf_counter()
        train_supernet(cfg)
        trained_here = time.perf_counter() - t0
    train_s = _train_seconds(out, trained_here)
    exp = Experiment(cfg, out / "supernet.pt")
    rows = measure_archs(exp, args)
    rules = search_rules(out / "supernet.pt", over, args.trials, args.seeds, out) if args.trials else None
    (out / "policies.json").write_text(json.dumps({"rows": rows, "rules": rules}, indent=1))
    page = write_page(rows, out / "policies.html", f"Exit policies on {DATASETS[args.data]['label']} (test)")
    text = report(rows, rules, args, environment("cpu"), train_s) + f"\n\nPage of curves: `{page}` (not committed)."
    print(text)
    if not args.no_write:
        write_section(HEADING if args.data == "digits" else HEADING.replace("(issue 17)", "on CIFAR-10 (issue 17)"),
                      text)
    return 0


def measure_archs(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Every policy's budgeted test curve per arch, its summary and (unless ``--no-latency``) its latency."""
    ev = exp.evaluator
    args.val_n, args.test_n = len(exp.splits.val_y), len(exp.splits.test_y)
    rows: dict[str, Any] = {}
    for name, arch in archs(ev, args.archs).items():
        c = ev.caches(arch, ("val", "test"))
        m = measure(c["val"], c["test"])
        rows[name] = {**m, "summary": summarise(m), "exits": arch.num_exits,
                      "exit0_mmacs": float(c["val"].exit_macs()[0]) / 1e6}
        if not args.no_latency and name in ("largest, every block", "largest, stage ends"):
            rows[name]["latency"] = policy_latency(ev, arch, c["val"], exp.splits.test_x)
        print(name, json.dumps({n: round(v["area"], 4) for n, v in rows[name]["summary"].items()}), flush=True)
    return rows


def _train_seconds(out: Path, trained_here: float | None) -> float | None:
    """The supernet's training time: measured in this run (and kept beside it), else as an earlier
    run of this benchmark kept it; None when it was trained otherwise."""
    kept = out / "train_seconds.txt"
    if trained_here is not None:
        kept.write_text(f"{trained_here:.1f}\n")
        return trained_here
    try:
        return float(kept.read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
