"""Four worker processes sharing one study in PostgreSQL (DESIGN §5: the cluster storage)."""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas._storage import open_storage
from exitnas.experiment import Experiment
from exitnas.search import METRIC_NAMES, create_or_load_study

WORKERS, EACH = 4, 25


@pytest.mark.slow
def test_four_workers_complete_exactly_their_trials(trained: Any, make_cfg: Callable[..., Any], postgres: str,
                                                    worker_cmd: Callable[..., list[str]],
                                                    env: dict[str, str]) -> None:
    cfg = make_cfg(postgres, study="four-workers", trials=WORKERS * EACH)
    create_or_load_study(Experiment(cfg))  # once, before any worker (table creation races)
    procs = [subprocess.Popen(worker_cmd(cfg, w, EACH), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for w in range(WORKERS)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-3000:]
            outs.append(int(out.split()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert outs == [EACH] * WORKERS

    study = optuna.load_study(study_name="four-workers", storage=open_storage(postgres, heartbeat=False))
    trials = study.get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: WORKERS * EACH}
    assert sorted(t.number for t in trials) == list(range(WORKERS * EACH))
    assert len({t._trial_id for t in trials}) == WORKERS * EACH
    assert study.metric_names == METRIC_NAMES
    pids = Counter(t.user_attrs["worker_pid"] for t in trials)
    assert sorted(pids.values()) == [EACH] * WORKERS
    assert set(pids) == {p.pid for p in procs}
