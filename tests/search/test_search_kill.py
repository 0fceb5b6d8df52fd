"""A worker SIGKILLed in the middle of a trial loses no finished trial; its trial is failed by the
heartbeat and retried, and a resumed worker brings the study to its count (DESIGN §5)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas._storage import open_storage
from exitnas.experiment import Experiment
from exitnas.search import create_or_load_study

BEFORE_KILL, TARGET = 3, 6
HEARTBEAT, GRACE = 1, 2  # seconds; exitnas uses 5 and 20, which would make this test slow


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before hanging:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"worker did not reach trial {BEFORE_KILL + 1} in {timeout} s")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_killed_worker_loses_no_trial_and_its_trial_is_retried(
        kind: str, request: pytest.FixtureRequest, trained: Any, make_cfg: Callable[..., Any],
        tmp_path: Path, worker_cmd: Callable[..., list[str]], env: dict[str, str]) -> None:
    url = request.getfixturevalue("postgres") if kind == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    cfg = make_cfg(url, study=f"kill-{kind}", trials=TARGET, sampler="random")
    create_or_load_study(Experiment(cfg))
    hang = tmp_path / "hung-trial"
    heartbeat = ["--heartbeat", f"{HEARTBEAT},{GRACE}"]
    proc = subprocess.Popen(worker_cmd(cfg, 0, None, *heartbeat, "--hang-after", str(BEFORE_KILL),
                                       "--hang-file", str(hang)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(hang, proc, timeout=120)
        killed = int(hang.read_text())
        study = optuna.load_study(study_name=cfg.search.study, storage=open_storage(url, heartbeat=False))
        states = {t.number: t.state for t in study.get_trials()}
        assert states[killed] == TrialState.RUNNING
        assert Counter(states.values()) == {TrialState.COMPLETE: BEFORE_KILL, TrialState.RUNNING: 1}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = {t.number: t for t in study.get_trials() if t.state == TrialState.COMPLETE}
    hung = study.get_trials()[killed]
    assert hung.params  # it had suggested its arch before it was killed

    # The trial is stale once its last heartbeat is older than the grace period.
    time.sleep(max(0.0, killed_at + HEARTBEAT + GRACE + 0.5 - time.monotonic()))
    resumed = subprocess.run(worker_cmd(cfg, 1, None, *heartbeat), capture_output=True, text=True, env=env,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    trials = study.get_trials()
    by_state = Counter(t.state for t in trials)
    assert by_state[TrialState.COMPLETE] == TARGET
    assert by_state[TrialState.FAIL] == 1 and trials[killed].state == TrialState.FAIL
    assert by_state[TrialState.RUNNING] == by_state[TrialState.WAITING] == 0
    assert int(resumed.stdout.split()[-1]) == TARGET - BEFORE_KILL
    for number, old in finished.items():
        t = trials[number]
        assert (t.state, t.values, t.params, t.user_attrs, t.datetime_complete) == (
            TrialState.COMPLETE, old.values, old.params, old.user_attrs, old.datetime_complete)
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.number > killed and retry.state == TrialState.COMPLETE
    assert retry.params == hung.params
    assert retry.system_attrs["retry_history"] == [killed]
    assert retry.user_attrs["worker_pid"] == _resumed_pid(trials, finished)


def _resumed_pid(trials: list[optuna.trial.FrozenTrial], finished: dict[int, optuna.trial.FrozenTrial]) -> int:
    """The one worker pid among the trials completed after the kill."""
    pids = {t.user_attrs["worker_pid"] for t in trials if t.state == TrialState.COMPLETE and t.number not in finished}
    assert len(pids) == 1
    return pids.pop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "sqlite", "journal"])
def test_immediate_rerun_after_a_kill_leaves_no_running_trial(
        kind: str, request: pytest.FixtureRequest, trained: Any, make_cfg: Callable[..., Any],
        tmp_path: Path, worker_cmd: Callable[..., list[str]], env: dict[str, str]) -> None:
    """No heartbeat grace to wait out: the rerun sees the killed worker's process is gone (issue 19)."""
    url = {"postgresql": request.getfixturevalue("postgres") if kind == "postgresql" else "",
           "sqlite": f"sqlite:///{tmp_path / 'study.db'}", "journal": f"journal:///{tmp_path / 'study.log'}"}[kind]
    cfg = make_cfg(url, study=f"rerun-{kind}", trials=TARGET, sampler="random")
    hang = tmp_path / "hung-trial"
    # No study made beforehand and no identity given: as `exitnas search` would start.
    proc = subprocess.Popen(worker_cmd(cfg, None, None, "--hang-after", str(BEFORE_KILL), "--hang-file", str(hang)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(hang, proc, timeout=120)
        killed = int(hang.read_text())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    study = optuna.load_study(study_name=cfg.search.study, storage=open_storage(url, heartbeat=False))
    hung = study.get_trials()[killed]
    assert hung.state == TrialState.RUNNING and hung.params
    resumed = subprocess.run(worker_cmd(cfg, None, None), capture_output=True, text=True, env=env, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    trials = study.get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: TARGET, TrialState.FAIL: 1}
    assert trials[killed].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed)
    assert retry.state == TrialState.COMPLETE and retry.params == hung.params
    assert retry.system_attrs["retry_history"] == [killed]
    # Each process drew from its own stream: its identity is its first trial's number.
    assert trials[0].user_attrs["worker"] == 0 and retry.user_attrs["worker"] == killed + 1
