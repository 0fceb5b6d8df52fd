"""Workers that cooperate (issue 19): simultaneous starts, a seed stream each, exactly N complete
trials, no RUNNING trial left behind by a dead worker, no stale journal lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas._storage import clear_stale_journal_lock, open_storage
from exitnas._study import DIRECTIONS, WorkerSampler, worker_seed
from exitnas._workers import HOST, _Gate, _Heartbeat, _process_start, fail_stale_trials, retry_trial
from exitnas.cli import main

from .conftest import HERE, fresh_postgres_databases

WORKERS = 4
#: Rounds of simultaneous starts per storage (the issue's figure was measured with 20).
ROUNDS = int(os.environ.get("EXITNAS_START_ROUNDS", "4"))


def _load(url: str, name: str = "test") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def _communicate(procs: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


# -- seeds ------------------------------------------------------------------------------------
def test_worker_seeds_are_distinct_and_worker_zero_keeps_the_study_seed() -> None:
    assert worker_seed(7, 0) == 7
    seeds = [worker_seed(7, w) for w in range(200)]
    assert len(set(seeds)) == 200 and seeds == [worker_seed(7, w) for w in range(200)]
    assert worker_seed(0, 1) != worker_seed(1, 0)  # not seed + worker


def test_a_worker_without_identity_takes_its_first_trials_number() -> None:
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s", sampler=WorkerSampler("random", 3))
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    # Worker 0 draws what the study seed always drew.
    assert first.sampler.worker == 0 and [t.params for t in first.trials] == [t.params for t in plain.trials]
    second = optuna.load_study(study_name="s", storage=storage, sampler=WorkerSampler("random", 3))
    second.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert second.sampler.worker == 2 and second.sampler.seed == worker_seed(3, 2)
    with pytest.raises(Exception, match="sampler"):
        WorkerSampler("no-such-sampler", 0)


# -- the gate: exactly N ---------------------------------------------------------------------------
def test_a_trial_after_enough_complete_running_or_queued_trials_is_surplus() -> None:
    study = optuna.create_study(directions=DIRECTIONS)
    running = study.ask()  # another worker's
    study.enqueue_trial({"x": 0.5})  # a retry, queued
    mine = study.ask()  # pops the queued trial: nothing is queued before it now
    late = study.ask()
    gate = _Gate(None, None, target=2, heartbeat=False)  # type: ignore[arg-type]
    assert not gate.surplus(mine)  # one trial before it: room for two
    assert gate.surplus(late)  # two running before it
    study.tell(running, [0.5, 1.0])
    assert gate.surplus(late)  # one complete, one running before it
    assert not _Gate(None, None, target=3, heartbeat=False).surplus(late)  # type: ignore[arg-type]


# -- stale trials -------------------------------------------------------------------------------------
def _dead_pid(reap: bool = True) -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    if reap:
        p.wait()
        return p.pid
    while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not reaped
        time.sleep(0.01)
    return p.pid


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_stale_trials_are_failed_and_queued_once(kind: str, tmp_path: Path) -> None:
    url = f"journal:///{tmp_path / 's.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat=False), directions=DIRECTIONS)
    me = {"worker_host": HOST, "worker_pid": os.getpid(), "worker_started": _process_start(os.getpid())}
    cases = {
        "dead here": {"worker_host": HOST, "worker_pid": _dead_pid()},
        "zombie here": {"worker_host": HOST, "worker_pid": _dead_pid(reap=False)},
        "reused pid": {**me, "worker_started": -1},
        "alive here": me,
        "silent elsewhere": {"worker_host": "elsewhere", "worker_pid": 1, "heartbeat": time.time() - 1000},
        "beating elsewhere": {"worker_host": "elsewhere", "worker_pid": 1, "heartbeat": time.time()},
    }
    numbers = {}
    for name, attrs in cases.items():
        t = study.ask()
        t.suggest_float("x", 0, 1)
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        numbers[name] = t.number
    # The journal has no heartbeat but exitnas's; SQLite's trials of other hosts are Optuna's heartbeat's.
    stale = {"dead here", "zombie here", "reused pid"} | ({"silent elsewhere"} if kind == "journal" else set())
    assert fail_stale_trials(study) == len(stale)
    assert fail_stale_trials(study) == 0
    trials = study.get_trials()
    assert {n for n, i in numbers.items() if trials[i].state == TrialState.FAIL} == stale
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == sorted(numbers[n] for n in stale)
    for r in retries:
        failed = trials[r.user_attrs["retry_of"]]
        assert r.system_attrs["fixed_params"] == failed.params
        assert r.system_attrs["failed_trial"] == failed.number and r.system_attrs["retry_history"] == [failed.number]
    assert not retry_trial(study, trials[numbers["dead here"]])  # already failed: not queued twice


def test_a_journal_trial_beats_while_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exitnas._storage.HEARTBEAT_INTERVAL", 0.05)
    url = f"journal:///{tmp_path / 's.log'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), directions=DIRECTIONS)
    trial = study.ask()
    with _Heartbeat(trial):
        time.sleep(0.3)
        first = _load(url, "s").trials[0].user_attrs["heartbeat"]
        time.sleep(0.2)
    last = _load(url, "s").trials[0].user_attrs["heartbeat"]
    assert time.time() - 1 < first < last <= time.time()
    time.sleep(0.2)
    assert _load(url, "s").trials[0].user_attrs["heartbeat"] == last  # stopped with the trial


# -- journal lock -------------------------------------------------------------------------------------
def test_a_dead_processes_journal_lock_is_cleared_and_a_fresh_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    url = f"journal:///{path}"
    optuna.create_study(study_name="s", storage=open_storage(url))
    lock = Path(f"{path}.lock")
    os.symlink(path, lock)  # what a process SIGKILLed inside an append leaves
    assert not clear_stale_journal_lock(path)  # a fresh lock is a live process's
    old = time.time() - 60
    os.utime(lock, (old, old), follow_symlinks=False)
    t0 = time.monotonic()
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert time.monotonic() - t0 < 5  # Optuna alone waits 30 s for it
    assert not os.path.lexists(lock) and len(study.trials) == 1
    assert list(tmp_path.glob("*.stale")) == []


# -- processes -------------------------------------------------------------------------------------
def _fresh_databases(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "postgresql":
        return fresh_postgres_databases(request.getfixturevalue("postgres"), ROUNDS, f"t{uuid.uuid4().hex[:8]}")
    return f"sqlite:///{tmp_path}/r{{r}}.db" if kind == "sqlite" else f"journal:///{tmp_path}/r{{r}}.log"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_workers_started_at_one_instant_on_a_fresh_database_all_succeed(
        kind: str, request: pytest.FixtureRequest, make_cfg: Callable[..., Any], tmp_path: Path,
        env: dict[str, str]) -> None:
    template = _fresh_databases(kind, tmp_path, request)
    cfg = make_cfg(template.format(r=0), study="together", trials=WORKERS, sampler="random")
    config = tmp_path / "together.yaml"
    config.write_text(cfg.to_yaml())
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, str(HERE / "_start_together.py"), str(config), str(barrier),
                               str(WORKERS), str(ROUNDS), template], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(WORKERS)]
    outs = _communicate(procs, timeout=120 + 30 * ROUNDS)
    assert all(out.count("round ") == ROUNDS for out in outs)
    for r in range(ROUNDS):
        trials = _load(template.format(r=r), "together").get_trials()
        assert Counter(t.state for t in trials) == {TrialState.COMPLETE: WORKERS}, r
        assert len({t.user_attrs["worker"] for t in trials}) == WORKERS
        assert len({t.user_attrs["worker_seed"] for t in trials}) == WORKERS


@pytest.mark.slow
def test_plain_processes_draw_their_own_seeds_and_stop_at_exactly_n(
        tmp_path: Path, search_args: Callable[..., list[str]], env: dict[str, str]) -> None:
    n, procs_n = 30, 3
    url = f"journal:///{tmp_path / 'study.log'}"
    argv = search_args(url, "--trials", str(n), "--sampler", "random")
    procs = [subprocess.Popen([sys.executable, "-m", "exitnas", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(procs_n)]
    _communicate(procs, timeout=300)
    trials = _load(url).get_trials()
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == n
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}  # nothing RUNNING, WAITING or FAIL
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.PRUNED)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    by_pid: dict[int, set[tuple[int, int]]] = {}
    for t in done:
        by_pid.setdefault(t.user_attrs["worker_pid"], set()).add((t.user_attrs["worker"], t.user_attrs["worker_seed"]))
    # One identity per process, its first trial's number; one seed stream per identity.
    assert len(by_pid) == procs_n and all(len(ids) == 1 for ids in by_pid.values())
    ids = [next(iter(i)) for i in by_pid.values()]
    assert len({w for w, _ in ids}) == procs_n and all(s == worker_seed(0, w) for w, s in ids)
    # With one seed for all, the random sampler would give every process the same trials.
    assert len({tuple(sorted(t.params.items())) for t in done}) == n

    # A rerun resumes with an identity of its own: new candidates, not the first run's again.
    assert main(search_args(url, "--trials", str(n + 3), "--sampler", "random")) == 0
    new = [t for t in _load(url).get_trials() if t.number >= len(trials)]
    assert [t.state for t in new] == [TrialState.COMPLETE] * 3
    assert {t.user_attrs["worker"] for t in new} == {len(trials)}
    seen = {tuple(sorted(t.params.items())) for t in done}
    assert not seen & {tuple(sorted(t.params.items())) for t in new}
