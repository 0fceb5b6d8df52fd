"""One search worker process: ``exitnas.search.run_worker`` on a study that already exists.

Used by the PostgreSQL and kill tests (several of these share one storage)::

    python _pg_worker.py CONFIG.yaml CHECKPOINT WORKER|auto N_TRIALS|all
        [--heartbeat INTERVAL,GRACE] [--hang-after K --hang-file PATH]

``auto`` lets the worker take its identity from its first trial (as ``exitnas search`` does).
``--heartbeat`` shortens the storage's heartbeat (exitnas uses 5 s / 20 s) so a test need not
wait long for a killed worker's trial to go stale. ``--hang-after K`` makes the (K+1)-th trial
of this process store its parameters and attributes, write its number to PATH, and then
never return, so the test can SIGKILL the worker while that trial is RUNNING.
Prints the number of trials this worker completed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch


def _hang_after(k: int, path: Path) -> None:
    from exitnas.search import ArchObjective

    original = ArchObjective.__call__
    calls = [0]

    def call(self: ArchObjective, trial):  # type: ignore[no-untyped-def]
        result = original(self, trial)
        calls[0] += 1
        if calls[0] > k:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(str(trial.number))
            os.replace(tmp, path)  # the test sees the whole number or nothing
            while True:
                time.sleep(60)
        return result

    ArchObjective.__call__ = call  # type: ignore[method-assign]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("worker")
    p.add_argument("n_trials")
    p.add_argument("--heartbeat")
    p.add_argument("--hang-after", type=int)
    p.add_argument("--hang-file", type=Path)
    a = p.parse_args()
    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the CLI's entry point does

    import exitnas._storage as storage
    from exitnas._config import load_config
    from exitnas.search import run_worker

    if a.heartbeat:
        interval, grace = (int(x) for x in a.heartbeat.split(","))
        storage.HEARTBEAT_INTERVAL, storage.GRACE_PERIOD = interval, grace
    if a.hang_after is not None:
        _hang_after(a.hang_after, a.hang_file)
    cfg = load_config(a.config)
    n = None if a.n_trials == "all" else int(a.n_trials)
    worker = None if a.worker == "auto" else int(a.worker)
    print(run_worker(cfg, a.checkpoint, worker=worker, n_trials=n), flush=True)


if __name__ == "__main__":
    main()
