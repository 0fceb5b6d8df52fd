"""``exitnas search --backend ray``: N Ray workers write every trial to the shared storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas._storage import open_storage
from exitnas._study import worker_seed

TRIALS = 8


def _search(argv: list[str], env: dict[str, str],
            during: Callable[[subprocess.Popen[str]], Any] | None = None) -> tuple[str, Any, int]:
    """``exitnas search`` in a subprocess (Ray's local cluster, its workers and their environment
    stay out of pytest), ``during(proc)`` called while it runs; (stdout, what ``during`` gave, pid)."""
    proc = subprocess.Popen([sys.executable, "-m", "exitnas", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        got = during(proc) if during is not None else None
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    return out, got, proc.pid


@pytest.mark.slow
def test_two_ray_workers_fill_one_journal_study(tmp_path: Path, search_args: Callable[..., list[str]],
                                                env: dict[str, str]) -> None:
    url = f"journal:///{tmp_path / 'study.log'}"
    argv = search_args(url, "--backend", "ray", "--workers", "2", "--trials", str(TRIALS))
    out, _, driver = _search(argv, env)
    assert "Pareto front" in out
    assert "exitnas: search worker" not in out and "failed" not in out  # what the driver prints when one dies

    study = optuna.load_study(study_name="test", storage=open_storage(url, heartbeat=False))
    trials = study.get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: TRIALS}
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    pids = Counter(t.user_attrs["worker_pid"] for t in trials)
    # Each of the two workers may run at most ceil(8 / 2) trials, so both ran some; neither
    # is the driver process.
    assert len(pids) == 2 and max(pids.values()) <= TRIALS // 2
    assert driver not in pids
    # Index-derived identities (a fresh study: 0 and 1), one seed stream each.
    seeds = {t.user_attrs["worker"]: t.user_attrs["worker_seed"] for t in trials}
    assert sorted(seeds) == [0, 1] and len(set(seeds.values())) == 2


KILL_TRIALS, KILL_AFTER = 40, 4


def _kill_a_worker(url: str, proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, int]:
    """SIGKILL the Ray worker running a trial once KILL_AFTER trials are complete; (pid, its trial)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name="test", storage=open_storage(url, heartbeat=False)).get_trials()
        except KeyError:  # the study does not exist yet
            continue
        if sum(t.state == TrialState.COMPLETE for t in trials) < KILL_AFTER:
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker_pid" in t.user_attrs]
        if running:
            os.kill(running[0].user_attrs["worker_pid"], signal.SIGKILL)
            return running[0].user_attrs["worker_pid"], running[0].number
    raise AssertionError(f"no running trial to kill (driver exited {proc.poll()})")


@pytest.mark.slow
def test_a_killed_ray_worker_loses_nothing_and_the_driver_completes_the_study(
        tmp_path: Path, search_args: Callable[..., list[str]], env: dict[str, str]) -> None:
    url = f"journal:///{tmp_path / 'study.log'}"
    argv = search_args(url, "--backend", "ray", "--workers", "2", "--trials", str(KILL_TRIALS), "--sampler", "random")
    out, (pid, killed), _ = _search(argv, env, lambda proc: _kill_a_worker(url, proc))
    # The driver retries the dead worker's trial, unless the other worker, which checks before each
    # trial whether the workers of its host are alive, was first (then the driver finds none).
    assert "exitnas: search worker" in out and "its running trials failed and queued again:" in out
    assert "round 1 lost 1 worker(s); starting another round" in out

    trials = optuna.load_study(study_name="test", storage=open_storage(url, heartbeat=False)).get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: KILL_TRIALS, TrialState.FAIL: 1}
    assert trials[killed].state == TrialState.FAIL and trials[killed].user_attrs["worker_pid"] == pid
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed)
    # Killed perhaps while suggesting: the retry keeps what was suggested and draws the rest.
    assert retry.state == TrialState.COMPLETE and trials[killed].params.items() <= retry.params.items()
    assert retry.user_attrs["worker_pid"] != pid
    # Round 2's workers have identities of their own, so seeds of their own.
    workers = {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(workers) >= 3 and len({worker_seed(0, w) for w in workers}) == len(workers)
