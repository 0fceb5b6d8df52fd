"""One search worker: trials against the shared storage until the study has exactly its trials.

The local backend runs one in this process; the Ray backend runs N of them as Ray tasks; a user
may start N by hand. Three guarantees hold on every storage (issue 19):

- **Own seed stream**: each worker samples with its own seed (:class:`~exitnas._study.WorkerSampler`),
  recorded on its trials (user attributes ``worker``, ``worker_seed``).
- **Exactly ``search.trials`` complete trials** across workers (:class:`_Gate`): a worker starts
  a trial only while complete + running trials are fewer, and a trial that loses the race
  for the last places (more complete, running or queued trials numbered before it than the
  study needs) is pruned before it samples anything (user attribute ``surplus``).
- **No zombie trials**: a RUNNING trial whose worker is gone is failed and its parameters
  queued again (:func:`fail_stale_trials`): at once when the worker ran on this host and its
  process is dead, after the grace period when its heartbeat stopped (Optuna's for SQLite and
  PostgreSQL, a ``heartbeat`` user attribute written by a thread for the journal file).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from exitnas import _storage
from exitnas._config import ExperimentConfig
from exitnas._errors import UserError
from exitnas._objective import ArchObjective
from exitnas._storage import open_storage
from exitnas._study import completed, create_or_load_study
from exitnas._trial_errors import recording_errors
from exitnas.experiment import Experiment

__all__ = ["fail_stale_trials", "retry_lost_trials", "retry_trial", "run_worker"]

HOST = socket.gethostname()
#: This many failed trials in a row stop a worker (one line naming the first error); fewer are
#: recorded (state FAIL, the error in user attribute ``error``) and the search goes on.
MAX_FAILS_IN_A_ROW = 5
#: A lost trial is queued again at most this often (Optuna's heartbeat retries use the same).
MAX_RETRY = 3


def run_worker(cfg: ExperimentConfig, checkpoint: str | Path, worker: int | None, n_trials: int | None,
               progress: bool = False, exp: Experiment | None = None, timeout: float | None = None) -> int:
    """Run trials of the study against its shared storage until it has ``search.trials`` complete.

    Args:
        cfg: The experiment.
        checkpoint: Its supernet.
        worker: This worker's identity, which seeds its sampler and tags its trials (user attribute
            ``worker``, used by :func:`retry_lost_trials`); None: the number of its first trial.
        n_trials: At most this many trials here (None: until the study has its trials or ``timeout``).
        progress: Show a progress bar.
        exp: An already opened experiment (data and supernet loaded) to use instead of opening one.
        timeout: Stop starting trials after this many seconds.

    Returns:
        The number of trials this worker completed (other workers' trials not counted).
    """
    exp = exp or Experiment(cfg, checkpoint)
    study = create_or_load_study(exp, worker)
    target = cfg.search.trials
    fail_stale_trials(study)
    if _taken(study) >= target:
        return 0
    mine, fails = [0], _Failures()

    def after(study: optuna.Study, trial: FrozenTrial) -> None:
        mine[0] += trial.state == TrialState.COMPLETE
        if fails.seen(trial):
            study.stop()
        fail_stale_trials(study)  # before the next trial, which may then pop the retry
        if trial.user_attrs.get("surplus") or _taken(study) >= target:
            study.stop()

    objective = ArchObjective.for_experiment(exp)
    callbacks: list[Any] = [after]
    bar = _progress_bar(study, target, objective.unit.unit) if progress else None
    if bar is not None:
        callbacks.append(bar)
    gate = _Gate(objective, study.sampler, target, heartbeat=isinstance(study._storage, JournalStorage))
    # A trial's error: its full text in the trial's record (the log says one line, see _trial_errors).
    # A failing trial is recorded, not fatal (catch); interrupts still stop at once.
    try:
        study.optimize(recording_errors(gate), n_trials=n_trials, timeout=timeout, callbacks=callbacks,
                       gc_after_trial=False, catch=(Exception,))
    except KeyboardInterrupt:
        _fail_current(study)  # Ctrl-C outside the objective (Optuna's own steps) leaves none RUNNING
        raise
    if bar is not None:
        bar.close()
    fails.check()
    return mine[0]


def _fail_current(study: optuna.Study) -> None:
    """Mark FAIL the trial this worker's sampler last began, if it is still RUNNING."""
    tid = getattr(study.sampler, "current", None)
    if tid is not None and study._storage.get_trial(tid).state == TrialState.RUNNING:
        study._storage.set_trial_state_values(tid, TrialState.FAIL)


class _Failures:
    """Counts this worker's failed trials in a row and keeps the first one's error."""

    def __init__(self) -> None:
        self.in_a_row, self.first = 0, ""

    def seen(self, trial: FrozenTrial) -> bool:
        """Record ``trial``; True when the worker should stop (too many failures in a row)."""
        if trial.state != TrialState.FAIL:
            self.in_a_row, self.first = 0, ""
            return False
        self.in_a_row += 1
        if self.in_a_row == 1:
            lines = str(trial.user_attrs.get("error", "")).strip().splitlines()
            self.first = f"trial {trial.number}: {lines[-1] if lines else 'no error recorded'}"
        return self.in_a_row >= MAX_FAILS_IN_A_ROW

    def check(self) -> None:
        if self.in_a_row >= MAX_FAILS_IN_A_ROW:
            raise UserError(f"{self.in_a_row} trials in a row failed, the first with {self.first} "
                            "(each trial's full error is in its user attribute 'error')")


def _taken(study: optuna.Study) -> int:
    """Complete and running trials: what a new trial would come after."""
    return study._storage.get_n_trials(study._study_id, state=(TrialState.COMPLETE, TrialState.RUNNING))


class _Gate:
    """The objective behind a check that the study still needs this trial; tags and heartbeats it."""

    def __init__(self, objective: ArchObjective, sampler: optuna.samplers.BaseSampler, target: int,
                 heartbeat: bool) -> None:
        self.objective, self.sampler, self.target, self.heartbeat = objective, sampler, target, heartbeat

    def surplus(self, trial: optuna.Trial) -> bool:
        """Whether the trials numbered before this one (complete, running or queued) fill the study.

        Trial numbers are assigned in creation order, and a trial that completes was counted as
        running or queued by every trial numbered after it: so at most ``target`` pass, whatever
        the timing. Complete trials numbered after this one are counted too (cheaper, and stricter).
        """
        storage, study_id = trial.study._storage, trial.study._study_id
        done = storage.get_n_trials(study_id, state=TrialState.COMPLETE)
        ahead = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        return done + sum(t.number < trial.number for t in ahead) >= self.target

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        if self.surplus(trial):
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the study has its trials (complete or running in other workers)")
        worker = getattr(self.sampler, "worker", None)
        if worker is not None:
            self.objective.worker = worker  # the objective writes it as user attribute ``worker``
            trial.set_user_attr("worker_seed", self.sampler.seed)  # type: ignore[attr-defined]
        trial.set_user_attr("worker_host", HOST)
        trial.set_user_attr("worker_started", _process_start(os.getpid()))
        if not self.heartbeat:  # SQLite and PostgreSQL: Optuna's own heartbeat
            return self.objective(trial)
        with _Heartbeat(trial):
            return self.objective(trial)


class _Heartbeat:
    """Writes the time into the trial's ``heartbeat`` user attribute every HEARTBEAT_INTERVAL s.

    The journal file has no heartbeat of its own: without this, a trial whose worker died on
    another host would stay RUNNING forever.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.stopped = trial, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"exitnas-heartbeat-{trial.number}")

    def _beat(self) -> None:
        # No beat at the start: until the first one, the trial's start time stands in for it
        # (each journal write is an fsync'd append; a short trial needs none).
        while not self.stopped.wait(_storage.HEARTBEAT_INTERVAL):
            self.trial.study._storage.set_trial_user_attr(self.trial._trial_id, "heartbeat", time.time())

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3… of ``/proc/PID/stat`` (Linux; None elsewhere or when the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the name before ")" may hold spaces


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, to tell a reused pid."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None  # field 22


def _dead(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` of this host that started at ``started`` is gone.

    A killed process its parent has not reaped yet (a Ray worker under its raylet) is a
    zombie: dead, though its pid still answers.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return False
    return fields[0] in ("Z", "X") or (started is not None and int(fields[19]) != started)


def _stale(trial: FrozenTrial, now: float, beats: bool) -> bool:
    attrs = trial.user_attrs
    if attrs.get("worker_host") == HOST and isinstance(attrs.get("worker_pid"), int):
        return _dead(attrs["worker_pid"], attrs.get("worker_started"))
    if not beats:  # SQLite and PostgreSQL: Optuna's heartbeat decides for other hosts
        return False
    last = attrs.get("heartbeat") or (trial.datetime_start.timestamp() if trial.datetime_start else now)
    return now - last > _storage.GRACE_PERIOD


def fail_stale_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose worker is gone and queue them again; returns how many.

    A trial of this host whose process is dead is failed at once (an immediate rerun after a
    kill leaves no RUNNING trial); on the journal file, a trial whose ``heartbeat`` is older
    than the grace period too. SQLite and PostgreSQL also fail stale trials through Optuna's
    heartbeat, with the same retry.
    """
    now, beats = time.time(), isinstance(study._storage, JournalStorage)
    lost = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _stale(t, now, beats)]
    return sum(retry_trial(study, t) for t in lost)


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Fail the lost RUNNING ``trial`` and queue its parameters again; False if another process did.

    The retry carries ``fixed_params`` (as :meth:`optuna.Study.enqueue_trial` writes), Optuna's
    heartbeat-retry attributes ``failed_trial`` and ``retry_history``, and the user attribute
    ``retry_of``. Failing first makes it happen once: the storage refuses to finish a trial twice.
    """
    try:
        if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) <= MAX_RETRY:
        system = {"fixed_params": trial.params, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                  "retry_history": history}
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=system,
                                                  user_attrs={"retry_of": trial.number}))
    return True


class _progress_bar:  # noqa: N801 - a callback, named as the function it stands in for
    """A tqdm bar ticked by each finished trial, showing its objectives."""

    def __init__(self, study: optuna.Study, total: int, unit: str) -> None:
        from tqdm.auto import tqdm

        self.unit = unit
        self.bar = tqdm(total=total, initial=completed(study), desc="search", unit="trial", dynamic_ncols=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.COMPLETE:
            return
        self.bar.update(1)
        self.bar.set_postfix({"acc": f"{trial.values[0]:.4f}", self.unit: f"{trial.values[1]:.2f}"})

    def close(self) -> None:
        self.bar.close()


def retry_lost_trials(cfg: ExperimentConfig, worker: int | str) -> int:
    """Fail the RUNNING trials of a dead worker (user attribute ``worker``) and queue them again.

    The Ray driver calls this when a worker dies (the next workers would also find them through
    :func:`fail_stale_trials`; whoever comes first retries them, once). Returns how many.
    """
    study = _load(cfg)
    lost = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == worker]
    return sum(retry_trial(study, t) for t in lost)


def _load(cfg: ExperimentConfig) -> optuna.Study:
    return optuna.load_study(study_name=cfg.search.study, storage=open_storage(cfg.search.storage, heartbeat=False))


def stored_completed(cfg: ExperimentConfig) -> int:
    """Complete trials of the config's study, read from the database."""
    return completed(_load(cfg))


def stored_trials(cfg: ExperimentConfig) -> int:
    """All trials of the config's study (any state), read from the database."""
    return len(_load(cfg).get_trials(deepcopy=False))

