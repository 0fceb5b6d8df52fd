"""Exit policies against confidence thresholds and the budgeted oracle (issue 17).

On the exit caches of a few archs of one trained supernet: every policy of ``POLICIES`` is fit
on val only (thresholds, temperatures, decider weights, the setting chosen per budget), then
measured on test; the budgeted oracle (perfect knowledge of every exit's answer) is the ceiling.
Reported per arch: the normalised area under the test accuracy–budget curve over a grid of
budgets from the first exit's cost to the final exit's, accuracy at three budgets, and the share
of the threshold→oracle gap each policy closes. A second part compares the ``threshold`` and
``share`` exit rules as search spaces: two NSGA-II searches of the same length on the same
supernet, their val fronts' hypervolume and their front points' test numbers.

``--device cpu`` with the defaults is the reduced recipe that fits a few minutes on a CPU: the
built-in 8×8 digits, a small space, a few epochs. It is labelled as such in RESULTS.md; it is
not CIFAR-10.

Usage: ``python benchmarks/bench_policies.py [--epochs 30] [--trials 100] [--seeds 2] [--out runs/bench_policies]``.
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

from exitnas._config import load_config  # noqa: E402
from exitnas.evaluators import (  # noqa: E402
    POLICIES,
    Evaluator,
    ExitCache,
    ExitPolicy,
    accuracy_at,
    budgeted_oracle,
    fit_policy,
)
from exitnas.experiment import Experiment  # noqa: E402
from exitnas.results import hypervolume_2d  # noqa: E402
from exitnas.results._evaluate import stage_exit_arch  # noqa: E402
from exitnas.search import ArchObjective, create_or_load_study  # noqa: E402
from exitnas.search_space import ArchConfig, Candidate  # noqa: E402
from exitnas.training import train_supernet  # noqa: E402

HEADING = "## bench_policies: exit policies against thresholds and the budgeted oracle (issue 17)"
BUDGETS = 21  # grid from the first exit's val cost to the final exit's
AT = (0.25, 0.5, 0.75)  # the three reported budgets, as fractions of that range


def recipe(epochs: float, out: Path) -> list[str]:
    return ["data.name=digits", "data.val_size=0.3", "space.channels=[8, 16, 32]", "space.depths=[1, 2, 3]",
            "space.widths=[0.5, 1.0]", "space.ratios=[0.0, 0.5]", "space.heads=[linear]", f"train.epochs={epochs}",
            "train.batch_size=128", "train.device=cpu", "train.progress=false", f"train.out={out}"]


def archs(ev: Evaluator) -> dict[str, ArchConfig]:
    """The largest net with an exit at every block, MSDNet's stage-end layout, two random archs with all exits."""
    space = ev.space
    rng = random.Random(0)
    out = {"largest, every block": space.largest(all_exits=True), "largest, stage ends": stage_exit_arch(space)}
    for i in range(2):
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
    return {"budgets_mmacs": (grid / 1e6).tolist(), "accuracy": rows,
            "decision_macs": {n: POLICIES.get(n)().decision_macs(test.logits.shape[-1]) for n in POLICIES}}


def summarise(m: dict[str, Any]) -> dict[str, Any]:
    """Per policy, over the budgets both it and the threshold policy reach (``reach`` of them):
    area (mean test accuracy), the threshold's area there, gap closed, worst difference; and
    accuracy at ``AT``."""
    acc = m["accuracy"]
    out: dict[str, Any] = {}
    for name, vals in acc.items():
        ok = [i for i in range(BUDGETS) if vals[i] is not None and acc["threshold"][i] is not None]
        v, thr, orc = (np.array([a[i] for i in ok], dtype=np.float64) for a in (vals, acc["threshold"], acc["oracle"]))
        gap = orc - thr
        closed = np.where(gap > 0, (v - thr) / np.where(gap > 0, gap, 1), 0.0)
        out[name] = {"reach": len(ok), "area": float(v.mean()) if ok else None,
                     "threshold_area": float(thr.mean()) if ok else None,
                     "at": [vals[int(round(f * (BUDGETS - 1)))] for f in AT],
                     "gap_closed": float(closed.mean()) if ok else None,
                     "worst_vs_threshold": float((v - thr).min()) if ok else None}
    return out


def search_rules(checkpoint: Path, cfg_over: list[str], trials: int, seeds: int, out: Path) -> dict[str, Any]:
    """NSGA-II searches of ``trials`` under the threshold and share rules, per sampler seed: val
    hypervolume, the test numbers of the val front (its stored thresholds applied to test)."""
    runs: dict[str, list[dict[str, Any]]] = {"threshold": [], "share": []}
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
        r = ExitPolicy(exp.evaluator.cache(cand.arch, "test")).evaluate(np.asarray(cand.thresholds))
        tests.append((1 - float(r.accuracy[0]), float(r.expected_cost[0]) / 1e6))
    hist = [t.user_attrs["exit_histogram"] for t in front]
    return {"seconds": time.perf_counter() - t0, "front": len(front),
            "front_cost_points": len({round(t.values[1], 6) for t in front}),
            "front_all_at_exit0": sum(1 for h in hist if h[0] == sum(h)),
            "dropped_exits": sum(len(t.user_attrs.get("dropped_exits", [])) for t in study.trials),
            "val": [(1 - t.values[0], t.values[1]) for t in front], "test": tests}


def report(rows: dict[str, Any], rules: dict[str, Any] | None, args: argparse.Namespace, env: dict[str, str],
           train_s: float) -> str:
    names = list(POLICIES) + ["oracle"]
    lines = [f"_{environment_line(env)}_", "",
             f"**Reduced CPU recipe: the built-in 8×8 digits (val {args.val_n}, test {args.test_n} images), a "
             f"small space (channels 8/16/32, depths ≤ 3), {args.epochs:g} epochs ({train_s:.0f} s) — not CIFAR-10.** "
             "Everything is fit on val (thresholds, temperatures, decider weights, the setting chosen per budget); "
             "numbers are test accuracy. Budgets: a grid of 21 from the first exit's val MMACs to the final exit's; "
             "*area* = mean test accuracy over the budgets both the policy and thresholds reach (*reach* of 21; "
             "*thr area* = the threshold policy's over the same budgets); accuracy at 25/50/75% of the range "
             "(— : the policy cannot meet that budget on val); *gap closed* = mean over those budgets of "
             "(policy − threshold)/(oracle − threshold) where the oracle is above; *worst* = the policy's lowest "
             "(policy − threshold) over them, in points.", "",
             "| arch (exits) | policy | reach | area | thr area | acc @25% | acc @50% | acc @75% | gap closed "
             "| worst vs thr (pts) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arch, r in rows.items():
        s = r["summary"]
        mm = r["budgets_mmacs"]
        at_mm = "/".join(f"{mm[int(round(f * (BUDGETS - 1)))]:.3f}" for f in AT)
        for n in names:
            at = " | ".join("—" if a is None else f"{a:.4f}" for a in s[n]["at"])
            gap = "" if n in ("threshold", "oracle") else f"{s[n]['gap_closed']:.0%}"
            worst = "" if n in ("threshold", "oracle") else f"{100 * s[n]['worst_vs_threshold']:+.2f}"
            lines.append(f"| {arch} ({r['exits']} exits; {at_mm} MMACs) | {n} | {s[n]['reach']} | {s[n]['area']:.4f} | "
                         f"{s[n]['threshold_area']:.4f} | {at} | {gap} | {worst} |")
    means = {n: float(np.mean([r["summary"][n]["gap_closed"] for r in rows.values()])) for n in POLICIES
             if n != "threshold"}
    best = max(means, key=lambda n: means[n])
    verdict = "reaches" if means[best] >= 0.5 else "is short of"
    lines += ["", "**Reading:** mean gap closed over the archs: " + ", ".join(f"{n} {v:.0%}" for n, v in means.items())
              + f". The best, {best}, closes {means[best]:.0%} of the threshold→oracle gap: it {verdict} the issue's "
              f"50%. One test image is {100 / args.test_n:.2f} points; the policies are fit on {args.val_n} val "
              "images."]
    if rules:
        better = "share" if rules["share"]["test_hv"] > rules["threshold"]["test_hv"] else "threshold"
        lines += [f"Exit rule: mean test HV threshold {rules['threshold']['test_hv']:.4f}, share "
                  f"{rules['share']['test_hv']:.4f}: {better} is ahead here"
                  + ("; `threshold` stays the default." if better == "threshold" else ".")]
    first = next(iter(rows.values()))
    lines += ["", "Decision cost (extra MACs per exit beyond the threshold rule's softmax, estimated): "
              + ", ".join(f"{n} {m}" for n, m in first["decision_macs"].items())
              + f"; the cheapest exit costs {first['exit0_mmacs'] * 1e6:,.0f} MACs."]
    if rules:
        lines += ["", f"Exit rule as search space: NSGA-II, {args.trials} trials per search, sampler seeds "
                  f"0…{args.seeds - 1}, same supernet; hypervolume of (1 − accuracy, MMACs) with one reference for "
                  "all; means over seeds (per seed: val HV / test HV).", "",
                  "| rule | val HV | test HV of the val front | per seed | front points | distinct costs | "
                  "all at exit 0 | exits dropped (all trials) | s |", "|---|---|---|---|---|---|---|---|---|"]
        for rule, r in rules.items():
            per = ", ".join(f"{x['val_hv']:.4f}/{x['test_hv']:.4f}" for x in r["runs"])
            lines.append(f"| {rule} | {r['val_hv']:.4f} | {r['test_hv']:.4f} | {per} | {r['front']:.1f} | "
                         f"{r['front_cost_points']:.1f} | {r['front_all_at_exit0']:.1f} | {r['dropped_exits']:.1f} | "
                         f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=float, default=30)
    ap.add_argument("--trials", type=int, default=100, help="trials per exit-rule search (0: skip that part)")
    ap.add_argument("--seeds", type=int, default=2, help="sampler seeds per exit rule")
    ap.add_argument("--out", default="runs/bench_policies")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    over = recipe(args.epochs, out)
    cfg = load_config(None, over)
    t0 = time.perf_counter()
    if not (out / "supernet.pt").is_file():
        train_supernet(cfg, resume=True)
    train_s = time.perf_counter() - t0
    exp = Experiment(cfg, out / "supernet.pt")
    ev = exp.evaluator
    args.val_n, args.test_n = len(exp.splits.val_y), len(exp.splits.test_y)
    rows: dict[str, Any] = {}
    for name, arch in archs(ev).items():
        c = ev.caches(arch, ("val", "test"))
        m = measure(c["val"], c["test"])
        rows[name] = {**m, "summary": summarise(m), "exits": arch.num_exits,
                      "exit0_mmacs": float(c["val"].exit_macs()[0]) / 1e6}
        print(name, json.dumps({n: round(v["area"], 4) for n, v in rows[name]["summary"].items()}), flush=True)
    rules = search_rules(out / "supernet.pt", over, args.trials, args.seeds, out) if args.trials else None
    (out / "policies.json").write_text(json.dumps({"rows": rows, "rules": rules}, indent=1))
    text = report(rows, rules, args, environment("cpu"), train_s)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
