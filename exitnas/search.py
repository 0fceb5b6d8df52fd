"""Search archs and exit thresholds with Optuna, in a database, locally or on Ray workers.

Roles are kept apart: the :class:`Evaluator` measures (it knows nothing of Optuna), this
module turns trials into archs and thresholds and back into objectives, and the report
reads the database, never this process's memory.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from exitnas._config import ExperimentConfig
from exitnas._errors import UserError
from exitnas._samplers import SAMPLERS, make_sampler
from exitnas._storage import open_storage, storage_kind
from exitnas.evaluators import BOF_BETA_RANGE, EXIT_RULES, Evaluator, ExitPolicy, bof_thresholds
from exitnas.evaluators._latency import LatencyTable
from exitnas.search_space import ArchConfig, SearchSpace

__all__ = [
    "EXIT_RULES",
    "SAMPLERS",
    "METRIC_NAMES",
    "ArchObjective",
    "ParetoPoint",
    "create_or_load_study",
    "make_sampler",
    "pareto_front",
    "run_search",
    "suggest_arch",
]

METRIC_NAMES = ["val_accuracy", "expected_MMACs"]
LATENCY_METRIC_NAMES = ["val_accuracy", "expected_ms"]
DIRECTIONS = ["maximize", "minimize"]


def metric_names(objective: str) -> list[str]:
    return LATENCY_METRIC_NAMES if objective == "latency" else METRIC_NAMES



# -- trial ↔ arch ----------------------------------------------------------------------------
def suggest_arch(trial: optuna.trial.BaseTrial, space: SearchSpace,
                 exit_rule: str = "threshold") -> tuple[ArchConfig, np.ndarray]:
    """The only place ``trial.suggest_*`` is called: an arch and its thresholds.

    The Optuna space is static (DESIGN §5): every trial suggests a ratio for every block
    slot and an on/off, head and threshold for every candidate exit, used or not, so
    evolutionary and relative samplers can learn from all of them. With the ``bof`` exit
    rule the trial suggests one ``beta`` instead of the thresholds, and the returned
    array holds ``beta`` once per non-final exit: multiply it by the exits' mean training
    confidences (:func:`~exitnas.evaluators.bof_thresholds`) to get thresholds.
    """
    EXIT_RULES.get(exit_rule)
    depths = [trial.suggest_categorical(f"depth_{s}", list(space.depth_choices)) for s in range(space.num_stages)]
    widths = [trial.suggest_categorical(f"width_{s}", list(space.width_choices)) for s in range(space.num_stages)]
    ratios, on, heads, thr = {}, {}, {}, {}
    for s, b in space.candidate_exits():
        ratios[s, b] = trial.suggest_categorical(f"ratio_{s}_{b}", list(space.ratio_choices))
        on[s, b] = trial.suggest_categorical(f"exit_{s}_{b}", [0, 1])
        heads[s, b] = trial.suggest_categorical(f"head_{s}_{b}", list(space.head_choices))
        if exit_rule == "threshold":
            thr[s, b] = trial.suggest_float(f"thr_{s}_{b}", 0.0, 1.0)
    if exit_rule == "bof":
        beta = trial.suggest_float("beta", *BOF_BETA_RANGE)
        thr = {p: beta for p in space.candidate_exits()}
    blocks = [(s, b) for s in range(space.num_stages) for b in range(depths[s])]
    exits = [p for p in blocks[:-1] if on[p]] + [blocks[-1]]
    arch = ArchConfig(space.name, tuple(depths), tuple(float(w) for w in widths),
                      tuple(tuple(float(ratios[s, b]) for b in range(depths[s])) for s in range(space.num_stages)),
                      tuple(exits), tuple(heads[p] for p in exits))
    return space.validate(arch), np.array([thr[p] for p in exits[:-1]], dtype=np.float64)


class ArchObjective:
    """Trial → (validation accuracy, expected MMACs), with the breakdown as user attributes."""

    def __init__(self, evaluator: Evaluator, budget_mmacs: float | None = None,
                 latency: LatencyTable | None = None, worker: str | None = None,
                 exit_rule: str = "threshold") -> None:
        self.evaluator = evaluator
        self.exit_rule = EXIT_RULES.get(exit_rule)
        self.space = evaluator.space
        self.budget_mmacs = budget_mmacs
        self.latency = latency
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        # Tagged before any work, so a trial left RUNNING by a dead worker can be found.
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("worker_pid", os.getpid())
        arch, thresholds = suggest_arch(trial, self.space, self.exit_rule)
        before = self.evaluator.forward_passes
        if self.exit_rule == "bof":
            caches = self.evaluator.caches(arch, ("train", "val"))
            thresholds = bof_thresholds(caches["train"], trial.params["beta"])
            trial.set_user_attr("train_confidence", caches["train"].confidence.mean(axis=1).round(6).tolist())
        cache = self.evaluator.cache(arch, "val")
        res = ExitPolicy(cache).evaluate(thresholds)
        acc, mmacs = float(res.accuracy[0]), float(res.expected_macs[0]) / 1e6
        costs = self.evaluator.costs(arch)
        second = mmacs
        if self.latency is not None:
            exit_ms = self.latency.exit_latency(self.space, arch)
            second = float(ExitPolicy(cache, exit_ms).evaluate(thresholds).expected_macs[0])
            trial.set_user_attr("exit_ms", exit_ms)
            trial.set_user_attr("expected_MMACs", mmacs)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("thresholds", [float(t) for t in thresholds])
        trial.set_user_attr("exit_accuracy", [round(float(a), 6) for a in cache.exit_accuracy()])
        trial.set_user_attr("exit_histogram", res.histogram[0].tolist())
        trial.set_user_attr("exit_mmacs", [m / 1e6 for m in cache.exit_macs()])  # mean per exit on val
        trial.set_user_attr("head_mmacs", [m / 1e6 for m in costs.head_macs])
        trial.set_user_attr("params", list(costs.params))
        trial.set_user_attr("cache_reused", self.evaluator.forward_passes == before)
        if self.budget_mmacs is not None:
            trial.set_constraint("mmacs_over_budget", mmacs - self.budget_mmacs)
        return acc, second


# -- studies -----------------------------------------------------------------------------------
def create_or_load_study(cfg: ExperimentConfig, space: SearchSpace, seed_offset: int = 0) -> optuna.Study:
    """Open the study named in ``cfg.search``, creating it once; a resumed study must match."""
    sc = cfg.search
    if sc.objective not in ("macs", "latency"):
        raise UserError(f"search.objective {sc.objective!r} is not one of macs, latency")
    EXIT_RULES.get(sc.exit_rule)
    storage = open_storage(sc.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(sc.sampler, sc.seed + seed_offset)
    try:
        study = optuna.load_study(study_name=sc.study, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(storage=storage, study_name=sc.study, directions=DIRECTIONS, sampler=sampler,
                                    load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(sc.objective))
        study.set_user_attr("exitnas_space", space.to_dict())
        study.set_user_attr("objective", sc.objective)
        study.set_user_attr("exit_rule", sc.exit_rule)
        study.set_user_attr("checkpoint", str(Path(checkpoint_of(cfg)).resolve()))
        study.set_user_attr("config", cfg.to_dict())
        return study
    _check_same_study(study, space, sc.storage, metric_names(sc.objective))
    theirs = study.user_attrs.get("exit_rule", "threshold")
    if theirs != sc.exit_rule:
        raise UserError(f"study {sc.study!r} in {sc.storage} searched with exit rule {theirs!r}, not "
                        f"{sc.exit_rule!r}; choose another study name")
    return study


def _check_same_study(study: optuna.Study, space: SearchSpace, url: str, wanted: list[str]) -> None:
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names
    if directions != DIRECTIONS or (names is not None and list(names) != wanted):
        raise UserError(
            f"study {study.study_name!r} in {url} has other objectives ({names or directions}); "
            "choose another study name"
        )
    theirs = study.user_attrs.get("exitnas_space")
    if theirs is not None and not space.matches(theirs):
        raise UserError(f"study {study.study_name!r} in {url} searched another search space; choose another study name")


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


@dataclass(frozen=True)
class ParetoPoint:
    trial: int
    accuracy: float
    mmacs: float
    exits: int
    arch: dict[str, Any]
    thresholds: list[float]


def pareto_front(study: optuna.Study) -> list[ParetoPoint]:
    """The non-dominated feasible trials, read from the database, cheapest first."""
    points = [
        ParetoPoint(t.number, t.values[0], t.values[1], len(t.user_attrs.get("arch", {}).get("exits", [])),
                    t.user_attrs.get("arch", {}), t.user_attrs.get("thresholds", []))
        for t in study.best_trials
    ]
    return sorted(points, key=lambda p: (p.mmacs, -p.accuracy))


# -- running -----------------------------------------------------------------------------------
@dataclass
class SearchContext:
    """What one worker needs: the experiment, the evaluator and the objective."""

    cfg: ExperimentConfig
    evaluator: Evaluator
    objective: ArchObjective

    @classmethod
    def build(cls, cfg: ExperimentConfig, checkpoint: str, worker: str | None = None) -> SearchContext:
        from exitnas.data import load_dataset
        from exitnas.training import load_supernet, resolve_device, space_for

        splits = load_dataset(cfg.data)
        device = resolve_device(cfg.train.device)
        supernet, _ = load_supernet(checkpoint, space_for(cfg, splits), map_location=device)
        ev = Evaluator(supernet, splits, recal_images=cfg.search.recal_images, kind=cfg.search.confidence,
                       cache_dir=cfg.search.cache_dir, device=device, seed=cfg.search.seed)
        latency = None
        if cfg.search.objective == "latency":
            if not cfg.search.latency_table:
                raise UserError("search.objective latency needs a table: exitnas profile --out lut.json, "
                                "then --latency-table lut.json")
            latency = LatencyTable.load(cfg.search.latency_table)
            latency.exit_latency(ev.space, ev.space.smallest())  # fails early if of another space
        return cls(cfg, ev, ArchObjective(ev, cfg.search.budget_mmacs, latency, worker, cfg.search.exit_rule))


def checkpoint_of(cfg: ExperimentConfig) -> str:
    return cfg.search.checkpoint or str(Path(cfg.train.out) / "supernet.pt")


def run_worker(cfg: ExperimentConfig, checkpoint: str, worker: int, n_trials: int | None,
               progress: bool = False, token: str | None = None, ctx: SearchContext | None = None) -> int:
    """Run trials of the study against its shared storage until it has ``search.trials``.

    ``token`` tags this worker's trials (user attribute ``worker``) so that a supervisor can
    fail and retry the trial it leaves RUNNING if it dies (see :func:`retry_lost_trials`).
    ``ctx`` is an already built context (data and supernet loaded) to use instead of building one.
    Returns the number of trials this worker completed (other workers' trials not counted).
    """
    ctx = ctx or SearchContext.build(cfg, checkpoint, token)
    study = create_or_load_study(cfg, ctx.evaluator.space, seed_offset=worker)
    stop = optuna.study.MaxTrialsCallback(cfg.search.trials, states=(TrialState.COMPLETE,))
    mine = [0]

    def _count(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        mine[0] += trial.state == TrialState.COMPLETE

    callbacks: list[Any] = [stop, _count]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.search.trials, initial=completed(study), desc="search", unit="trial", dynamic_ncols=True)

        def _tick(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.update(1)
            if trial.values:
                bar.set_postfix(acc=f"{trial.values[0]:.4f}", mmacs=f"{trial.values[1]:.2f}")

        callbacks.append(_tick)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(ctx.objective, n_trials=n_trials, callbacks=callbacks, gc_after_trial=False)
    if bar is not None:
        bar.close()
    return mine[0]


def retry_lost_trials(cfg: ExperimentConfig, token: str) -> int:
    """Fail the RUNNING trials of a dead worker (tagged ``token``) and enqueue their params again.

    RDB storages do this themselves through heartbeats; Optuna's journal file has none, so
    the Ray driver calls this when a worker dies. Returns how many trials were retried.
    """
    storage = open_storage(cfg.search.storage, heartbeat=False)
    study = optuna.load_study(study_name=cfg.search.study, storage=storage)
    lost = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == token]
    for t in lost:
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return len(lost)


def run_search(cfg: ExperimentConfig) -> list[ParetoPoint]:
    """Run (or resume) the study of ``cfg`` and return its Pareto front, read from the database."""
    sc = cfg.search
    checkpoint = checkpoint_of(cfg)
    if not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist; train first or set search.checkpoint")
    if sc.backend not in ("local", "ray"):
        raise UserError(f"search.backend {sc.backend!r} is not one of local, ray")
    if sc.workers < 1:
        raise UserError("search.workers must be at least 1")
    if sc.backend == "ray" and sc.workers > 1 and storage_kind(sc.storage) == "sqlite":
        raise UserError("several workers on one SQLite file are not safe; use journal:///FILE.log or postgresql://")
    make_sampler(sc.sampler, sc.seed)
    if sc.objective == "latency" and not sc.latency_table:
        raise UserError("search.objective latency needs a table: exitnas profile --out lut.json, "
                        "then --latency-table lut.json")
    # Create the study once, before any worker starts (concurrent table creation races). The
    # local worker reuses this process's data and supernet; Ray workers load their own.
    ctx = None
    if sc.backend == "local":
        ctx = SearchContext.build(cfg, checkpoint)  # loads the supernet for the config's space, or fails
        space = ctx.evaluator.space
    else:
        from exitnas.data import load_dataset
        from exitnas.training import space_for
        from exitnas.training._checkpoint import check_space, load_checkpoint

        space = space_for(cfg, load_dataset(cfg.data))
        check_space(load_checkpoint(checkpoint), space, checkpoint)
        if sc.objective == "latency":
            LatencyTable.load(sc.latency_table).exit_latency(space, space.smallest())  # of this space?
    study = create_or_load_study(cfg, space)
    remaining = max(0, sc.trials - completed(study))
    if remaining:
        if sc.backend == "local":
            run_worker(cfg, checkpoint, 0, remaining, progress=sc.progress, ctx=ctx)
        else:
            from exitnas._ray_backend import run_ray_workers

            run_ray_workers(cfg, checkpoint, math.ceil(remaining / sc.workers))
    return pareto_front(study)


def format_front(front: list[ParetoPoint]) -> str:
    """The front as a table; trials with identical objectives share one row."""
    rows: dict[tuple[float, float], list[ParetoPoint]] = {}
    for p in front:
        rows.setdefault((p.accuracy, p.mmacs), []).append(p)
    lines = [f"{'trial':>6} {'val acc':>8} {'MMACs':>9} {'exits':>5}  same values"]
    for (acc, mmacs), ps in rows.items():
        same = f"  +{len(ps) - 1} trials" if len(ps) > 1 else ""
        lines.append(f"{ps[0].trial:>6} {acc:>8.4f} {mmacs:>9.3f} {ps[0].exits:>5}{same}")
    return "\n".join(lines)
