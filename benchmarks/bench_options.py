"""The literature's early-exit options, each against the plain option, same data and budget (issue 7).

Every row trains a supernet with the same recipe on the CIFAR-10 JPEG data, changing only its
option, then evaluates one fixed layout — the largest backbone with an exit at every stage end —
by MSDNet's budgeted-batch protocol: for each of three fixed MACs budgets, thresholds are fit
on the validation split (p swept finely; the most accurate setting whose validation cost fits
the budget), then applied to the test split. Reported: test accuracy and test MMACs per budget,
and the final exit's test accuracy. The ``bof-rule`` row reuses the plain supernet and replaces
per-exit thresholds by the bag-of-features rule (one β, fit to the budget on validation).

``--device cpu`` with the defaults is the reduced CPU recipe (a small space, a few epochs):
it is labelled as such in RESULTS.md, and one more seed of the plain option measures the
run-to-run spread, the yardstick for every difference in the table.

Usage: ``python benchmarks/bench_options.py [--epochs 1.5] [--only plain,boost] [--device cpu]``.
Checkpoints go to ``--out`` (default runs/bench_options); a finished option is not retrained.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment, environment_line, write_section  # noqa: E402

from exitnas._config import ExperimentConfig, load_config  # noqa: E402
from exitnas._io import atomic_write_bytes  # noqa: E402
from exitnas.data import load_dataset  # noqa: E402
from exitnas.evaluators import (  # noqa: E402
    Evaluator,
    ExitCache,
    ExitPolicy,
    bof_thresholds,
    fit_bof_beta,
    fit_to_budget,
)
from exitnas.results import stage_exit_arch  # noqa: E402
from exitnas.search_space import ArchConfig  # noqa: E402
from exitnas.training import load_supernet, space_for, train_supernet  # noqa: E402

HEADING = "## bench_options: the literature's early-exit options against the plain option (issue 7), {epochs:g} epochs"

#: Option → config overrides on top of the shared recipe (the plain option overrides nothing).
OPTIONS: dict[str, list[str]] = {
    "plain": [],
    "plain, seed 1": ["train.seed=1"],
    "plain, sampled exit sets": ["train.exit_sets=sampled"],
    "plain, sampled exit sets, seed 1": ["train.exit_sets=sampled", "train.seed=1"],
    "msdnet head": ["space.heads=[msdnet]"],
    "bof head": ["space.heads=[bof]"],
    "self-distill": ["train.loss=self-distill"],
    "boost": ["space.combine=boost"],
    "ztw": ["space.combine=ztw"],
    "ztw + ensemble": ["space.combine=ztw", "space.ensemble=geometric"],
    "dfs (β 0.5)": ["train.routing=dfs", "train.dfs_beta=0.5"],
    "EMGNet multi-scale (5×5 share {0, 0.5})": ["space.ratios=[0.0, 0.5]"],
    "EMGNet dynamic gate": ["space.gate=emg"],
    "EMGNet dynamic gate, cost 0.3": ["space.gate=emg", "train.gate_cost=0.3"],
}
WHAT = {
    "plain": "linear heads, independent exits, shared features, CE at every exit, 3×3 convs, per-exit thresholds",
    "plain, seed 1": "the plain option again with another seed: the run-to-run spread",
    "plain, sampled exit sets": "plain, but each sandwich subnet trains a random exit set (as boost and ztw do), "
                                "not an exit at every block: separates the combiners from their training",
    "plain, sampled exit sets, seed 1": "the same with another seed",
    "msdnet head": "MSDNet's conv exit head (Huang et al. 2018)",
    "bof head": "bag-of-features exit head (Passalis et al. 2020)",
    "bof-rule": "plain supernet; BoF exit rule: one β × each exit's mean training confidence",
    "self-distill": "exits distilled from the subnet's deepest exit",
    "boost": "BoostNet: exit k learns f_k + detach(F_{k-1})",
    "ztw": "Zero Time Waste cascade: f_k + W_k detach(F_{k-1})",
    "ztw + ensemble": "the cascade, and ZTW's geometric ensemble of exits 0..k fitted per subnet on 1,000 "
                      "training images",
    "dfs (β 0.5)": "Deep Feature Surgery partition + detached referencing at exits",
    "EMGNet multi-scale (5×5 share {0, 0.5})": "5×5 kernels whose centre is the 3×3, half the channels at the "
                                               "largest subnet, instead of 3×3 only",
    "EMGNet dynamic gate": "3×3 convs whose channels a per-sample gate grows to 5×5 (train.gate_cost 1.0); "
                           "each test image is charged its own MACs",
    "EMGNet dynamic gate, cost 0.3": "the same with train.gate_cost 0.3",
}
BUDGET_SHARES = (0.4, 0.7, 1.0)  # of the plain layout's full-depth MACs
P_GRID = tuple(np.round(np.geomspace(0.02, 8.0, 160), 5))


def recipe(epochs: float, device: str, out: Path) -> list[str]:
    """The shared reduced recipe: a small space, a few epochs, the CIFAR-10 JPEG data."""
    return [
        "data.name=cifar10-jpeg", "data.val_size=5000",
        "space.channels=[8, 16, 32]", "space.depths=[1, 2]", "space.widths=[0.5, 1.0]",
        "space.ratios=[0.0]", "space.heads=[linear]",
        f"train.epochs={epochs}", "train.batch_size=128", "train.lr=0.1", "train.warmup_epochs=0.3",
        "train.sandwich_random=1", f"train.device={device}", "train.progress=false", f"train.out={out}",
    ]


def budgeted(val: ExitCache, test: ExitCache, budget: float) -> dict[str, float] | None:
    """The most accurate budgeted-batch setting on val whose val MACs fit ``budget``, scored on test."""
    fit = fit_to_budget(val, budget, P_GRID)
    if fit is None:
        return None
    t = ExitPolicy(test).evaluate(fit.thresholds)
    return {"test_acc": float(t.accuracy[0]), "test_mmacs": float(t.expected_cost[0]) / 1e6,
            "val_mmacs": fit.macs / 1e6}


def bof_budgeted(train: ExitCache, val: ExitCache, test: ExitCache, budget: float) -> dict[str, float] | None:
    beta = fit_bof_beta(train, val, budget)
    thr = bof_thresholds(train, beta)
    v = ExitPolicy(val).evaluate(thr)
    if v.expected_cost[0] > budget:
        return None
    t = ExitPolicy(test).evaluate(thr)
    return {"test_acc": float(t.accuracy[0]), "test_mmacs": float(t.expected_cost[0]) / 1e6,
            "val_mmacs": float(v.expected_cost[0]) / 1e6, "beta": beta}


def run_option(name: str, base: list[str], out: Path, splits: Any) -> tuple[ExperimentConfig, float]:
    """Train the option's supernet unless a finished one is in ``out``; its training seconds."""
    cfg = load_config(None, base + OPTIONS[name])
    timing = out / "train_seconds.json"
    if timing.is_file() and (out / "supernet.pt").is_file():
        return cfg, float(json.loads(timing.read_text())["seconds"])
    t0 = time.perf_counter()
    train_supernet(cfg, resume=True, splits=splits)
    seconds = time.perf_counter() - t0
    atomic_write_bytes(timing, json.dumps({"seconds": seconds}).encode())
    return cfg, seconds


def layout(cfg: ExperimentConfig, splits: Any) -> ArchConfig:
    return stage_exit_arch(space_for(cfg, splits))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=float, default=1.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="", help="comma-separated option names (default: all)")
    ap.add_argument("--out", default="runs/bench_options")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in OPTIONS if not args.only or n in args.only.split(",")]
    out = Path(args.out)
    splits = load_dataset(load_config(None, recipe(args.epochs, args.device, out)).data)
    rows: dict[str, Any] = {}
    budgets: list[float] | None = None
    for name in names:
        folder = out / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        base = recipe(args.epochs, args.device, folder)
        cfg, train_s = run_option(name, base, folder, splits)
        supernet, _ = load_supernet(str(folder / "supernet.pt"), space_for(cfg, splits), map_location=args.device)
        ev = Evaluator(supernet, splits, recal_images=2000, device=args.device)
        arch = layout(cfg, splits)
        caches = ev.caches(arch, ("train", "val", "test"))
        if budgets is None:  # fixed by the plain option's layout (the first row), the same for every row
            full = float(caches["val"].exit_macs()[-1])
            budgets = [s * full for s in BUDGET_SHARES]
        rows[name] = {
            "train_s": train_s, "mmacs_exits": [m / 1e6 for m in caches["val"].exit_macs()],
            "final_test_acc": float(caches["test"].exit_accuracy()[-1]),
            "budgets": [budgeted(caches["val"], caches["test"], b) for b in budgets],
        }
        if name == "plain":
            rows["bof-rule"] = {
                "train_s": 0.0, "mmacs_exits": rows[name]["mmacs_exits"],
                "final_test_acc": rows[name]["final_test_acc"],
                "budgets": [bof_budgeted(caches["train"], caches["val"], caches["test"], b) for b in budgets],
            }
        print(f"{name}: trained in {train_s:.0f} s; " + json.dumps(rows[name]["budgets"]), flush=True)
    atomic_write_bytes(out / "options.json", json.dumps({"budgets_mmacs": [b / 1e6 for b in budgets or []],
                                                    "rows": rows}, indent=1).encode())
    env = environment(args.device)
    print(table(rows, budgets or [], args))
    if set(names) == set(OPTIONS):  # a partial run is not a table
        write_section(HEADING.format(epochs=args.epochs), report(rows, budgets or [], args, env))
    return 0


def table(rows: dict[str, Any], budgets: list[float], args: argparse.Namespace) -> str:
    head = " | ".join(f"test acc @ {b / 1e6:.2f} MMACs" for b in budgets)
    lines = [f"| option | {head} | final exit (full depth) | exit MMACs | train s |",
             "|---" * (len(budgets) + 4) + "|"]
    plain = rows.get("plain")
    for name, r in rows.items():
        cells = []
        for i, b in enumerate(r["budgets"]):
            if b is None:
                cells.append("— (first exit over budget)")
                continue
            delta = ""
            if plain and name != "plain" and plain["budgets"][i]:
                delta = f" ({100 * (b['test_acc'] - plain['budgets'][i]['test_acc']):+.2f})"
            cells.append(f"{100 * b['test_acc']:.2f}%{delta} at {b['test_mmacs']:.2f}")
        mm = ", ".join(f"{m:.2f}" for m in r["mmacs_exits"])
        lines.append(f"| {name} | {' | '.join(cells)} | {100 * r['final_test_acc']:.2f}% | {mm} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def report(rows: dict[str, Any], budgets: list[float], args: argparse.Namespace, env: dict[str, str]) -> str:
    label = ("**Reduced CPU run** (no GPU lent): " if args.device == "cpu" else "") + (
        f"each supernet trained {args.epochs:g} epochs on 45,000 CIFAR-10 JPEG training images, space channels "
        "8/16/32, depths {1, 2}, widths {0.5, 1}, 3×3 convs (ratio 0), batch 128, sandwich (largest, smallest, "
        "1 random), lr 0.1 cosine; evaluated layout: the largest backbone with an exit at every stage end "
        "(3 exits), BN recalibrated on 2,000 training images; thresholds fit on the 5,000-image validation "
        "split, accuracy on the 10,000 test images. Budgets are fixed MMACs (of the plain layout's "
        "full depth: 40/70/100%); cells give test accuracy (difference to plain, points) at the test MMACs spent; "
        "train s is the wall time of training on a shared machine (informative, not a target).")
    spread = ""
    if "plain" in rows and "plain, seed 1" in rows:
        d = [abs(a["test_acc"] - b["test_acc"]) * 100 for a, b in zip(rows["plain"]["budgets"],
                                                                       rows["plain, seed 1"]["budgets"]) if a and b]
        if d:
            spread = (f"\n\nRun-to-run spread (plain, seeds 0 and 1): {', '.join(f'{v:.2f}' for v in d)} points at "
                      "the three budgets; differences of that size are noise, not an effect of the option.")
    what = "\n".join(f"- **{n}**: {WHAT[n]}" for n in rows if n in WHAT)
    return f"{environment_line(env)}\n\n{label}\n\n{table(rows, budgets, args)}{spread}\n\nOptions:\n{what}\n"


if __name__ == "__main__":
    raise SystemExit(main())
