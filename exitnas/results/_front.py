"""The Pareto front of a study, read from its database (never from a search's memory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from exitnas._errors import UserError
from exitnas._pareto import pareto_mask
from exitnas._storage import open_storage, storage_kind, storage_path

__all__ = ["FrontInfo", "TrialRecord", "load_front", "open_study", "pareto_mask"]

_DIRECTIONS = ["maximize", "minimize"]


@dataclass(frozen=True)
class TrialRecord:
    """One complete trial as stored.

    Attributes:
        number: Optuna trial number.
        accuracy: Stored validation accuracy (objective 0).
        cost: Stored expected cost on validation (objective 1), in the study's
            :attr:`FrontInfo.cost_unit` (MMACs, or ms after a latency search).
        feasible: All stored constraint values ≤ 0 (True when the trial has none).
        user_attrs: arch, thresholds, exit_accuracy, exit_histogram, exit_mmacs, ...
        params: The sampled parameters (exact thresholds are ``thr_<stage>_<block>``).
    """

    number: int
    accuracy: float
    cost: float
    feasible: bool
    user_attrs: dict[str, Any] = field(default_factory=dict, compare=False)
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_exits(self) -> int:
        return len(self.user_attrs.get("arch", {}).get("exits", []))


@dataclass(frozen=True)
class FrontInfo:
    """A study's complete trials and its Pareto set, computed from the stored values.

    Attributes:
        storage_url: Where the study lives.
        study_name: Its name.
        metric_names: Stored objective names (``val_accuracy``, ``expected_MMACs`` or ``expected_ms``).
        trials: Every COMPLETE trial, by number.
        pareto: Numbers of the non-dominated trials (feasible ones only when the study
            has constraints), cheapest first.
        has_constraints: Whether any trial stored a constraint.
        num_trials: Trials in any state (running, failed, pruned included).
        study_user_attrs: The study's user attributes (checkpoint, config, space, ...).
    """

    storage_url: str
    study_name: str
    metric_names: tuple[str, ...]
    trials: tuple[TrialRecord, ...]
    pareto: tuple[int, ...]
    has_constraints: bool
    num_trials: int
    study_user_attrs: dict[str, Any] = field(default_factory=dict, compare=False)

    def trial(self, number: int) -> TrialRecord:
        """The complete trial ``number``; a number that is not one → :class:`UserError`."""
        for t in self.trials:
            if t.number == number:
                return t
        nums = [t.number for t in self.trials]
        raise UserError(f"trial {number} is not a complete trial of study {self.study_name!r} "
                        f"(complete: {_ranges(nums)})")

    @property
    def cost_unit(self) -> str:
        """``ms`` for a latency study (metric ``expected_ms``), else ``MMACs``."""
        return "ms" if len(self.metric_names) > 1 and self.metric_names[1] == "expected_ms" else "MMACs"

    @property
    def pareto_trials(self) -> list[TrialRecord]:
        return [self.trial(n) for n in self.pareto]


def open_study(storage_url: str, study_name: str | None) -> optuna.Study:
    """Load an existing study for reading; a missing file, unknown name or foreign study → :class:`UserError`.

    With ``study_name`` None the storage must hold exactly one study.
    """
    kind = storage_kind(storage_url)
    if kind in ("sqlite", "journal"):
        # open_storage would create an empty database here; a report must not.
        path = storage_path(storage_url)
        assert path is not None
        if not path.is_file():
            raise UserError(f"storage {storage_url}: {path} does not exist; run `exitnas search` first")
    storage = open_storage(storage_url, heartbeat=False)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise UserError(f"storage {storage_url} holds {len(names)} studies ({listed}); name one with --study")
        study_name = names[0]
    if study_name not in names:
        listed = ", ".join(names) if names else "none"
        raise UserError(f"study {study_name!r} is not in {storage_url} (studies there: {listed})")
    study = optuna.load_study(study_name=study_name, storage=storage)
    directions = [d.name.lower() for d in study.directions]
    if directions != _DIRECTIONS:
        raise UserError(f"study {study_name!r} in {storage_url} is not an exitnas search "
                        f"(directions {directions}, expected {_DIRECTIONS})")
    return study


def load_front(storage_url: str, study_name: str | None = None) -> FrontInfo:
    """Every complete trial of a study and its Pareto set, from the stored values.

    Raises:
        UserError: A bad URL, a missing database, an unknown study, or no complete trial.
    """
    study = open_study(storage_url, study_name)
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE and t.values and len(t.values) == 2]
    if not complete:
        raise UserError(f"study {study.study_name!r} in {storage_url} has no complete trial; "
                        "run `exitnas search` first")
    has_constraints = any(t.constraints for t in complete)
    records = tuple(
        TrialRecord(t.number, float(t.values[0]), float(t.values[1]),
                    all(v <= 0 for v in t.constraints.values()), dict(t.user_attrs), dict(t.params))
        for t in sorted(complete, key=lambda t: t.number)
    )
    candidates = [r for r in records if r.feasible or not has_constraints]
    mask = pareto_mask(np.array([r.accuracy for r in candidates]), np.array([r.cost for r in candidates]))
    pareto = sorted((r for r, m in zip(candidates, mask) if m), key=lambda r: (r.cost, -r.accuracy, r.number))
    with_names = study.metric_names or ["val_accuracy", "expected_MMACs"]
    return FrontInfo(storage_url, study.study_name, tuple(with_names), records, tuple(r.number for r in pareto),
                     has_constraints, len(all_trials), dict(study.user_attrs))


def _ranges(nums: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0-2, 5`` (short enough for one error line)."""
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    text = ", ".join(out)
    return text if len(text) <= 80 else text[:77] + "..."
