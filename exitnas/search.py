"""Search archs and exit thresholds with Optuna, in a database, locally or on Ray workers.

This is the search's entry point; its parts live beside it: the trial codec
(``_trial_codec``: trial ↔ :class:`~exitnas.search_space.Candidate`), the objective
(``_objective``), the study (``_study``), one worker (``_workers``) and the Ray driver
(``_ray_backend``). Roles are kept apart: the :class:`~exitnas.evaluators.Evaluator` measures
(it knows nothing of Optuna), the objective turns trials into candidates and back into
objectives, and the report reads the database, never this process's memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from exitnas._config import ExperimentConfig
from exitnas._errors import UserError
from exitnas._io import check_output_dir, check_output_file
from exitnas._objective import ArchObjective
from exitnas._pareto import pareto_mask
from exitnas._storage import storage_kind, storage_path
from exitnas._study import (
    DIRECTIONS,
    METRIC_NAMES,
    WorkerSampler,
    completed,
    create_or_load_study,
    metric_names,
    worker_seed,
)
from exitnas._trial_codec import decode_trial, suggest_arch
from exitnas._workers import fail_stale_trials, retry_lost_trials, run_worker
from exitnas.experiment import COST_UNITS, Experiment, checkpoint_of

__all__ = [
    "DIRECTIONS",
    "METRIC_NAMES",
    "ArchObjective",
    "ParetoPoint",
    "WorkerSampler",
    "checkpoint_of",
    "completed",
    "create_or_load_study",
    "decode_trial",
    "fail_stale_trials",
    "format_front",
    "metric_names",
    "pareto_front",
    "retry_lost_trials",
    "run_search",
    "run_worker",
    "suggest_arch",
    "worker_seed",
]


@dataclass(frozen=True)
class ParetoPoint:
    """One non-dominated trial: its objectives (cost in ``unit``) and its stored candidate."""

    trial: int
    accuracy: float
    cost: float
    unit: str
    exits: int
    arch: dict[str, Any]
    thresholds: list[float]


def pareto_front(study: optuna.Study) -> list[ParetoPoint]:
    """The non-dominated feasible trials, read from the database, cheapest first (the report's
    front: :func:`~exitnas._pareto.pareto_mask` over the complete trials, feasible ones only
    when the study has constraints)."""
    names = study.metric_names or METRIC_NAMES
    unit = next((u.unit for u in COST_UNITS.values() if u.metric == names[1]), "MMACs")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if any(t.constraints for t in complete):
        complete = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    if not complete:
        return []
    mask = pareto_mask(np.array([t.values[0] for t in complete]), np.array([t.values[1] for t in complete]))
    points = [
        ParetoPoint(t.number, t.values[0], t.values[1], unit, len(t.user_attrs.get("arch", {}).get("exits", [])),
                    t.user_attrs.get("arch", {}), t.user_attrs.get("thresholds", []))
        for t, keep in zip(complete, mask) if keep
    ]
    return sorted(points, key=lambda p: (p.cost, -p.accuracy, p.trial))


def _check_outputs(cfg: ExperimentConfig) -> None:
    """The study's database file and ``search.cache_dir`` can be written (checked before any work)."""
    path = storage_path(cfg.search.storage)
    if path is not None:
        check_output_file(path, "search.storage")
    if cfg.search.cache_dir:
        check_output_dir(cfg.search.cache_dir, "search.cache_dir")


def run_search(cfg: ExperimentConfig, *, exp: Experiment | None = None,
               timeout: float | None = None) -> list[ParetoPoint]:
    """Run (or resume) the study of ``cfg`` and return its Pareto front, read from the database.

    Args:
        cfg: The experiment (``search`` says where, how many trials, which backend).
        exp: An already opened experiment of ``cfg`` to reuse (its data and supernet).
        timeout: Stop starting trials after this many seconds (local backend).
    """
    sc = cfg.search
    _check_outputs(cfg)
    exp = exp or Experiment(cfg)
    if exp.cfg != cfg:
        raise ValueError("run_search: exp was opened with another config than cfg")
    if sc.backend == "ray" and sc.workers > 1 and storage_kind(sc.storage) == "sqlite":
        raise UserError("several workers on one SQLite file are not safe; use journal:///FILE.log or postgresql://")
    # Everything that can be wrong is checked before the study exists: a bad checkpoint or
    # latency table leaves no study behind.
    exp.check_checkpoint()
    exp.latency  # noqa: B018 - loads and checks the table (None for the MACs objective)
    # The study exists before any Ray worker starts (creation is also safe under simultaneous
    # starts). The local worker reuses this process's data and supernet; Ray workers open their own.
    study = create_or_load_study(exp)
    remaining = max(0, sc.trials - completed(study))
    if remaining:
        if sc.backend == "local":
            run_worker(cfg, exp.checkpoint, None, remaining, progress=sc.progress, exp=exp, timeout=timeout)
        else:
            from exitnas._ray_backend import run_ray_workers

            run_ray_workers(cfg, str(exp.checkpoint), math.ceil(remaining / sc.workers))
    return pareto_front(study)


def format_front(front: list[ParetoPoint]) -> str:
    """The front as a table; trials with identical objectives share one row."""
    rows: dict[tuple[float, float], list[ParetoPoint]] = {}
    for p in front:
        rows.setdefault((p.accuracy, p.cost), []).append(p)
    unit = front[0].unit if front else "MMACs"
    lines = [f"{'trial':>6} {'val acc':>8} {unit:>9} {'exits':>5}  same values"]
    for (acc, cost), ps in rows.items():
        same = f"  +{len(ps) - 1} trials" if len(ps) > 1 else ""
        lines.append(f"{ps[0].trial:>6} {acc:>8.4f} {cost:>9.3f} {ps[0].exits:>5}{same}")
    return "\n".join(lines)
