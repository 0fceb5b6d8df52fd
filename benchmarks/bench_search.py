"""Search throughput with 1 and 2 Ray workers, and the hypervolume each sampler reaches.

Run from the repository root: ``.venv/bin/python benchmarks/bench_search.py`` (about 6 min on
two cores). It trains a small supernet on the built-in digits (a few seconds), then

(a) runs a fresh study of ``--trials`` trials with 1 and with 2 Ray workers on a journal file
    on local disk, each on a freshly started local Ray cluster with one CPU per core, and as a
    control 1 worker on a 1-CPU cluster (so with one torch thread); ``--repeats`` interleaved
    runs of each, median and range. Ray's start is not timed; the times are (1) the whole
    ``run_ray_workers`` call — worker start-up, model load and all trials — and (2) first to
    last trial completion (steady state), read from the trials' completion times in the
    database. Every new arch costs a BN recalibration and a val pass; a threshold-only trial
    reuses the cached ExitCache, so the share of reused caches is reported beside the rates.
(b) runs ``--hv-trials`` trials of NSGA-II, TPE and random search, ``--seeds`` seeds each, on
    the same supernet (in-memory storage, one process), and reports the hypervolume of each
    front in the normalised (1 − val accuracy, MMACs / ref) plane with reference point
    (accuracy 0, 1.1 × the largest subnet's final-exit MMACs): mean ± std over seeds.

The figures go to the ``## bench_search`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os

# Before Ray is imported: a single-machine cluster on 127.0.0.1 (not the node's address), no usage reports.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from _env import RESULTS, environment, loadavg, write_section  # noqa: E402

from exitnas._config import ExperimentConfig, load_config  # noqa: E402
from exitnas._samplers import make_sampler  # noqa: E402
from exitnas._storage import open_storage  # noqa: E402
from exitnas.experiment import Experiment  # noqa: E402
from exitnas.results import hypervolume_2d, pareto_mask  # noqa: E402
from exitnas.search import DIRECTIONS, ArchObjective, create_or_load_study  # noqa: E402
from exitnas.training import load_checkpoint, train_supernet  # noqa: E402

SECTION = "## bench_search"
SAMPLERS = ("nsga2", "tpe", "random")

#: A supernet that trains in seconds on two cores and still reaches a useful accuracy range.
SUPERNET = [
    "data.name=digits",
    "space.channels=[8,16,32]",
    "space.depths=[1,2]",
    "space.widths=[0.5,1.0]",
    "space.ratios=[0.0,0.5,1.0]",
    "train.batch_size=128",
    "train.progress=false",
]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- (a) throughput ------------------------------------------------------------------------------
#: (workers, Ray cluster CPUs): what ``--workers 1`` and ``--workers 2`` get here, and a control
#: of 1 worker on a 1-CPU cluster (exitnas gives each worker cluster CPUs // workers torch threads).
CONFIGS = ((1, 0), (2, 0), (1, 1))  # 0: one CPU per core


def throughput(cfg: ExperimentConfig, checkpoint: str, workers: int, trials: int, folder: Path,
               cpus: int, run: int) -> dict[str, Any]:
    """A fresh study of ``trials`` trials on ``workers`` Ray workers; Ray's start is not timed."""
    import ray

    from exitnas._ray_backend import run_ray_workers

    name = f"bench-{workers}w{cpus}c-{run}"
    d = cfg.to_dict()
    d["search"].update(storage=f"journal:///{folder / f'{name}.log'}", study=name, trials=trials, workers=workers,
                       backend="ray", progress=False)
    cfg = ExperimentConfig.from_dict(d)
    create_or_load_study(Experiment(cfg, checkpoint))
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.time()
        run_ray_workers(cfg, checkpoint, -(-trials // workers))
        wall = time.time() - t0
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name=name, storage=open_storage(cfg.search.storage, heartbeat=False))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    ends = sorted(t.datetime_complete.timestamp() for t in done)
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) * 60 if len(ends) > 1 and ends[-1] > ends[0] else float("nan")
    return {"complete": len(done), "wall_s": wall, "call": len(done) / wall * 60, "steady": steady,
            "first_done_s": ends[0] - t0,
            "reused": sum(bool(t.user_attrs.get("cache_reused")) for t in done) / len(done),
            "pids": len({t.user_attrs.get("worker_pid") for t in done})}


def throughputs(cfg: ExperimentConfig, checkpoint: str, trials: int, repeats: int,
                folder: Path) -> list[dict[str, Any]]:
    """Each configuration ``repeats`` times, interleaved (the load of a shared machine drifts)."""
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for run in range(repeats):
        for workers, cpus in CONFIGS:
            r = throughput(cfg, checkpoint, workers, trials, folder, cpus or _cores(), run)
            runs[workers, cpus].append(r)
            print(f"  run {run}: {workers} worker(s) × {max(1, (cpus or _cores()) // workers)} thread(s): "
                  f"{r['complete']} trials, call {r['wall_s']:.1f} s = {r['call']:.1f}/min, steady "
                  f"{r['steady']:.1f}/min, caches reused {100 * r['reused']:.0f} %", flush=True)
    out = []
    for (workers, cpus), rs in runs.items():
        row: dict[str, Any] = {"workers": workers, "threads": max(1, (cpus or _cores()) // workers)}
        for key in ("call", "steady", "wall_s", "first_done_s", "reused"):
            vals = [r[key] for r in rs]
            row[key] = statistics.median(vals)
            row[key + "_range"] = (min(vals), max(vals))
        row["complete"] = sorted({r["complete"] for r in rs})
        row["pids"] = sorted({r["pids"] for r in rs})
        out.append(row)
    return out


# -- (b) hypervolume -----------------------------------------------------------------------------
def hypervolumes(exp: Experiment, trials: int, seeds: int) -> tuple[dict[str, list[float]], float]:
    space, objective = exp.space, ArchObjective.for_experiment(exp)
    ref_mmacs = 1.1 * max(exp.evaluator.costs(space.largest(head=h)).macs[-1] for h in space.head_choices) / 1e6
    ref = np.array([1.0, 1.0])
    out: dict[str, list[float]] = {}
    for name in SAMPLERS:
        out[name] = []
        for seed in range(seeds):
            study = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler(name, seed))
            study.optimize(objective, n_trials=trials, gc_after_trial=False)
            vals = np.array([t.values for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))])
            vals = vals[pareto_mask(vals[:, 0], vals[:, 1])]
            pts = np.column_stack([1.0 - vals[:, 0], vals[:, 1] / ref_mmacs])
            hv = hypervolume_2d(pts, ref)
            _check_against_optuna(pts, ref, hv)
            out[name].append(hv)
            print(f"  {name:<7} seed {seed}: hypervolume {hv:.4f} ({len(pts)} points on the front)", flush=True)
    return out, ref_mmacs


def _check_against_optuna(pts: np.ndarray, ref: np.ndarray, hv: float) -> None:
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:  # a private module: fine if it moves
        return
    inside = pts[(pts < ref).all(axis=1)]
    theirs = float(compute_hypervolume(inside, ref)) if len(inside) else 0.0
    assert abs(theirs - hv) < 1e-9, (theirs, hv)


# -- report -----------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import ray

    env = environment()
    env.update(optuna=optuna.__version__, ray=ray.__version__)
    return env


def _mr(row: dict[str, Any], key: str, fmt: str) -> str:
    lo, hi = row[key + "_range"]
    return f"{row[key]:{fmt}} [{lo:{fmt}}–{hi:{fmt}}]"


def _ints(values: list[int]) -> str:
    return "/".join(str(v) for v in values)


def render(env: dict[str, str], setup: dict[str, Any], tp: list[dict[str, Any]], hv: dict[str, list[float]],
           ref_mmacs: float) -> str:
    one = tp[0]
    lines = [
        f"- device: {env['device']}; shared with other jobs: load average {setup['load_before']} before, "
        f"{setup['load_after']} after",
        f"- torch {env['torch']}, optuna {env['optuna']}, ray {env['ray']}, python {env['python']}",
        f"- commit {env['commit']}, {env['date']}",
        f"- supernet: digits, {setup['space']}, trained {setup['epochs']} epochs in {setup['train_s']:.0f} s; "
        f"search: recal {setup['recal']} train images, {setup['val']} val images",
        "",
        f"### Throughput: {setup['trials']} trials, fresh study, journal file on local disk, NSGA-II",
        "",
        "Ray start not timed. *call*: the whole `run_ray_workers` call (worker start-up, supernet load, all "
        "trials); *steady*: first to last trial completion. exitnas gives each worker (cluster CPUs // workers) "
        "torch threads: the first row is what `--workers 1` gets on this machine, the last a control with one "
        f"thread (a Ray cluster of 1 CPU). Median [min–max] of {setup['repeats']} interleaved runs; speed-ups of "
        "medians, against the first row.",
        "",
        "| workers | torch threads each | complete | trials/min (call) | trials/min (steady) "
        "| speed-up (call / steady) | call s | first trial done after | caches reused | worker pids |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in tp:
        lines.append(
            f"| {r['workers']} | {r['threads']} | {_ints(r['complete'])} | {_mr(r, 'call', '.1f')} | "
            f"{_mr(r, 'steady', '.1f')} | {r['call'] / one['call']:.2f}× / {r['steady'] / one['steady']:.2f}× | "
            f"{_mr(r, 'wall_s', '.1f')} | {_mr(r, 'first_done_s', '.1f')} s | {100 * r['reused']:.0f} % | "
            f"{_ints(r['pids'])} |")
    two = next(r for r in tp if r["workers"] == 2)
    control = tp[-1]
    lines += [
        "", f"Target: ≥ 1.7× with 2 workers. 2 workers against the 1-thread control: "
        f"{two['call'] / control['call']:.2f}× (call) / {two['steady'] / control['steady']:.2f}× (steady). "
        "On a machine whose cores other jobs share, a second worker finds no idle core: compare the load "
        "averages above.", "",
        f"### Hypervolume after {setup['hv_trials']} trials ({setup['seeds']} seeds each)", "",
        f"Objectives (1 − val accuracy, MMACs / {ref_mmacs:.4f}); reference point (1, 1), i.e. accuracy 0 and "
        "1.1 × the largest subnet's final-exit MMACs. Larger is better.", "",
        "| sampler | hypervolume mean ± std | per seed |", "|---|---:|---|",
    ]
    for name, vals in hv.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {name} | {statistics.mean(vals):.4f} ± {sd:.4f} | {', '.join(f'{v:.4f}' for v in vals)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=float, default=5, help="supernet training epochs")
    p.add_argument("--trials", type=int, default=40, help="trials per throughput run")
    p.add_argument("--repeats", type=int, default=3, help="throughput runs per configuration")
    p.add_argument("--hv-trials", type=int, default=60, help="trials per sampler and seed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help=f"print only; leave {RESULTS.name} alone")
    a = p.parse_args()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    env = _versions()
    load_before = loadavg()
    print(f"{env['device']}, load {load_before}; torch {env['torch']}, optuna {env['optuna']}, "
          f"ray {env['ray']}; commit {env['commit']}")

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        folder = Path(tmp)
        cfg = load_config(None, SUPERNET + [f"train.epochs={a.epochs}", f"train.out={folder / 'supernet'}"])
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        result = train_supernet(cfg)
        train_s = time.perf_counter() - t0
        checkpoint = str(result.checkpoint)
        cfg = ExperimentConfig.from_dict(load_checkpoint(checkpoint)["config"])
        print(f"supernet trained in {train_s:.0f} s")

        print(f"(a) throughput, {a.trials} trials per run, {a.repeats} runs each")
        tp = throughputs(cfg, checkpoint, a.trials, a.repeats, folder)

        print(f"(b) hypervolume, {a.hv_trials} trials × {a.seeds} seeds per sampler")
        d = cfg.to_dict()
        d["search"].update(storage=f"sqlite:///{folder / 'unused.db'}", progress=False)
        exp = Experiment(ExperimentConfig.from_dict(d), checkpoint)
        hv, ref_mmacs = hypervolumes(exp, a.hv_trials, a.seeds)

    setup = {"space": "channels [8,16,32], depths [1,2], widths [0.5,1], ratios [0,0.5,1], heads linear/msdnet",
             "epochs": a.epochs, "train_s": train_s, "recal": min(cfg.search.recal_images, len(exp.evaluator.recal_x)),
             "val": len(exp.splits.val_y), "trials": a.trials, "repeats": a.repeats,
             "hv_trials": a.hv_trials, "seeds": a.seeds,
             "load_before": load_before, "load_after": loadavg()}
    text = render(env, setup, tp, hv, ref_mmacs)
    print(f"\n{SECTION}\n\n{text}")
    if not a.no_write:
        write_section(SECTION, text)
        print(f"wrote the {SECTION} section of {RESULTS}")


if __name__ == "__main__":
    main()
