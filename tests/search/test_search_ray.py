"""``exitnas search --backend ray``: N Ray workers write every trial to the shared storage."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas._storage import open_storage

TRIALS = 8


@pytest.mark.slow
def test_two_ray_workers_fill_one_journal_study(tmp_path: Path, search_args: Callable[..., list[str]],
                                                env: dict[str, str]) -> None:
    url = f"journal:///{tmp_path / 'study.log'}"
    argv = search_args(url, "--backend", "ray", "--workers", "2", "--trials", str(TRIALS))
    # A subprocess: Ray's local cluster, its workers and their environment stay out of pytest.
    proc = subprocess.Popen([sys.executable, "-m", "exitnas", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "Pareto front" in out
    assert "a search worker failed" not in out

    study = optuna.load_study(study_name="test", storage=open_storage(url, heartbeat=False))
    trials = study.get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: TRIALS}
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    pids = Counter(t.user_attrs["worker_pid"] for t in trials)
    # Each of the two workers may run at most ceil(8 / 2) trials, so both ran some; neither
    # is the driver process.
    assert len(pids) == 2 and max(pids.values()) <= TRIALS // 2
    assert proc.pid not in pids
